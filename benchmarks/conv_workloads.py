"""``bench_conv.py``'s workloads: molecule batches read from OGB's raw files, synthetic
molecules, arxiv-like large graphs and block-clustered graphs of a chosen density, each as a
:class:`Graph` on the benchmark device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import remove_self_loops, to_undirected

EDGE_DIM = 16
DENSITY_STEPS = (128, 64, 32, 16, 8, 4, 2)  # 1/d of each diagonal block holds edges


@dataclass
class Graph:
    """One workload on the benchmark device: ``x`` ``[N, C]`` float32, ``edge_index`` ``[2, E]``
    (both directions, no self-loops or duplicates, so every layer scores the same unique pairs),
    ``batch`` ``[N]`` sorted (``None`` for one large graph), ``edge_attr`` ``[E, EDGE_DIM]``."""

    x: Tensor
    edge_index: Tensor
    batch: Tensor | None
    edge_attr: Tensor

    @classmethod
    def make(cls, edge_index: Tensor, batch: Tensor | None, num_nodes: int, args) -> Graph:
        """Random node and edge features around the given edges, on ``args.device``."""
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(num_nodes, args.width, generator=gen)
        edge_attr = torch.randn(edge_index.size(1), EDGE_DIM, generator=gen)
        batch = batch.to(args.device) if batch is not None else None
        return cls(x.to(args.device), edge_index.to(args.device), batch, edge_attr.to(args.device))

    def sizes(self, scope: str) -> dict:
        """Graphs, nodes, edges and the pairs a layer of ``scope`` scores (Σ n_g² if global)."""
        graphs = int(self.batch[-1]) + 1 if self.batch is not None else 1
        pairs = self.edge_index.size(1)
        if scope == "global":
            pairs = int((torch.bincount(self.batch).double() ** 2).sum())
        return dict(graphs=graphs, nodes=self.x.size(0), edges=self.edge_index.size(1), pairs=pairs)


def molecule_raw(root: Path, num_graphs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first graphs of an OGB raw folder (``root/raw`` or ``root/ogbg_molhiv/raw``), read
    with numpy so that no ``ogb`` is needed: node counts ``[G]``, edge counts ``[G]`` and edges
    ``[E_raw, 2]`` in per-graph node ids, one direction per bond as OGB stores them."""
    raw = root / "raw" if (root / "raw").is_dir() else root / "ogbg_molhiv" / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"no OGB raw folder at {root} (expected raw/edge.csv.gz)")
    nodes = np.loadtxt(raw / "num-node-list.csv.gz", dtype=np.int64, ndmin=1)[:num_graphs]
    edges = np.loadtxt(raw / "num-edge-list.csv.gz", dtype=np.int64, ndmin=1)[:num_graphs]
    pairs = np.loadtxt(
        raw / "edge.csv.gz", delimiter=",", dtype=np.int64, ndmin=2, max_rows=int(edges.sum())
    )
    return nodes, edges, pairs


