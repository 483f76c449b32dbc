"""Graphs for the tests: random batches (parallel edges, self-loops, isolated nodes) and ring
molecules with OGB features."""

from __future__ import annotations

import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch import Tensor
from torch_geometric.data import Data


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


def bfs_hop_table(edge_index: Tensor, sizes: list[int], cap: int | None = None) -> Tensor:
    """``[Σ n_g²]`` networkx BFS hops from key ``j`` to query ``i`` at ``offset_g + i · n_g + j``
    of each graph (local node indices; edges along ``edge_index[0] → edge_index[1]``), the
    layout of global structures' flat tables. Unreachable: 255, or with ``cap`` every distance
    is ``min(d, cap)``."""
    import networkx as nx

    unreachable = 255 if cap is None else cap
    ptr = [0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()]
    src, dst = edge_index.tolist() if edge_index.numel() else ([], [])
    tables = []
    for graph, size in enumerate(sizes):
        digraph = nx.DiGraph()
        digraph.add_nodes_from(range(size))
        digraph.add_edges_from(
            (s - ptr[graph], d - ptr[graph])
            for s, d in zip(src, dst, strict=True)
            if ptr[graph] <= d < ptr[graph + 1]
        )
        table = torch.full((size, size), unreachable, dtype=torch.long)
        for key, hops in nx.all_pairs_shortest_path_length(digraph):
            for query, length in hops.items():
                table[query, key] = length if cap is None else min(length, cap)
        tables.append(table.reshape(-1))
    return torch.cat(tables) if tables else torch.zeros(0, dtype=torch.long)


def molecule(num_nodes: int, seed: int) -> Data:
    """A ring molecule with OGB-style categorical atom (9) and bond (3) features."""
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(num_nodes)
    dst = (src + 1) % num_nodes
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    x = torch.stack(
        [torch.randint(0, d, (num_nodes,), generator=g) for d in get_atom_feature_dims()], 1
    )
    edge_attr = torch.stack(
        [torch.randint(0, d, (edge_index.size(1),), generator=g) for d in get_bond_feature_dims()],
        1,
    )
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=num_nodes)


def predict(model: torch.nn.Module, batch, encodings: dict[str, Tensor] | None = None) -> Tensor:
    """A graph-level model's ``[num_graphs, out]`` on a PyG ``Batch`` of molecules (both models
    take ``num_graphs`` and ``encodings`` by keyword)."""
    return model(
        batch.x,
        batch.edge_index,
        batch.edge_attr,
        batch.batch,
        num_graphs=batch.num_graphs,
        encodings=encodings,
    )
