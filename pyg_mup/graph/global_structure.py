"""``GlobalStructure``: attention between every pair of nodes of the same graph."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .blocks import BlockList, block_mask, global_blocks, num_blocks
from .checks import (
    check_batch,
    check_edge_distance,
    check_edge_index,
    check_edges_within_graphs,
    check_graph_sizes,
    check_positive_int,
)
from .distance import capped_distances, relaxed_hop_distances
from .layout import Layout, identity_layout, pack_layout, packed_block_size
from .pairs import EdgePairs, unique_pairs
from .signatures import IndexFn, MaskMod
from .structure import GraphStructure
from .tables import OwnPairRows, capped_rows


@dataclass(eq=False)
class GlobalStructure(GraphStructure):
    """Graph ranges, flat per-pair tables and blocks of within-graph attention.

    Beyond :class:`GraphStructure`'s attributes (``S`` slots, padded to ``QB`` blocks of ``B``):

    * ``graph_sizes``: node count of each graph, on the host; ``graph_start``/``graph_size``:
      ``[G]`` first slot and node count of each graph.
    * ``node_graph``: ``[QB * B]`` graph of each slot (-1 for padding).
    * ``flat_row``: ``[QB * B]``: the pair (query ``q``, key ``kv``) of one graph is entry
      ``flat_row[q] + kv`` of the flat per-pair tables of ``flat_size = Σ n_g²`` rows, in the
      order of ``attention_pairs``; ``edge_flat``: ``[P]`` that entry for each edge pair.
    * ``flat_distance``: ``[Σ n_g²]`` hop distances (with ``max_distance``).
    * ``blocks``: the (query block, key block) pairs within-graph attention touches.
    """

    mode = "global"
    num_src: int
    num_dst: int
    block_size: int
    layout: Layout
    edge_index: Tensor
    edge_version: int
    batch: Tensor | None
    batch_version: int
    pairs: EdgePairs
    attention_pairs: Tensor
    message_passing_indices: tuple[Tensor, Tensor]
    graph_sizes: tuple[int, ...]
    graph_start: Tensor
    graph_size: Tensor
    node_graph: Tensor
    flat_row: Tensor
    flat_size: int
    edge_flat: Tensor
    blocks: BlockList
    flat_distance: Tensor | None = None
    max_distance: int | None = None
    block_mask: BlockMask | None = None
    pair_row: IndexFn | None = None

    block_density = 1.0
    """Every entry of a block that holds one graph is attended (the ``'auto'`` rule's input)."""

    @classmethod
    def build(
        cls,
        edge_index: Tensor,
        num_nodes: int,
        batch: Tensor | None = None,
        ptr: Tensor | list[int] | None = None,
        max_distance: int | None = None,
        edge_distance: Tensor | None = None,
        hop_distance: Tensor | None = None,
        block_size: int | None = None,
        layout: str | None = "pack",
        flex: bool | None = None,
    ) -> GlobalStructure:
        """See :meth:`GraphStructure.build` (``mode='global'``)."""
        if isinstance(num_nodes, tuple):
            raise ValueError("mode='global' needs one node set; got a bipartite num_nodes")
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"num_nodes must be a non-negative int, got {num_nodes!r}")
        check_positive_int(block_size, "block_size", allow_none=True)
        check_positive_int(max_distance, "max_distance", allow_none=True)
        if layout not in (None, "pack"):
            raise ValueError(
                f"layout must be None or 'pack' in mode='global' ('rcm' orders local "
                f"structures), got {layout!r}"
            )
        check_edge_index(edge_index, num_nodes, num_nodes)
        device = edge_index.device
        if edge_distance is not None:
            if max_distance is None:
                raise ValueError("edge_distance needs max_distance (the distance embedding size)")
            check_edge_distance(edge_distance, edge_index.size(1))
        sizes = _graph_sizes(batch, ptr, num_nodes)
        if batch is None:
            graph_ids = torch.arange(len(sizes), device=device)
            batch_index = torch.repeat_interleave(
                graph_ids, torch.tensor(sizes, device=device), output_size=num_nodes
            )
        else:
            batch_index = batch.long()
        check_edges_within_graphs(edge_index, batch_index)
        if flex is None:
            flex = edge_index.is_cuda
        if block_size is None:
            block_size = 128 if flex else packed_block_size(max(sizes, default=1))

        nodes = pack_layout(sizes, block_size, device) if layout else identity_layout(num_nodes)
        tables = _FlatTables(sizes, nodes, block_size)
        on_device = {name: value.to(device) for name, value in tables.tensors().items()}
        node_graph, flat_row = on_device["node_graph"], on_device["flat_row"]
        src, dst = edge_index[0].long(), edge_index[1].long()
        if nodes.node_slot is not None:
            src, dst = nodes.node_slot[src], nodes.node_slot[dst]
        pairs = unique_pairs(src, dst, nodes.seq_len)
        pair_src, pair_dst = pairs.pair_index
        attention_pairs = _within_graph_pairs(
            on_device["graph_start"], on_device["graph_size"], sizes
        )
        structure = cls(
            num_src=num_nodes,
            num_dst=num_nodes,
            block_size=block_size,
            layout=nodes,
            edge_index=edge_index,
            edge_version=edge_index._version,
            batch=batch_index,
            batch_version=batch_index._version,
            pairs=pairs,
            attention_pairs=attention_pairs,
            message_passing_indices=(attention_pairs[1:].t(), attention_pairs[:1].t()),
            graph_sizes=tuple(sizes),
            graph_start=on_device["graph_start"],
            graph_size=on_device["graph_size"],
            node_graph=node_graph,
            flat_row=flat_row,
            flat_size=tables.flat_size,
            edge_flat=flat_row[pair_dst] + pair_src,
            blocks=tables.blocks.apply(lambda t: t.to(device)),
            max_distance=max_distance,
        )
        if max_distance is not None:
            structure.flat_distance = _distances(
                structure, hop_distance, edge_distance, max_distance
            )
        elif hop_distance is not None:
            raise ValueError("hop_distance was given without max_distance")
        structure.pair_row = structure._pair_row_for("flex")
        if flex:
            structure.block_mask = block_mask(
                structure.blocks,
                nodes.seq_len,
                nodes.seq_len,
                block_size,
                structure.mask_mod(),
            )
        return structure

    @property
    def fits_dense_blocks(self) -> bool:
        """Whether every graph lies inside one block (a packed layout whose graphs are at most
        ``block_size``): then attention is block-diagonal, as the dense backend needs."""
        return self.layout.node_slot is not None and max(self.graph_sizes, default=0) <= (
            self.block_size
        )

    # ---------------------------------------------------------------------------- mods
    def _pair_row_for(self, backend: str) -> IndexFn:
        """``flat_row[q] + kv`` (wrapped into range for pairs across graphs, which the mask drops);
        the message-passing backend's own pairs are the flat rows in order, with no gather."""
        flat_row, flat_size = self.flat_row, self.flat_size

        def pair_row(q: Tensor, kv: Tensor) -> Tensor:
            return torch.remainder(flat_row[q] + kv, flat_size)

        if backend != "message_passing":
            return pair_row
        own_q, own_kv = self.message_passing_indices
        own_rows = torch.arange(own_q.size(0), device=own_q.device).unsqueeze(1)
        return OwnPairRows(own_q, own_kv, own_rows, 0, pair_row)

    def mask_mod(self) -> MaskMod:
        """The same graph (padding slots belong to none)."""
        node_graph = self.node_graph

        def same_graph(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            graph = node_graph[q]
            return (graph == node_graph[kv]) & (graph >= 0)

        return same_graph

    def pair_values(
        self,
        edge_values: Tensor | None = None,
        no_edge: Tensor | None = None,
        distance_values: Tensor | None = None,
    ) -> Tensor:
        parts = [t for t in (edge_values, no_edge, distance_values) if t is not None]
        if not parts:
            raise ValueError("pair_values needs at least one of its inputs")
        values = parts[0].new_zeros(self.flat_size, parts[0].shape[-1])
        if no_edge is not None:
            values = values + no_edge
        if edge_values is not None:
            values = values.index_put((self.edge_flat,), edge_values)
        if distance_values is not None:
            values = values + capped_rows(distance_values, self._distances())
        return values

    def distance(self, q: Tensor, kv: Tensor) -> Tensor:
        return self._distances()[self.pair_row(q, kv)]

    def _distances(self) -> Tensor:
        if self.flat_distance is None:
            raise ValueError("this structure was built without max_distance")
        return self.flat_distance


class _FlatTables:
    """Slot → graph map, flat-table rows and blocks, computed on the host from graph sizes."""

    def __init__(self, sizes: list[int], nodes: Layout, block_size: int):
        graph_size = np.asarray(sizes, dtype=np.int64)
        first_node = np.cumsum(graph_size) - graph_size
        slots = (
            nodes.node_slot.cpu().numpy()
            if nodes.node_slot is not None
            else np.arange(int(graph_size.sum()))
        )
        # an empty graph starts where the next one would; nothing reads its start
        start = (
            np.where(
                graph_size > 0, slots[np.minimum(first_node, max(slots.size - 1, 0))], first_node
            )
            if slots.size
            else first_node
        )
        padded = num_blocks(nodes.seq_len, block_size) * block_size
        graph = np.repeat(np.arange(graph_size.size), graph_size)
        node_graph = np.full(padded, -1, dtype=np.int64)
        node_graph[slots] = graph
        offset = np.cumsum(graph_size**2) - graph_size**2
        flat_row = np.zeros(padded, dtype=np.int64)
        flat_row[slots] = offset[graph] + (slots - start[graph]) * graph_size[graph] - start[graph]
        self.flat_size = max(int((graph_size**2).sum()), 1)
        self.graph_start = torch.from_numpy(start)
        self.graph_size = torch.from_numpy(graph_size)
        self.node_graph = torch.from_numpy(node_graph)
        self.flat_row = torch.from_numpy(flat_row)
        self.blocks = global_blocks(self.node_graph, self.graph_start, self.graph_size, block_size)

    def tensors(self) -> dict[str, Tensor]:
        return {
            "graph_start": self.graph_start,
            "graph_size": self.graph_size,
            "node_graph": self.node_graph,
            "flat_row": self.flat_row,
        }


def _graph_sizes(batch: Tensor | None, ptr: Tensor | list[int] | None, num_nodes: int) -> list[int]:
    """Node count of each graph, on the host (from ``ptr`` when given)."""
    if batch is not None:
        check_batch(batch, num_nodes)
    if ptr is not None:
        offsets = ptr.tolist() if isinstance(ptr, Tensor) else list(ptr)
        sizes = [b - a for a, b in itertools.pairwise(offsets)]
        if not offsets or offsets[0] != 0:
            raise ValueError("ptr must start at 0 (PyG's Batch.ptr)")
        check_graph_sizes(sizes, num_nodes)
        return sizes
    if batch is None:
        return [num_nodes] if num_nodes else []
    if num_nodes == 0:
        return []
    return torch.bincount(batch.long()).tolist()


def _within_graph_pairs(starts: Tensor, sizes: Tensor, host_sizes: list[int]) -> Tensor:
    """``[2, Σ n_g²]`` every (src, dst) slot pair inside each graph, sorted by dst then src, in
    flat-table order; output sizes come from the host, so no device sync."""
    device = sizes.device
    num_nodes, num_pairs = sum(host_sizes), sum(n * n for n in host_sizes)
    graphs = torch.arange(sizes.numel(), device=device)
    dst_graph = torch.repeat_interleave(graphs, sizes, output_size=num_nodes)
    first_node = sizes.cumsum(0) - sizes
    dst = starts[dst_graph] + torch.arange(num_nodes, device=device) - first_node[dst_graph]
    row_length = sizes[dst_graph]
    pair_dst = torch.repeat_interleave(dst, row_length, output_size=num_pairs)
    pair_graph = torch.repeat_interleave(dst_graph, row_length, output_size=num_pairs)
    row_start = torch.repeat_interleave(
        row_length.cumsum(0) - row_length, row_length, output_size=num_pairs
    )
    src = starts[pair_graph] + torch.arange(num_pairs, device=device) - row_start
    return torch.stack([src, pair_dst])


def _distances(
    structure: GlobalStructure,
    hop_distance: Tensor | None,
    edge_distance: Tensor | None,
    max_distance: int,
) -> Tensor:
    """``[Σ n_g²]`` capped hop distances: precomputed, or by relaxation; caller distances of the
    edge pairs (the minimum over parallel edges) override them."""
    if hop_distance is not None:
        expected = sum(n * n for n in structure.graph_sizes)
        if hop_distance.shape != (expected,):
            raise ValueError(
                f"hop_distance must have shape [Σ n_g²]=[{expected}] (AddHopDistance of each "
                f"graph, in batch order), got {list(hop_distance.shape)}"
            )
        table = capped_distances(hop_distance.to(structure.flat_row.device), max_distance)
        if structure.flat_size > expected:  # no nodes: one dummy row
            table = torch.cat([table, table.new_full((1,), max_distance + 1)])
    else:
        seq = structure.layout.seq_len
        table = relaxed_hop_distances(
            structure.pair_index,
            structure.node_graph[:seq],
            structure.flat_row[:seq],
            structure.graph_start,
            structure.graph_size,
            structure.flat_size,
            max_distance,
        )
    if edge_distance is not None:
        pair_dist = torch.full_like(structure.edge_flat, max_distance + 1)
        pair_dist.scatter_reduce_(0, structure.edge_pair, edge_distance.long(), reduce="amin")
        table = table.index_put(
            (structure.edge_flat,),
            torch.minimum(table[structure.edge_flat], pair_dist.clamp(max=max_distance)),
        )
    return table
