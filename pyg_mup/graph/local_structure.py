"""``LocalStructure``: attention along the edges of one node set, or of a bipartite graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .blocks import (
    DENSE_MIN_BLOCK_DENSITY,
    FLEX_MIN_BLOCK_DENSITY,
    BlockList,
    block_mask,
    local_blocks,
    num_blocks,
)
from .checks import (
    check_edge_distance,
    check_edge_index,
    check_positive_int,
    split_num_nodes,
)
from .layout import (
    LAYOUTS,
    MAX_DENSE_BLOCK,
    MIN_DENSE_BLOCK,
    Layout,
    edge_segments,
    identity_layout,
    pack_layout,
    packed_block_size,
    rcm_layout,
)
from .lookup import (
    BlockDiagonalLookup,
    HashLookup,
    TileLookup,
    build_pair_lookup,
    lookup_kind,
)
from .pairs import EdgePairs, unique_pairs
from .signatures import IndexFn, MaskMod
from .structure import GraphStructure
from .tables import SINK_ROWS, OwnPairRows, capped_rows, sink_padded


@dataclass(eq=False)
class LocalStructure(GraphStructure):
    """Pairs, blocks and look-up of local attention; build with :meth:`build`.

    Beyond :class:`GraphStructure`'s attributes:

    * ``blocks``: the non-empty (query block, key block) pairs; ``block_density``: the share of
      their ``B²`` entries that are pairs (a molecule batch: ~1/150), which decides between
      FlexAttention's tiles and a gather per edge.
    * ``lookup``: tiles or hash answering ``(q, kv) -> pair id + 1`` inside FlexAttention mods
      (:mod:`pyg_mup.graph.lookup`), built with the block mask, else ``None``; ``lookup_kind``.
    * ``dense_lookup``: with a packed layout whose pairs all lie in diagonal blocks, the
      :class:`~pyg_mup.graph.lookup.BlockDiagonalLookup` the dense backend's mods read (the
      per-block adjacency), else ``None``; :attr:`fits_dense_blocks` says which.
    * ``pair_distance``: ``[P]`` distance of each edge pair (with ``max_distance``).
    * ``own_rows``: ``[P, 1]`` rows of the pairs in order, what ``pair_row`` answers the
      message-passing backend's own indices: ``0 … P - 1`` of its unpadded tables without a
      look-up, else ``1 … P`` (see :meth:`pair_values`).
    """

    mode = "local"
    num_src: int
    num_dst: int
    block_size: int
    layout: Layout
    edge_index: Tensor
    edge_version: int
    pairs: EdgePairs
    attention_pairs: Tensor
    message_passing_indices: tuple[Tensor, Tensor]
    blocks: BlockList
    block_density: float
    lookup_kind: str
    lookup: TileLookup | HashLookup | None = None
    dense_lookup: BlockDiagonalLookup | None = None
    block_mask: BlockMask | None = None
    max_distance: int | None = None
    pair_distance: Tensor | None = None
    own_rows: Tensor | None = None
    batch: Tensor | None = None
    pair_row: IndexFn | None = None

    @classmethod
    def build(
        cls,
        edge_index: Tensor,
        num_nodes: int | tuple[int, int],
        max_distance: int | None = None,
        edge_distance: Tensor | None = None,
        block_size: int | None = None,
        lookup: str = "auto",
        layout: str | None = "auto",
        flex: bool | None = None,
        target: str = "cpu",
    ) -> LocalStructure:
        """See :meth:`GraphStructure.build` (``mode='local'``).

        ``layout='auto'`` packs :func:`~pyg_mup.graph.layout.edge_segments` into blocks of
        ``packed_block_size`` slots when the structure is for the CPU without FlexAttention and
        the packed blocks are dense enough for the dense backend
        (:data:`~pyg_mup.graph.blocks.DENSE_MIN_BLOCK_DENSITY`); else no layout. ``block_size``
        ``None``: that packed size, or 128 (FlexAttention's tiles).
        """
        check_positive_int(block_size, "block_size", allow_none=True)
        check_positive_int(max_distance, "max_distance", allow_none=True)
        num_src, num_dst = split_num_nodes(num_nodes)
        check_edge_index(edge_index, num_src, num_dst)
        if edge_distance is not None:
            if max_distance is None:
                raise ValueError("edge_distance needs max_distance (the distance embedding size)")
            check_edge_distance(edge_distance, edge_index.size(1))
        if layout not in LAYOUTS:
            raise ValueError(
                f"layout must be None or 'rcm' in mode='local', or 'pack'/'auto' (edge-connected "
                f"node ranges packed into blocks for the dense backend), got {layout!r}"
            )
        bipartite = isinstance(num_nodes, tuple)
        if layout in ("rcm", "pack") and bipartite:
            raise ValueError(f"layout={layout!r} reorders one node set; num_nodes is bipartite")
        lookup_kind(lookup, 0, 0, block_size or 128)  # validates the name

        src, dst = edge_index[0].long(), edge_index[1].long()
        nodes = identity_layout(num_dst)
        if layout == "rcm":
            nodes = rcm_layout(edge_index, num_dst)
            src, dst = nodes.node_slot[src], nodes.node_slot[dst]
        pairs = unique_pairs(src, dst, num_src)
        seq_src = num_src if bipartite else nodes.seq_len
        packed = None
        if layout == "pack" or (
            layout == "auto" and target == "cpu" and not flex and not bipartite
        ):
            packed = _packed(pairs, num_dst, block_size, forced=layout == "pack")
        if packed is not None:
            nodes, block_size, pairs = packed
            seq_src = nodes.seq_len
        block_size = block_size or 128
        blocks, block_key, tile_of_pair = local_blocks(
            pairs.pair_index, nodes.seq_len, seq_src, block_size
        )
        num_tiles = blocks.q.numel()
        density = pairs.num_pairs / max(num_tiles * block_size**2, 1)
        kind = lookup_kind(lookup, pairs.num_pairs, num_tiles, block_size)
        if flex is None:
            flex = target == "cuda" and density >= min(FLEX_MIN_BLOCK_DENSITY.values())
        flex = bool(flex)

        pair_src, pair_dst = pairs.pair_index
        structure = cls(
            num_src=num_src,
            num_dst=num_dst,
            block_size=block_size,
            layout=nodes,
            edge_index=edge_index,
            edge_version=edge_index._version,
            pairs=pairs,
            attention_pairs=pairs.pair_index,
            message_passing_indices=(pair_dst.unsqueeze(1), pair_src.unsqueeze(1)),
            # the message-passing backend's pair rows: made once, not per layer and step
            own_rows=torch.arange(
                int(flex), pairs.num_pairs + int(flex), device=pair_src.device
            ).unsqueeze(1),
            blocks=blocks,
            block_density=density,
            lookup_kind=kind,
            max_distance=max_distance,
        )
        if max_distance is not None:
            structure.pair_distance = _edge_pair_distance(pairs, edge_distance, max_distance)
        if packed is not None and bool((blocks.q == blocks.kv).all()):
            padded = num_blocks(nodes.seq_len, block_size) * block_size
            structure.dense_lookup = BlockDiagonalLookup(pairs.pair_index, padded, block_size)
        if flex:
            structure.lookup = build_pair_lookup(
                pairs.pair_index,
                seq_src,  # the pair keys' multiplier: larger than every source slot
                block_key,
                tile_of_pair,
                num_tiles,
                num_blocks(nodes.seq_len, block_size),
                num_blocks(seq_src, block_size),
                block_size,
                kind,
            )
        structure.pair_row = structure._pair_row_for("flex")
        if flex:
            structure.block_mask = block_mask(
                blocks, structure.seq_dst, structure.seq_src, block_size, structure.mask_mod()
            )
        return structure

    @property
    def fits_dense_blocks(self) -> bool:
        """Whether every pair lies inside one block of a packed layout: then attention is
        block-diagonal, as the dense backend needs."""
        return self.dense_lookup is not None

    # ---------------------------------------------------------------------------- mods
    def _pair_row_for(self, backend: str) -> IndexFn:
        """Message passing calls mods with its own pairs, in order: ``own_rows``, with no
        look-up (:class:`~pyg_mup.graph.tables.OwnPairRows`). The dense backend's grids read the
        block-diagonal look-up, where an entry that is no pair reads the zero row 0 (the dense
        backend masks it; its gradient there is zero). Other indices go through the
        FlexAttention look-up: row ``p + 1`` is pair ``p``, and entries that are no pair read one
        of ``SINK_ROWS`` zero rows, spread by position (see :mod:`pyg_mup.graph.tables`)."""
        if backend == "dense" and self.dense_lookup is not None:
            return self.dense_lookup.fn()
        lookup, sink = self.lookup, self.num_pairs + 1

        def pair_row(q: Tensor, kv: Tensor) -> Tensor:
            if lookup is None:
                raise ValueError(
                    "this local structure was built without its pair look-up (flex=False): "
                    "build it with GraphStructure.build(..., flex=True) to look up pairs at "
                    "other indices than the message-passing backend's own"
                )
            pair = lookup.fn()(q, kv)
            return torch.where(pair > 0, pair, sink + (q * 131 + kv) % SINK_ROWS)

        if backend != "message_passing":
            return pair_row
        own_q, own_kv = self.message_passing_indices
        return OwnPairRows(own_q, own_kv, self.own_rows, int(self.lookup is not None), pair_row)

    @property
    def _sink_padded(self) -> bool:
        """Whether tables carry the zero row 0 and the sink rows: not for message passing
        without a look-up, whose mods read only its own pairs (rows ``0 … P - 1``)."""
        return not (self.bound_backend == "message_passing" and self.lookup is None)

    def mask_mod(self) -> MaskMod:
        """An edge ``kv → q``: a look-up hit (the block-diagonal look-up of a structure built
        without FlexAttention's, for the dense backend)."""
        lookup = self.lookup if self.lookup is not None else self.dense_lookup
        if lookup is None:
            raise ValueError(
                "this local structure was built without a block mask (flex=False): build it "
                "with GraphStructure.build(..., flex=True) for FlexAttention"
            )
        find = lookup.fn()

        def edge_mask(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return find(q, kv) > 0

        return edge_mask

    def pair_values(
        self,
        edge_values: Tensor | None = None,
        no_edge: Tensor | None = None,
        distance_values: Tensor | None = None,
    ) -> Tensor:
        if no_edge is not None:
            raise ValueError("no_edge values need mode='global' (local attention has no non-edges)")
        parts = [t for t in (edge_values, distance_values) if t is not None]
        if not parts:
            raise ValueError("pair_values needs edge_values or distance_values")
        # the one part given is the table itself: no zeros to add it to (nor their backward)
        values = edge_values
        if distance_values is not None:
            distances = capped_rows(distance_values, self._distances())
            values = distances if values is None else values + distances
        values = values.expand(self.num_pairs, -1)
        return sink_padded(values) if self._sink_padded else values

    def distance(self, q: Tensor, kv: Tensor) -> Tensor:
        table = self._distances()
        if self._sink_padded:
            far = table.new_full((1 + SINK_ROWS,), self.max_distance + 1)
            table = torch.cat([far[:1], table, far[1:]])
        return table[self.pair_row(q, kv)]

    def _distances(self) -> Tensor:
        if self.pair_distance is None:
            raise ValueError("this structure was built without max_distance")
        return self.pair_distance


def _packed(
    pairs: EdgePairs, num_nodes: int, block_size: int | None, forced: bool
) -> tuple[Layout, int, EdgePairs] | None:
    """The pack layout of the edge segments, its block size and the pairs in its slots; unless
    ``forced``, ``None`` when a segment would span blocks or the blocks would be sparser than
    :data:`~pyg_mup.graph.blocks.DENSE_MIN_BLOCK_DENSITY` (then message passing runs, and
    slots would only cost copies)."""
    if not forced and pairs.num_pairs > 0:
        # A used block holds at most B of the pairs' distinct targets, so no packing is denser
        # than P / (targets · B): with the smallest block allowed, this settles sparse graphs
        # (molecules) before the segments and the layout are computed.
        dst = pairs.pair_index[1]  # sorted: pairs are ordered by (dst, src)
        targets = int((dst[1:] != dst[:-1]).sum()) + 1
        if pairs.num_pairs < DENSE_MIN_BLOCK_DENSITY * targets * (block_size or MIN_DENSE_BLOCK):
            return None
    segments = edge_segments(pairs.pair_index, num_nodes)
    largest = max(segments, default=0)
    size = block_size or packed_block_size(largest)
    if not forced and (largest > min(size, MAX_DENSE_BLOCK) or pairs.num_pairs == 0):
        return None
    nodes = pack_layout(segments, size, pairs.pair_index.device)
    # the layout keeps node order, so the pairs stay sorted by (dst, src)
    slots = nodes.node_slot[pairs.pair_index]
    if not forced:
        used_blocks = torch.unique(slots[1] // size).numel()
        if pairs.num_pairs / (used_blocks * size**2) < DENSE_MIN_BLOCK_DENSITY:
            return None
    moved = EdgePairs(slots, pairs.edge_pair, pairs.multiplicity, pairs.has_parallel_edges)
    return nodes, size, moved


def _edge_pair_distance(
    pairs: EdgePairs, edge_distance: Tensor | None, max_distance: int
) -> Tensor:
    """``[P]`` distance of each edge pair: caller's (min over parallel edges) or 0/1."""
    src, dst = pairs.pair_index
    if edge_distance is None:
        return (src != dst).long()
    pair_dist = torch.full((src.numel(),), max_distance + 1, dtype=torch.long, device=src.device)
    pair_dist.scatter_reduce_(0, pairs.edge_pair, edge_distance.long(), reduce="amin")
    return pair_dist.clamp(max=max_distance)
