"""``GraphStructure``: what every attention backend reads about a batch, and how to build one.

A structure is a pure function of a batch (its ``edge_index``, ``batch``/``ptr`` and options):
build it once — in the data pipeline (:mod:`pyg_mup.graph.collate`), or once per forward — and
share it by every attention layer. Two kinds, one interface:

* :class:`~pyg_mup.graph.local_structure.LocalStructure` (``mode='local'``): attend along edges;
* :class:`~pyg_mup.graph.global_structure.GlobalStructure` (``mode='global'``): attend to every
  node of the same graph.

Attention runs over *slots*: node ``n`` sits at slot ``layout.node_slot[n]`` when a layout
reorders or packs nodes, else at slot ``n``; every index a mod receives is a slot. Mods read
per-pair learned values through :attr:`pair_row`, a function ``(q, kv) -> row`` of the tables
:meth:`pair_values` makes; :meth:`bind` gives the copy of the structure whose ``pair_row``
fits a backend (a look-up for FlexAttention, the backend's own pair order for message passing).

Conventions follow PyG's ``source_to_target`` flow: an edge ``(j, i)`` in ``edge_index`` lets
the query node ``i`` attend to the key node ``j``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import noop_mask
from torch_geometric.utils import scatter

from .blocks import map_block_mask
from .checks import check_batch
from .layout import Layout
from .pairs import EdgePairs
from .signatures import IndexFn, MaskMod

MODES = ("local", "global")
BACKENDS = ("flex", "message_passing", "dense")


class GraphStructure:
    """Base of :class:`LocalStructure` and :class:`GlobalStructure`; build with :meth:`build`.

    Attributes every structure has (``E`` edges, ``P`` unique pairs, ``P_att`` attended pairs):

    * ``num_src``/``num_dst``: node counts; ``seq_src``/``seq_dst``: slot counts;
      ``layout``: :class:`~pyg_mup.graph.layout.Layout`; ``block_size``.
    * ``pairs``: :class:`~pyg_mup.graph.pairs.EdgePairs` of the edges (in slots).
    * ``attention_pairs``: ``[2, P_att]`` (src, dst) slots attended over, sorted by dst: the
      edge pairs (local) or every within-graph pair (global). The message-passing backend runs
      on these, calling the mods with ``message_passing_indices`` (``[P_att, 1]`` dst and src).
    * ``block_mask``: the FlexAttention ``BlockMask``, or ``None`` when built without ``flex``.
    * ``max_distance``: hop distances were tabulated up to it (``None``: no distances).
    * ``edge_index``/``edge_version``/``batch``: what it was built from (the stale check);
      ``batch`` is the graph of each node (global mode: from ``batch``, ``ptr``, or one graph).
    """

    mode: ClassVar[str]
    num_src: int
    num_dst: int
    block_size: int
    layout: Layout
    edge_index: Tensor
    edge_version: int
    batch: Tensor | None
    pairs: EdgePairs
    attention_pairs: Tensor
    message_passing_indices: tuple[Tensor, Tensor]
    block_mask: object | None
    max_distance: int | None
    pair_row: IndexFn

    @staticmethod
    def build(
        edge_index: Tensor,
        num_nodes: int | tuple[int, int],
        batch: Tensor | None = None,
        mode: str = "local",
        max_distance: int | None = None,
        edge_distance: Tensor | None = None,
        block_size: int | None = None,
        lookup: str = "auto",
        layout: str | None = "auto",
        *,
        ptr: Tensor | list[int] | None = None,
        hop_distance: Tensor | None = None,
        flex: bool | None = None,
        target: str | None = None,
    ) -> GraphStructure:
        """Build the structure of a batch in O(N + E) time and memory (plus Σ n_g² in global mode).

        Args:
            edge_index: ``[2, E]`` integer (src, dst) edges.
            num_nodes: ``N``, or ``(N_src, N_dst)`` for a bipartite graph (local mode only).
            batch: ``[N]`` sorted graph of each node (global mode; ``None``: one graph). Local
                attention follows the edges and needs neither ``batch`` nor ``ptr``.
            mode: ``'local'`` (attend along incoming edges) or ``'global'`` (every node of the
                same graph).
            max_distance: tabulate hop distances, capped at ``max_distance + 1`` (farther or
                unreachable). Global mode: shortest paths along edge directions within each
                graph; local mode: 0 for self-loops, 1 for other edges.
            edge_distance: ``[E]`` caller distances overriding those of the edge pairs (the
                minimum over parallel edges).
            block_size: FlexAttention / dense block size (default 128; on the CPU, for a
                packed layout, the smallest power of two ≥ 16 holding the largest graph, for
                the dense backend).
            lookup: local pair look-up, ``'tiles'``, ``'hash'`` or ``'auto'``
                (:mod:`pyg_mup.graph.lookup`).
            layout: ``'auto'`` (``'pack'`` in global mode; in local mode ``'pack'`` on the
                CPU when its blocks are dense enough for the dense backend, else none),
                ``None``, ``'rcm'`` (local: reverse Cuthill–McKee for large graphs in random
                order) or ``'pack'`` (no graph straddles a block); :mod:`pyg_mup.graph.layout`.
            ptr: ``[G + 1]`` node offsets of the graphs (PyG's ``Batch.ptr``), read on the host:
                in place of ``batch`` or beside it, it saves a device read of the graph sizes.
            hop_distance: ``[Σ n_g²]`` precomputed distances (the batch's
                ``hop_distance`` from :class:`~pyg_mup.graph.distance.AddHopDistance`).
            flex: build the FlexAttention block mask (and the local pair look-up). Default: when
                ``target`` is CUDA, for global structures and for local ones dense enough for
                FlexAttention (:data:`~pyg_mup.graph.blocks.FLEX_MIN_BLOCK_DENSITY`).
            target: device type the attention will run on (``'cpu'``/``'cuda'``; default:
                ``edge_index``'s), for a structure built on the CPU in a loader for a GPU model.
        """
        if target is None:
            target = edge_index.device.type if isinstance(edge_index, Tensor) else "cpu"
        if mode == "local":
            from .local_structure import LocalStructure

            if hop_distance is not None:
                raise ValueError("hop_distance is for mode='global' (local distances are 0/1)")
            return LocalStructure.build(
                edge_index,
                num_nodes,
                max_distance=max_distance,
                edge_distance=edge_distance,
                block_size=block_size,
                lookup=lookup,
                layout=layout,
                flex=flex,
                target=target,
            )
        if mode == "global":
            from .global_structure import GlobalStructure

            return GlobalStructure.build(
                edge_index,
                num_nodes,
                batch,
                ptr=ptr,
                max_distance=max_distance,
                edge_distance=edge_distance,
                hop_distance=hop_distance,
                block_size=block_size,
                layout="pack" if layout == "auto" else layout,
                flex=target == "cuda" if flex is None else flex,
            )
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    # ------------------------------------------------------------------------------ slots
    @property
    def seq_src(self) -> int:
        return self.layout.seq_len if self.num_src == self.num_dst else self.num_src

    @property
    def seq_dst(self) -> int:
        return self.layout.seq_len if self.num_src == self.num_dst else self.num_dst

    def to_slots(self, value: Tensor) -> Tensor:
        """Per-node rows ``[N, ...]`` in slot order ``[S, ...]`` (zeros at padding). Mods index
        tensors with slots: a custom mod reading per-node data captures ``to_slots(data)``."""
        return self.layout.to_slots(value)

    def from_slots(self, value: Tensor) -> Tensor:
        """Rows ``[S, ...]`` back in node order ``[N, ...]``."""
        return self.layout.from_slots(value)

    def attention_pairs_of_nodes(self) -> Tensor:
        """:attr:`attention_pairs` as node indices (slots mapped back through the layout)."""
        node_of_slot = self.layout.node_of_slot
        return self.attention_pairs if node_of_slot is None else node_of_slot[self.attention_pairs]

    # ------------------------------------------------------------------------------ pairs
    @property
    def num_pairs(self) -> int:
        return self.pairs.num_pairs

    @property
    def pair_index(self) -> Tensor:
        return self.pairs.pair_index

    @property
    def edge_pair(self) -> Tensor:
        return self.pairs.edge_pair

    @property
    def pair_multiplicity(self) -> Tensor:
        return self.pairs.multiplicity

    @property
    def has_parallel_edges(self) -> bool:
        return self.pairs.has_parallel_edges

    def edge_to_pair(self, edge_values: Tensor, reduce: str = "mean") -> Tensor:
        """Per-edge values ``[E, ...]`` → per-pair values ``[P, ...]`` (``'mean'``, ``'sum'``,
        ``'max'``, ``'min'`` or ``'logsumexp'`` over parallel edges), e.g. an edge-type embedding
        before :meth:`pair_values`; ``'logsumexp'`` of per-edge biases makes a softmax over pairs
        count each parallel edge, as PyG's softmax over edges does. Without parallel edges, the
        edges reordered by pair."""
        if not self.has_parallel_edges:
            return edge_values.new_empty(edge_values.shape).index_copy(
                0, self.edge_pair, edge_values
            )
        if reduce == "logsumexp":
            return _scatter_logsumexp(edge_values, self.edge_pair, self.num_pairs)
        return scatter(edge_values, self.edge_pair, 0, self.num_pairs, reduce=reduce)

    def edge_share(self, edge_values: Tensor | None = None) -> Tensor:
        """``[E, ...]`` share of each edge in its pair's attention weight: ``softmax`` of
        ``edge_values`` over the pair's parallel edges, or ``1 / multiplicity`` without them
        (``[E, 1]``)."""
        if edge_values is None:
            return (1.0 / self.pair_multiplicity[self.edge_pair]).unsqueeze(1)
        lse = _scatter_logsumexp(edge_values, self.edge_pair, self.num_pairs)
        return (edge_values - lse[self.edge_pair]).exp()

    # -------------------------------------------------------------------------- stale check
    def matches(self, edge_index: Tensor, num_src: int, num_dst: int) -> bool:
        """Whether this structure was built for these edges and node counts. The same tensor
        object edited in place since (its version counter moved) does not match."""
        if (num_src, num_dst) != (self.num_src, self.num_dst):
            return False
        if edge_index is self.edge_index:
            return edge_index._version == self.edge_version
        return edge_index.shape == self.edge_index.shape and bool(
            torch.equal(edge_index, self.edge_index)
        )

    def check_batch(self, batch: Tensor | None) -> None:
        """Raise unless ``batch`` is the one this structure was built for (global mode)."""
        if batch is None or self.mode == "local":
            return
        if batch is self.batch and batch._version == self.batch_version:
            return
        check_batch(batch, self.num_dst)
        if batch.shape != self.batch.shape or not torch.equal(batch.long(), self.batch):
            raise ValueError(
                f"batch differs from the {len(self.graph_sizes)} graph(s) the structure was built "
                "for (built without batch or ptr, it is one graph): build one GraphStructure per "
                "batch, with its batch"
            )

    # ------------------------------------------------------------------------ backends
    bound_backend: str | None = None
    """The backend a copy from :meth:`bind` is bound to (``None``: not bound, flex's rows)."""

    def bind(self, backend: str) -> GraphStructure:
        """A shallow copy whose :attr:`pair_row` answers the indices ``backend`` gives mods.

        Made once per backend and kept: every layer of a model binds the batch's structure, and
        a copy per layer would also make its rows (and head index) again."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        cache = self.__dict__.setdefault("_bound", {})
        if backend not in cache:
            bound = copy.copy(self)  # through __getstate__: without the copies bound to self
            bound.bound_backend = backend
            bound.pair_row = bound._pair_row_for(backend)
            cache[backend] = bound
        return cache[backend]

    def _pair_row_for(self, backend: str) -> IndexFn:
        raise NotImplementedError

    # Structures cross process boundaries (built in DataLoader workers): closures do not pickle,
    # so they are dropped here and made again from the tensors on arrival.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["pair_row"] = None
        state.pop("_bound", None)  # copies bound to this structure's tensors, not the copy's
        state.pop("bound_backend", None)  # its pair_row is made again as flex's
        if self.block_mask is not None:
            state["block_mask"] = map_block_mask(self.block_mask, _same, noop_mask)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.pair_row = self._pair_row_for("flex")
        if self.block_mask is not None:
            self.block_mask = map_block_mask(self.block_mask, _same, self.mask_mod())

    def mask_mod(self) -> MaskMod:
        """FlexAttention ``mask_mod`` of the pairs this structure allows."""
        raise NotImplementedError

    def pair_values(
        self,
        edge_values: Tensor | None = None,
        no_edge: Tensor | None = None,
        distance_values: Tensor | None = None,
    ) -> Tensor:
        """``[R, H]`` per-pair values read as ``table[pair_row(q, kv)]``: ``edge_values[p]``
        (``[P, H]``) for edge pair ``p``, else ``no_edge`` (``[H]``, global mode), plus
        ``distance_values[d]`` (``[max_distance + 2, H]``, rows ``0 … max_distance + 1``).
        Missing parts count as zero; differentiable in all three. Rows follow the backend this
        structure is bound to (:meth:`bind`): read the table with the same structure's
        :attr:`pair_row`."""
        raise NotImplementedError

    def distance(self, q: Tensor, kv: Tensor) -> Tensor:
        """Hop distance ``kv → q`` in ``0 … max_distance + 1`` (the last: farther, unreachable
        or, in local mode, not an edge), at any indices the bound backend gives mods."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ devices
    def apply(self, fn: Callable[[Tensor], Tensor]) -> GraphStructure:
        """A copy with ``fn`` applied to every tensor (a device move, pinning)."""
        moved = copy.copy(self)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Tensor):
                setattr(moved, field.name, fn(value))
            elif isinstance(value, tuple) and value and isinstance(value[0], Tensor):
                setattr(moved, field.name, tuple(fn(t) for t in value))
            elif hasattr(value, "apply") and field.name != "block_mask":
                setattr(moved, field.name, value.apply(fn))
        moved.edge_version = moved.edge_index._version
        if moved.batch is not None:
            moved.batch_version = moved.batch._version
        moved.pair_row = moved._pair_row_for("flex")
        if self.block_mask is not None:
            moved.block_mask = map_block_mask(self.block_mask, fn, moved.mask_mod())
        return moved

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GraphStructure:
        """A copy on ``device``; with ``non_blocking`` from pinned memory, no host wait."""
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> GraphStructure:
        """A copy in pinned host memory (what makes ``to(cuda, non_blocking=True)`` async)."""
        return self.apply(lambda t: t.pin_memory())


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _scatter_logsumexp(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Numerically stable per-group log-sum-exp of ``src`` ``[E, H]`` into ``[dim_size, H]``."""
    peak = scatter(src.detach(), index, 0, dim_size, reduce="max")
    total = scatter((src - peak[index]).exp(), index, 0, dim_size, reduce="sum")
    return total.log() + peak
