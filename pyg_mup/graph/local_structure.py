"""``LocalStructure``: attention along the edges of one node set, or of a bipartite graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .blocks import FLEX_MIN_BLOCK_DENSITY, BlockList, block_mask, local_blocks
from .checks import (
    check_edge_distance,
    check_edge_index,
    check_positive_int,
    split_num_nodes,
)
from .layout import LAYOUTS, Layout, identity_layout, rcm_layout
from .lookup import HashLookup, TileLookup, build_pair_lookup, lookup_kind
from .pairs import EdgePairs, unique_pairs
from .signatures import IndexFn, MaskMod
from .structure import GraphStructure
from .tables import SINK_ROWS, capped_rows, sink_padded


@dataclass(eq=False)
class LocalStructure(GraphStructure):
    """Pairs, blocks and look-up of local attention; build with :meth:`build`.

    Beyond :class:`GraphStructure`'s attributes:

    * ``blocks``: the non-empty (query block, key block) pairs; ``block_density``: the share of
      their ``B²`` entries that are pairs (a molecule batch: ~1/150), which decides between
      FlexAttention's tiles and a gather per edge.
    * ``lookup``: tiles or hash answering ``(q, kv) -> pair id + 1`` inside FlexAttention mods
      (:mod:`pyg_mup.graph.lookup`), built with the block mask, else ``None``; ``lookup_kind``.
    * ``pair_distance``: ``[P]`` distance of each edge pair (with ``max_distance``).
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
    block_mask: BlockMask | None = None
    max_distance: int | None = None
    pair_distance: Tensor | None = None
    batch: Tensor | None = None
    pair_row: IndexFn | None = None

    @classmethod
    def build(
        cls,
        edge_index: Tensor,
        num_nodes: int | tuple[int, int],
        max_distance: int | None = None,
        edge_distance: Tensor | None = None,
        block_size: int = 128,
        lookup: str = "auto",
        layout: str | None = None,
        flex: bool | None = None,
        target: str = "cpu",
    ) -> LocalStructure:
        """See :meth:`GraphStructure.build` (``mode='local'``)."""
        check_positive_int(block_size, "block_size")
        check_positive_int(max_distance, "max_distance", allow_none=True)
        num_src, num_dst = split_num_nodes(num_nodes)
        check_edge_index(edge_index, num_src, num_dst)
        if edge_distance is not None:
            if max_distance is None:
                raise ValueError("edge_distance needs max_distance (the distance embedding size)")
            check_edge_distance(edge_distance, edge_index.size(1))
        if layout not in LAYOUTS or layout in ("auto", "pack"):
            raise ValueError(
                f"layout must be None or 'rcm' in mode='local' ('pack' packs graphs in "
                f"mode='global'), got {layout!r}"
            )
        bipartite = isinstance(num_nodes, tuple)
        if layout == "rcm" and bipartite:
            raise ValueError("layout='rcm' reorders one node set; num_nodes is bipartite")
        lookup_kind(lookup, 0, 0, block_size)  # validates the name

        nodes = rcm_layout(edge_index, num_dst) if layout == "rcm" else identity_layout(num_dst)
        src, dst = edge_index[0].long(), edge_index[1].long()
        if nodes.node_slot is not None:
            src, dst = nodes.node_slot[src], nodes.node_slot[dst]
        pairs = unique_pairs(src, dst, num_src)
        blocks, block_key, tile_of_pair = local_blocks(
            pairs.pair_index, num_dst, num_src, block_size
        )
        num_blocks = blocks.q.numel()
        density = pairs.num_pairs / max(num_blocks * block_size**2, 1)
        kind = lookup_kind(lookup, pairs.num_pairs, num_blocks, block_size)
        if flex is None:
            flex = target == "cuda" and density >= min(FLEX_MIN_BLOCK_DENSITY.values())

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
            blocks=blocks,
            block_density=density,
            lookup_kind=kind,
            max_distance=max_distance,
        )
        if max_distance is not None:
            structure.pair_distance = _edge_pair_distance(pairs, edge_distance, max_distance)
        if flex:
            structure.lookup = build_pair_lookup(
                pairs.pair_index,
                num_src,
                block_key,
                tile_of_pair,
                num_blocks,
                *(-(-max(n, 1) // block_size) for n in (num_dst, num_src)),
                block_size,
                kind,
            )
        structure.pair_row = structure._pair_row_for("flex")
        if flex:
            structure.block_mask = block_mask(
                blocks, num_dst, num_src, block_size, structure.mask_mod()
            )
        return structure

    # ---------------------------------------------------------------------------- mods
    def _pair_row_for(self, backend: str) -> IndexFn:
        """Message passing calls mods with its own pairs, in order: row ``p + 1`` is pair ``p``
        with no look-up. Other indices go through the look-up; entries that are no pair read
        one of ``SINK_ROWS`` zero rows, spread by position (see :mod:`pyg_mup.graph.tables`)."""
        own_q, own_kv = self.message_passing_indices
        own_rows = torch.arange(1, own_q.size(0) + 1, device=own_q.device).unsqueeze(1)
        lookup, sink = self.lookup, self.num_pairs + 1

        def pair_row(q: Tensor, kv: Tensor) -> Tensor:
            if backend == "message_passing" and q is own_q and kv is own_kv:
                return own_rows
            if lookup is None:
                raise ValueError(
                    "this local structure was built without its pair look-up (flex=False): "
                    "build it with GraphStructure.build(..., flex=True) to look up pairs at "
                    "other indices than the message-passing backend's own"
                )
            pair = lookup.fn()(q, kv)
            return torch.where(pair > 0, pair, sink + (q * 131 + kv) % SINK_ROWS)

        return pair_row

    def mask_mod(self) -> MaskMod:
        """An edge ``kv → q``: a look-up hit."""
        if self.lookup is None:
            raise ValueError(
                "this local structure was built without a block mask (flex=False): build it "
                "with GraphStructure.build(..., flex=True) for FlexAttention"
            )
        find = self.lookup.fn()

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
        values = parts[0].new_zeros(self.num_pairs, parts[0].shape[-1])
        if edge_values is not None:
            values = values + edge_values
        if distance_values is not None:
            values = values + capped_rows(distance_values, self._distances())
        return sink_padded(values)

    def distance(self, q: Tensor, kv: Tensor) -> Tensor:
        far = self._distances().new_full((1 + SINK_ROWS,), self.max_distance + 1)
        table = torch.cat([far[:1], self._distances(), far[1:]])
        return table[self.pair_row(q, kv)]

    def _distances(self) -> Tensor:
        if self.pair_distance is None:
            raise ValueError("this structure was built without max_distance")
        return self.pair_distance


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
