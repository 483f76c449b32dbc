"""Graph structure → FlexAttention ``BlockMask`` and O(N + E) pair look-ups.

A :class:`GraphStructure` is built once per batch from PyG's ``edge_index`` (and ``batch``) and is
shared by every attention layer of a model. It never holds an N×N tensor:

* the ``BlockMask`` is assembled directly from block lists (``BlockMask.from_kv_blocks``) instead of
  ``create_block_mask``, which evaluates all N² pairs;
* "is j→i an edge, and which unique pair is it" is answered inside mask/score mods by a few
  gathers into O(E)-sized tables (:mod:`pyg_mup.pair_lookup`);
* graph distances (global mode) live in one flat tensor of Σ n_g² entries with per-node row
  offsets, never N².

Conventions follow PyG's ``source_to_target`` flow: an edge ``(j, i)`` in ``edge_index`` lets the
query node ``i`` attend to the key node ``j``. Parallel edges collapse into one unique *pair* with a
multiplicity, so a mod sees each (i, j) once and the layer adds ``log(multiplicity)`` (or the
log-sum-exp of per-edge biases) to reproduce a softmax over the edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from pyg_mup.checks import check_batch, check_edge_index
from pyg_mup.pair_lookup import HashLookup, TileLookup, build_pair_lookup

MODES = ("local", "global")


@dataclass(eq=False)
class GraphStructure:
    """Block mask and look-up tables of one batch of graphs.

    Build it with :meth:`build`; the fields are read by the attention modules.

    Shapes (``E`` edges, ``P`` unique (dst, src) pairs, ``B`` block size, ``QB``/``KB`` query/key
    block counts, ``T`` tiles):

    * ``edge_index``: ``[2, E]`` the edges it was built from (used to detect a stale structure).
    * ``pair_index``: ``[2, P]`` unique (src, dst) pairs sorted by (dst, src).
    * ``edge_pair``: ``[E]`` the pair of each edge; ``pair_multiplicity``: ``[P]``.
    * ``lookup``: tiles or hash answering ``(q, kv) -> pair id + 1`` (:mod:`pyg_mup.pair_lookup`).
    * ``node_graph``: ``[QB * B]`` graph of each node, -1 for padding (global mode and ``batch``).
    * ``distance_table`` / ``distance_row``: flat Σ n_g² hop distances and per-query row offsets
      (global mode with ``max_distance``); ``pair_distance``: ``[P + 1]`` (local mode).
    """

    mode: str
    num_src: int
    num_dst: int
    block_size: int
    edge_index: Tensor
    pair_index: Tensor
    edge_pair: Tensor
    pair_multiplicity: Tensor
    lookup: TileLookup | HashLookup
    node_graph: Tensor | None = None
    graph_ptr: Tensor | None = None
    max_distance: int | None = None
    distance_table: Tensor | None = None
    distance_row: Tensor | None = None
    pair_distance: Tensor | None = None
    _graph_of_node: Tensor | None = field(default=None, repr=False)
    _pair_blocks: tuple[Tensor, Tensor, Tensor] | None = field(default=None, repr=False)
    _block_mask: BlockMask | None = field(default=None, repr=False)
    _attention_pairs: Tensor | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        edge_index: Tensor,
        num_nodes: int | tuple[int, int],
        batch: Tensor | None = None,
        mode: str = "local",
        max_distance: int | None = None,
        edge_distance: Tensor | None = None,
        block_size: int = 128,
        lookup: str = "auto",
    ) -> GraphStructure:
        """Build the structure of a batch in O(N + E) time and memory (plus Σ n_g² distances).

        Args:
            edge_index: ``[2, E]`` long tensor of (src, dst) edges.
            num_nodes: ``N``, or ``(N_src, N_dst)`` for a bipartite graph (local mode only).
            batch: ``[N]`` sorted graph index of each node. In global mode, ``None`` treats the
                input as one graph; local mode does not need it.
            mode: ``'local'`` (attend along incoming edges) or ``'global'`` (attend to every node of
                the same graph).
            max_distance: if set, hop distances are tabulated and capped at it (unreachable pairs
                get ``max_distance + 1``). Global mode runs a BFS within each graph; local mode
                gives 0 for self-loops and 1 for other edges.
            edge_distance: ``[E]`` non-negative caller distances that override those of the edge
                pairs (the minimum over parallel edges), capped at ``max_distance``.
            block_size: FlexAttention block size ``B``.
            lookup: ``'tiles'``, ``'hash'`` or ``'auto'`` (tiles unless they would cost more than
                ``TILE_BUDGET_PER_PAIR`` entries per edge pair); see :mod:`pyg_mup.pair_lookup`.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        num_src, num_dst = _split_num_nodes(num_nodes)
        if mode == "global" and num_src != num_dst:
            raise ValueError("mode='global' needs one node set; got a bipartite num_nodes")
        check_edge_index(edge_index, num_src, num_dst)
        device = edge_index.device
        if batch is not None:
            check_batch(batch, num_dst)
        if max_distance is not None and (not isinstance(max_distance, int) or max_distance < 1):
            raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
        if edge_distance is not None:
            if max_distance is None:
                raise ValueError("edge_distance needs max_distance (the distance embedding size)")
            _check_edge_distance(edge_distance, edge_index.size(1))

        src, dst = edge_index[0].long(), edge_index[1].long()
        key = dst * num_src + src
        unique_key, edge_pair, multiplicity = torch.unique(
            key, sorted=True, return_inverse=True, return_counts=True
        )
        pair_index = torch.stack([unique_key % num_src, unique_key // num_src])
        q_blocks, kv_blocks = _num_blocks(num_dst, block_size), _num_blocks(num_src, block_size)
        block_key = (pair_index[1] // block_size) * kv_blocks + pair_index[0] // block_size
        unique_block, tile_of_pair, block_count = torch.unique(
            block_key, sorted=True, return_inverse=True, return_counts=True
        )
        pair_lookup = build_pair_lookup(
            pair_index,
            num_src,
            unique_block,
            tile_of_pair + 1,
            unique_block.numel(),
            q_blocks,
            kv_blocks,
            block_size,
            lookup,
        )
        pair_blocks = (unique_block // kv_blocks, unique_block % kv_blocks, block_count)

        structure = cls(
            mode=mode,
            num_src=num_src,
            num_dst=num_dst,
            block_size=block_size,
            edge_index=edge_index,
            pair_index=pair_index,
            edge_pair=edge_pair,
            pair_multiplicity=multiplicity,
            lookup=pair_lookup,
            max_distance=max_distance,
            _pair_blocks=pair_blocks,
        )
        if mode == "global":
            structure._set_graphs(batch)
        if max_distance is not None:
            pair_dist = _edge_pair_distance(
                pair_index, edge_pair, edge_distance, max_distance, device
            )
            if mode == "global":
                structure._set_distance_table(pair_dist)
            else:
                structure.pair_distance = torch.cat([pair_dist.new_zeros(1), pair_dist])
        return structure

    # ---------------------------------------------------------------- look-ups used inside mods
    def pair_lookup(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Return ``(q, kv) -> pair id + 1`` (0 where ``kv → q`` is not an edge).

        A few gathers; works on FlexAttention's scalar indices and on broadcast index tensors.
        """
        return self.lookup.fn()

    def distance_lookup(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Return ``(q, kv) -> hop distance`` in ``[0, max_distance + 1]``."""
        if self.max_distance is None:
            raise ValueError("this structure was built without max_distance")
        if self.mode == "local":
            pair_lookup, pair_distance = self.pair_lookup(), self.pair_distance

            def local_distance(q: Tensor, kv: Tensor) -> Tensor:
                return pair_distance[pair_lookup(q, kv)]

            return local_distance
        table, row = self.distance_table, self.distance_row
        last = table.numel() - 1

        def global_distance(q: Tensor, kv: Tensor) -> Tensor:
            return table[(row[q] + kv).clamp(0, last)]

        return global_distance

    def mask_mod(self) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """FlexAttention ``mask_mod``: an edge ``kv → q`` (local) or the same graph (global)."""
        if self.mode == "local":
            pair_lookup = self.pair_lookup()

            def edge_mask(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
                return pair_lookup(q, kv) > 0

            return edge_mask
        node_graph = self.node_graph

        def same_graph(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            graph = node_graph[q]
            return (graph == node_graph[kv]) & (graph >= 0)

        return same_graph

    # ---------------------------------------------------------------------- derived, lazily
    @property
    def num_pairs(self) -> int:
        return self.pair_index.size(1)

    @property
    def has_parallel_edges(self) -> bool:
        return self.edge_pair.numel() > self.num_pairs

    @property
    def block_mask(self) -> BlockMask:
        """The FlexAttention ``BlockMask`` (built on first use, from block lists only)."""
        if self._block_mask is None:
            self._block_mask = self._build_block_mask()
        return self._block_mask

    @property
    def attention_pairs(self) -> Tensor:
        """``[2, P_att]`` (src, dst) pairs attended over, sorted by dst: the unique edge pairs in
        local mode, every within-graph pair (Σ n_g²) in global mode. The message-passing backend
        runs on these."""
        if self._attention_pairs is None:
            if self.mode == "local":
                self._attention_pairs = self.pair_index
            else:
                self._attention_pairs = _within_graph_pairs(self.graph_ptr)
        return self._attention_pairs

    def matches(self, edge_index: Tensor, num_src: int, num_dst: int) -> bool:
        """Whether this structure was built for these edges and node counts (stale check)."""
        if (num_src, num_dst) != (self.num_src, self.num_dst):
            return False
        if edge_index is self.edge_index:
            return True
        return edge_index.shape == self.edge_index.shape and bool(
            torch.equal(edge_index, self.edge_index)
        )

    # ----------------------------------------------------------------------------- builders
    def _set_graphs(self, batch: Tensor | None) -> None:
        size, n = self.block_size, self.num_dst
        device = self.edge_index.device
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=device)
        batch = batch.long()
        num_graphs = int(batch[-1]) + 1 if n > 0 else 0
        counts = torch.bincount(batch, minlength=num_graphs)
        self.graph_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        padded = _num_blocks(n, size) * size
        self.node_graph = torch.full((padded,), -1, dtype=torch.long, device=device)
        self.node_graph[:n] = batch
        self._graph_of_node = batch

    def _set_distance_table(self, pair_dist: Tensor) -> None:
        """Tabulate hop distances j → i inside each graph by a batched BFS along edge directions.

        ``distance_table[distance_row[i] + j]`` is the distance from ``j`` to ``i``; rows are
        queries. Work and memory are Σ n_g² (plus the BFS frontier), never N².
        """
        ptr, batch, n = self.graph_ptr, self._graph_of_node, self.num_dst
        unreachable = self.max_distance + 1
        sizes = ptr[1:] - ptr[:-1]
        offsets = torch.cat([sizes.new_zeros(1), (sizes * sizes).cumsum(0)])
        nodes = torch.arange(n, device=ptr.device)
        row = offsets[batch] + (nodes - ptr[batch]) * sizes[batch] - ptr[batch]
        table = torch.full((int(offsets[-1]),), unreachable, dtype=torch.long, device=ptr.device)

        src, dst = self.pair_index
        order = torch.argsort(src, stable=True)
        out_dst = dst[order]
        out_ptr = torch.cat([src.new_zeros(1), torch.bincount(src, minlength=n).cumsum(0)])
        out_deg = out_ptr[1:] - out_ptr[:-1]

        origin, reached = nodes, nodes
        table[row[reached] + origin] = 0
        for hops in range(1, self.max_distance + 1):
            degree = out_deg[reached]
            total = int(degree.sum())
            if total == 0:
                break
            starts = torch.repeat_interleave(out_ptr[reached], degree)
            within = torch.arange(total, device=ptr.device) - torch.repeat_interleave(
                degree.cumsum(0) - degree, degree
            )
            origin = torch.repeat_interleave(origin, degree)
            reached = out_dst[starts + within]
            index = row[reached] + origin
            fresh = table[index] > hops
            index, origin, reached = index[fresh], origin[fresh], reached[fresh]
            index, first = _first_occurrence(index)
            origin, reached = origin[first], reached[first]
            table[index] = hops
        edge_index = row[dst] + src
        table[edge_index] = torch.minimum(table[edge_index], pair_dist)
        padded = self.node_graph.numel()
        self.distance_row = torch.zeros(padded, dtype=torch.long, device=ptr.device)
        self.distance_row[:n] = row
        self.distance_table = table if table.numel() > 0 else table.new_zeros(1)

    def block_mask_with(
        self, mask_mod: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    ) -> BlockMask:
        """A ``BlockMask`` over the same blocks with another ``mask_mod`` (e.g. the structure's
        mask ANDed with a layer's own); full blocks become partial, since the new mask may drop
        entries inside them."""
        return self._build_block_mask(mask_mod, keep_full_blocks=False)

    def _build_block_mask(
        self,
        mask_mod: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None,
        keep_full_blocks: bool = True,
    ) -> BlockMask:
        size = self.block_size
        q_blocks = _num_blocks(self.num_dst, size)
        kv_blocks = _num_blocks(self.num_src, size)
        device = self.edge_index.device
        if self.mode == "local":
            block_q, block_kv, block_count = self._pair_blocks
            full = (
                (block_count == size * size)
                & _block_is_whole(block_q, self.num_dst, size)
                & _block_is_whole(block_kv, self.num_src, size)
            )
        else:
            block_q, block_kv, full = _global_blocks(self._graph_of_node, self.graph_ptr, size)
        if not keep_full_blocks:
            full = torch.zeros_like(full)
        kv_num, kv_idx = _block_lists(block_q[~full], block_kv[~full], q_blocks, kv_blocks, device)
        full_num, full_idx = _block_lists(
            block_q[full], block_kv[full], q_blocks, kv_blocks, device
        )
        return BlockMask.from_kv_blocks(
            kv_num,
            kv_idx,
            full_num,
            full_idx,
            BLOCK_SIZE=size,
            mask_mod=mask_mod if mask_mod is not None else self.mask_mod(),
            seq_lengths=(self.num_dst, self.num_src),
        )


# ------------------------------------------------------------------------------- helpers
def _split_num_nodes(num_nodes: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(num_nodes, tuple):
        if len(num_nodes) != 2:
            raise ValueError(f"num_nodes must be an int or (N_src, N_dst), got {num_nodes!r}")
        num_src, num_dst = num_nodes
    else:
        num_src = num_dst = num_nodes
    for value in (num_src, num_dst):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"num_nodes must hold non-negative ints, got {num_nodes!r}")
    return num_src, num_dst


def _check_edge_distance(edge_distance: Tensor, num_edges: int) -> None:
    if not isinstance(edge_distance, Tensor) or edge_distance.dtype.is_floating_point:
        raise TypeError("edge_distance must be an integer tensor of shape [num_edges]")
    if edge_distance.shape != (num_edges,):
        raise ValueError(
            f"edge_distance must have shape [num_edges]=[{num_edges}], "
            f"got {list(edge_distance.shape)}"
        )
    if num_edges and int(edge_distance.min()) < 0:
        raise ValueError("edge_distance must be non-negative")


def _num_blocks(length: int, size: int) -> int:
    return max(1, -(-length // size))


def _edge_pair_distance(
    pair_index: Tensor,
    edge_pair: Tensor,
    edge_distance: Tensor | None,
    max_distance: int,
    device: torch.device,
) -> Tensor:
    """``[P]`` distance of each edge pair: caller's (min over parallel edges) or 0/1."""
    src, dst = pair_index
    if edge_distance is None:
        return (src != dst).long()
    pair_dist = torch.full((src.numel(),), max_distance + 1, dtype=torch.long, device=device)
    pair_dist.scatter_reduce_(0, edge_pair, edge_distance.long(), reduce="amin")
    return pair_dist.clamp(max=max_distance)


def _first_occurrence(index: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of ``index`` and the position of one occurrence of each."""
    unique, inverse = torch.unique(index, return_inverse=True)
    first = torch.full((unique.numel(),), index.numel(), dtype=torch.long, device=index.device)
    positions = torch.arange(index.numel(), device=index.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


def _block_is_whole(block: Tensor, length: int, size: int) -> Tensor:
    return (block + 1) * size <= length


def _global_blocks(batch: Tensor, ptr: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(q_block, kv_block, is_full)`` of every block within-graph attention touches.

    Graphs are contiguous node ranges, so a query block's allowed keys form one contiguous range
    from the first node of its first graph to the last node of its last graph. A block is full
    when both of its node ranges are whole blocks inside one and the same graph.
    """
    n = batch.numel()
    device = batch.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty.bool()
    num_blocks = _num_blocks(n, size)
    block = torch.arange(num_blocks, device=device)
    starts = block * size
    first_graph = batch[starts]
    last_graph = batch[torch.clamp(starts + size, max=n) - 1]
    kv_lo = ptr[first_graph] // size
    kv_hi = (ptr[last_graph + 1] - 1) // size
    allowed = (block[None, :] >= kv_lo[:, None]) & (block[None, :] <= kv_hi[:, None])
    single = torch.where(
        (first_graph == last_graph) & _block_is_whole(block, n, size), first_graph, -1
    )
    block_q, block_kv = allowed.nonzero().t()
    full = (single[block_q] == single[block_kv]) & (single[block_q] >= 0)
    return block_q, block_kv, full


def _block_lists(
    block_q: Tensor, block_kv: Tensor, q_blocks: int, kv_blocks: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(kv_num_blocks [1, 1, QB], kv_indices [1, 1, QB, KB])`` from sorted block pairs."""
    count = torch.bincount(block_q, minlength=q_blocks)
    start = count.cumsum(0) - count
    rank = torch.arange(block_q.numel(), device=device) - start[block_q]
    indices = torch.zeros(q_blocks, kv_blocks, dtype=torch.int32, device=device)
    indices[block_q, rank] = block_kv.to(torch.int32)
    return count.to(torch.int32)[None, None], indices[None, None]


def _within_graph_pairs(ptr: Tensor) -> Tensor:
    """``[2, Σ n_g²]`` every (src, dst) pair inside each graph, sorted by dst then src."""
    sizes = ptr[1:] - ptr[:-1]
    device = ptr.device
    rows = torch.repeat_interleave(sizes, sizes)  # for each dst node: its graph's size
    dst = torch.repeat_interleave(torch.arange(int(ptr[-1]), device=device), rows)
    graph_start = torch.repeat_interleave(ptr[:-1], sizes * sizes)
    dst_start = torch.repeat_interleave(rows.cumsum(0) - rows, rows)
    src = graph_start + torch.arange(dst.numel(), device=device) - dst_start
    return torch.stack([src, dst])
