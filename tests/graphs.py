"""Random graphs for the tests: batched, with parallel edges, self-loops and isolated nodes."""

from __future__ import annotations

import torch
from torch import Tensor


def random_batch(
    sizes: list[int], edges_per_graph: int, generator: torch.Generator, channels: int = 8
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x [N, channels], edge_index [2, E], batch [N])`` with edges inside each graph only.

    A few edges are duplicated and a self-loop is added so parallel edges and loops are covered.
    """
    ptr = torch.tensor([0, *sizes]).cumsum(0)
    edges = []
    for graph, size in enumerate(sizes):
        if size == 0 or edges_per_graph == 0:
            continue
        local = torch.randint(0, size, (2, edges_per_graph), generator=generator)
        edges.append(local + ptr[graph])
    edge_index = torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.long)
    if edge_index.size(1) > 0:
        loop = edge_index[:1, :1].repeat(2, 1)
        edge_index = torch.cat([edge_index, edge_index[:, :3], loop], 1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(int(ptr[-1]), channels, generator=generator)
    return x, edge_index, batch


def dense_distances(edge_index: Tensor, num_nodes: int, max_distance: int) -> Tensor:
    """``[N, N]`` hop distance from j to i (``[i, j]``), capped, by boolean matrix powers."""
    adjacency = torch.zeros(num_nodes, num_nodes)
    adjacency[edge_index[1], edge_index[0]] = 1.0
    distance = torch.full((num_nodes, num_nodes), max_distance + 1, dtype=torch.long)
    reach = torch.eye(num_nodes)
    distance[reach > 0] = 0
    for hops in range(1, max_distance + 1):
        reach = ((adjacency @ reach) > 0).float()
        distance[(reach > 0) & (distance > hops)] = hops
    return distance