def molecule_batch(raw: tuple, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Graphs ``[start, stop)`` of :func:`molecule_raw` as ``(edge_index, batch)``, with inverse
    edges added as OGB's loader does for molecules."""
    nodes, edges, pairs = raw
    node_ptr, edge_ptr = (np.concatenate([[0], np.cumsum(count)]) for count in (nodes, edges))
    shift = np.repeat(node_ptr[start:stop] - node_ptr[start], edges[start:stop])
    local = pairs[edge_ptr[start] : edge_ptr[stop]] + shift[:, None]
    sizes = torch.from_numpy(nodes[start:stop])
    edge_index = clean(torch.from_numpy(np.ascontiguousarray(local.T)), int(sizes.sum()))
    return edge_index, torch.repeat_interleave(sizes)


def synthetic_molecules(num_graphs: int) -> tuple[Tensor, Tensor]:
    """Molecule-like batch: random recursive trees of 10–40 nodes plus two ring closures each."""
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(10, 41, (num_graphs,), generator=gen)
    batch = torch.repeat_interleave(sizes)
    ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    node = torch.arange(batch.numel())
    local = node - ptr[batch]
    parent = ptr[batch] + (torch.rand(node.numel(), generator=gen) * local).long()
    tree = torch.stack([parent, node])[:, local > 0]
    graph = torch.arange(num_graphs).repeat(2)
    ring = ptr[graph] + (torch.rand(2, graph.numel(), generator=gen) * sizes[graph]).long()
    return clean(torch.cat([tree, ring], 1), node.numel()), batch


def arxiv_like(num_nodes: int, num_edges: int, shuffle: bool, window: int = 256) -> Tensor:
    """One large sparse graph: 99% of edges inside windows of ``window`` consecutive ids (the
    community order), 1% uniform; ``shuffle`` relabels the nodes by a random permutation."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = (src // window) * window + torch.randint(0, window, (num_edges,), generator=gen)
    far = torch.rand(num_edges, generator=gen) < 0.01
    dst[far] = torch.randint(0, num_nodes, (int(far.sum()),), generator=gen)
    edge_index = clean(torch.stack([src, dst.clamp(max=num_nodes - 1)]), num_nodes)
    return torch.randperm(num_nodes, generator=gen)[edge_index] if shuffle else edge_index


def block_clusters(num_nodes: int, density: float, block: int) -> Tensor:
    """Edges only inside aligned groups of ``block`` consecutive nodes, about ``density`` of each
    group's ``block²`` pairs: FlexAttention then visits one diagonal block per query block, and
    the edges fill it to ``density``, the quantity ``backend='auto'`` weighs
    (``FLEX_MIN_BLOCK_DENSITY``). Duplicates removed, so the exact density is recorded."""
    gen = torch.Generator().manual_seed(0)
    num_edges = int(density * num_nodes * block / 2)  # halved: ``clean`` adds the reverse
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = (src // block) * block + torch.randint(0, block, (num_edges,), generator=gen)
    return clean(torch.stack([src, dst.clamp(max=num_nodes - 1)]), num_nodes)


def clean(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Both directions, sorted, without duplicates or self-loops."""
    return remove_self_loops(to_undirected(edge_index, num_nodes=num_nodes))[0]


def workload_plan(args) -> list[tuple[str, Callable[[], Graph] | None]]:
    """``(name, builder)`` in priority order (a run out of time loses the last ones);
    ``None`` marks the recompilation case."""
    small, large, synth = (8, 16, 16) if args.smoke else (256, 2048, 8192)
    nodes, edges = (400, 1_000) if args.smoke else (169_343, 1_166_243)
    cluster_nodes = 512 if args.smoke else 32_768

    def molhiv(count: int) -> Callable[[], Graph]:
        def build() -> Graph:
            edge_index, batch = molecule_batch(molecule_raw(args.molhiv_root, count), 0, count)
            return Graph.make(edge_index, batch, batch.numel(), args)

        return build

    def arxiv(shuffle: bool) -> Callable[[], Graph]:
        return lambda: Graph.make(arxiv_like(nodes, edges, shuffle), None, nodes, args)

    def synthetic() -> Graph:
        edge_index, batch = synthetic_molecules(synth)
        return Graph.make(edge_index, batch, batch.numel(), args)

    def clustered(inverse_density: int) -> Callable[[], Graph]:
        edges = block_clusters(cluster_nodes, 1 / inverse_density, args.block_size)
        return lambda: Graph.make(edges, None, cluster_nodes, args)

    return [
        (f"molhiv-{large}", molhiv(large)),
        ("molhiv-batches", None),
        ("arxiv-community", arxiv(False)),
        (f"molhiv-{small}", molhiv(small)),
        (f"synthetic-{synth}", synthetic),
        ("arxiv-random", arxiv(True)),
        *((f"density-1in{d}", clustered(d)) for d in DENSITY_STEPS),
    ]
