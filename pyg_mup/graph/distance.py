"""Shortest-path hop distances inside each graph, as flat per-pair tables of Σ n_g² entries.

Entry ``flat_row[i] + j`` of a global structure's tables belongs to the pair (query ``i``, key
``j``) of one graph; inside graph ``g`` (nodes ``0 … n_g - 1`` in its own order) that is entry
``offset_g + i · n_g + j``, the same whether nodes sit at their node index or at packed slots.
So per-graph tables concatenated in graph order are a batch's table, which is what lets
:class:`AddHopDistance` compute them once per dataset (a ``pre_transform``, cached on disk) and
PyG's collate assemble them per batch for free.

Without precomputed tables, :func:`relaxed_hop_distances` computes them with a fixed number of
relaxation passes (one per hop up to ``max_distance``), whose shapes depend only on sizes known
before it starts: no data-dependent frontier, no host sync per hop.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

UNREACHABLE = 255
"""Stored for pairs with no path (and paths of 255 hops or more, which no cap reaches)."""


class AddHopDistance(BaseTransform):
    """Adds ``data.hop_distance``: ``[n²]`` uint8 hop counts from key ``j`` to query ``i`` at
    entry ``i · n + j``, along edge directions (``edge_index[0] → edge_index[1]``).

    Like PyG's ``AddRandomWalkPE``, use it as a ``pre_transform`` so it runs once per dataset
    and is stored with the processed data; global structures then read it instead of computing
    distances per batch. Memory: n² bytes per graph (a molecule: well under a kilobyte).
    """

    def forward(self, data: Data) -> Data:
        n = data.num_nodes
        src, dst = data.edge_index.numpy()
        adjacency = csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
        hops = shortest_path(adjacency, unweighted=True, directed=True)  # [a, b]: a → b
        hops = np.where(np.isfinite(hops), np.minimum(hops, UNREACHABLE), UNREACHABLE)
        data.hop_distance = torch.from_numpy(hops.T.astype(np.uint8).reshape(-1))
        return data


def capped_distances(hop_distance: Tensor, max_distance: int) -> Tensor:
    """Stored hop counts (``[Σ n_g²]`` uint8) as long, capped at ``max_distance + 1``."""
    return hop_distance.long().clamp(max=max_distance + 1)


def relaxed_hop_distances(
    pair_index: Tensor,
    slot_graph: Tensor,
    flat_row: Tensor,
    graph_start: Tensor,
    graph_size: Tensor,
    flat_size: int,
    max_distance: int,
) -> Tensor:
    """``[flat_size]`` hop distances ``j → i`` (capped at ``max_distance + 1``) by relaxation.

    Pass ``k`` sets ``d(j → i) = min(d(j → i), min over edges u → i of d(j → u) + 1)`` for all
    ``j`` of the edge's graph: ``Σ_e n_g`` entries per pass, ``max_distance`` passes.

    Args:
        pair_index: ``[2, P]`` unique (src, dst) edge pairs, in slots, each inside one graph.
        slot_graph: ``[S]`` graph of each slot (-1 for padding).
        flat_row: ``[S]`` row offsets of the flat tables; ``graph_start``/``graph_size``: ``[G]``.
    """
    device = flat_row.device
    table = torch.full((flat_size,), max_distance + 1, dtype=torch.long, device=device)
    slots = torch.arange(slot_graph.numel(), device=device)
    diagonal = torch.remainder(flat_row + slots, flat_size)  # padding slots write no-ops
    start = torch.where(slot_graph >= 0, 0, max_distance + 1)
    table = table.scatter_reduce(0, diagonal, start, reduce="amin")
    src, dst = pair_index
    if src.numel() == 0:
        return table
    width = graph_size[slot_graph[dst]]
    total = int(width.sum())
    edge = torch.repeat_interleave(
        torch.arange(src.numel(), device=device), width, output_size=total
    )
    first = torch.repeat_interleave(width.cumsum(0) - width, width, output_size=total)
    key = graph_start[slot_graph[dst]][edge] + torch.arange(total, device=device) - first
    read, write = flat_row[src][edge] + key, flat_row[dst][edge] + key
    for _ in range(max_distance):
        table = table.scatter_reduce(0, write, table[read] + 1, reduce="amin")
    return table.clamp(max=max_distance + 1)
