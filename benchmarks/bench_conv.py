"""Benchmark FlexGraphConv against PyG's attention layers (issue 5); method in README.md.

Each case times forward+backward (``out.sum().backward()``) of one layer on one workload at one
dtype, after a correctness check against ours on the message-passing backend in float32. Cases are
isolated: an error, out-of-memory or timeout is recorded and the run goes on; the JSON is rewritten
after every case, and cases past ``--max-seconds`` are recorded as skipped.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import fnmatch
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
import torch_geometric
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch.autograd import DeviceType
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.profiler import ProfilerActivity
from torch_geometric.nn import GATv2Conv, TransformerConv
from torch_geometric.utils import remove_self_loops, to_dense_batch, to_undirected

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pyg_mup import FlexGraphConv, GraphStructure  # noqa: E402
from pyg_mup.nn.attention import _compiled_flex_attention  # noqa: E402  (one shared compile cache)

EDGE_DIM = 16
INT32_PAIRS = 2**31  # a dense N×N look-up inside a kernel is indexed with int32
DENSE_MASK_PAIRS = 2**32  # create_block_mask materialises N×N masks: ≈ 11 bytes per pair
PROFILE_TOP = 12  # kernels listed per case by --profile
GRACE_S = 20  # how far past --max-seconds the last case may run before it is cut
LOCAL_LAYERS = ["TransformerConv", "TransformerConv+edge", "GATv2Conv", "naive-flex-local"]
LOCAL_LAYERS += ["ours-local", "ours-local+edge", "ours-local+rcm", "ours-local+mp"]
LOCAL_LAYERS += ["ours-local+edge+mp"]
GLOBAL_LAYERS = ["dense-MHA", "naive-flex-global", "ours-global", "ours-global+edge"]
GLOBAL_LAYERS += ["ours-global+pack"]
LAYOUTS = {"+rcm": "rcm", "+pack": "pack"}  # suffix -> GraphStructure.build(layout=...)
MESSAGE_PASSING = "+mp"  # suffix: ours on the message-passing backend (what 'auto' picks when
# the blocks are sparse) instead of FlexAttention
DENSITY_STEPS = (128, 64, 32, 16, 8, 4, 2)  # 1/d of each diagonal block holds edges
SMOKE_CASES = ["molhiv-16/*", "molhiv-batches/*", "*/TransformerConv/*", "arxiv-random/ours-*"]
SMOKE_CASES += ["density-1in8/ours-local*"]


class Skip(Exception):
    """A case that cannot run here; the message is the recorded reason."""


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


# ----------------------------------------------------------------------------------- workloads
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


# -------------------------------------------------------------------------------------- layers
class Ours(nn.Module):
    """``FlexGraphConv`` on a structure built outside the timed region (a model builds it once
    per batch for all its layers): ``forward(x [N, C], edge_attr [E, F]) -> [N, C]``."""

    def __init__(self, conv: FlexGraphConv, graph: Graph, structure: GraphStructure, edges: bool):
        super().__init__()
        self.conv, self.graph, self.structure, self.edges = conv, graph, structure, edges

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        batch = self.graph.batch if self.conv.mode == "global" else None
        attr = edge_attr if self.edges else None
        return self.conv(x, self.graph.edge_index, attr, batch=batch, structure=self.structure)


class NaiveFlex(nn.Module):
    """The naive FlexAttention: the conv's own projections and a ``create_block_mask`` mask."""

    def __init__(self, conv: FlexGraphConv, block_mask: BlockMask):
        super().__init__()
        self.conv, self.block_mask = conv, block_mask

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        conv, heads, channels = self.conv, self.conv.heads, self.conv.out_channels
        q, k, v = (
            lin(x).view(-1, heads, channels).transpose(0, 1).unsqueeze(0)
            for lin in (conv.lin_query, conv.lin_key, conv.lin_value)
        )
        attend = _compiled_flex_attention() if x.is_cuda else flex_attention
        out = attend(q, k, v, block_mask=self.block_mask, scale=conv.scale)
        return out.squeeze(0).transpose(0, 1).reshape(x.size(0), -1) + conv.lin_skip(x)


class PygLocal(nn.Module):
    """A PyG gather/scatter conv over the workload's edges."""

    def __init__(self, conv: nn.Module, graph: Graph, edges: bool):
        super().__init__()
        self.conv, self.graph, self.edges = conv, graph, edges

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        return self.conv(x, self.graph.edge_index, *([edge_attr] if self.edges else []))


class DenseGlobal(nn.Module):
    """GPSConv's global branch: ``to_dense_batch`` + ``MultiheadAttention`` with padding mask."""

    def __init__(self, width: int, heads: int, graph: Graph):
        super().__init__()
        self.attn, self.graph = nn.MultiheadAttention(width, heads, batch_first=True), graph

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        h, mask = to_dense_batch(x, self.graph.batch)
        return self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0][mask]


def build_structure(
    graph: Graph, mode: str, args, layout: str | None = None, flex: bool = True
) -> tuple[GraphStructure, float]:
    """Ours: ``GraphStructure.build`` + ``.block_mask`` if ``flex`` (message passing reads no
    block mask), median ms of 3 after a warm-up."""
    batch = graph.batch if mode == "global" else None
    options = dict(mode=mode, block_size=args.block_size, **({"layout": layout} if layout else {}))

    def build() -> GraphStructure:
        structure = GraphStructure.build(graph.edge_index, graph.x.size(0), batch, **options)
        if flex:
            structure.block_mask  # noqa: B018  (built lazily: part of the cost)
        return structure

    return timed_call(build, args.device, 1 if args.smoke else 3)


def naive_mask(graph: Graph, mode: str, args) -> tuple[BlockMask, float]:
    """The naive way: ``create_block_mask`` over all N² pairs of a dense adjacency look-up
    (local) or a same-graph check (global); median ms of 3 after a warm-up."""
    n = graph.x.size(0)
    if mode == "local" and n * n >= INT32_PAIRS:
        raise Skip(f"dense N×N lookup overflows int32 indexing (N² = {n * n:.3g} ≥ 2³¹)")
    if n * n > DENSE_MASK_PAIRS:
        raise Skip(f"create_block_mask materialises N×N masks (N² = {n * n:.3g} > 2³²)")
    if mode == "local":
        adjacency = torch.zeros(n, n, dtype=torch.bool, device=args.device)
        adjacency[graph.edge_index[1], graph.edge_index[0]] = True

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return adjacency[q, kv]
    else:
        batch = graph.batch

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return batch[q] == batch[kv]

    create = lambda: create_block_mask(mask_mod, 1, 1, n, n, args.device, args.block_size)  # noqa: E731
    return timed_call(create, args.device, 1 if args.smoke else 3)


def blocks_of(mask: BlockMask) -> int:
    """Non-empty (partial + full) blocks of a ``BlockMask``."""
    full = mask.full_kv_num_blocks
    return int(mask.kv_num_blocks.sum()) + (int(full.sum()) if full is not None else 0)


def make_layer(layer: str, graph: Graph, args) -> tuple[nn.Module, nn.Module | None, dict]:
    """``(module, message-passing reference or None, info)`` of one case, in float32.

    The reference is ours with the same weights on the message-passing backend; the naive flex
    peer shares the conv's weights, so the same reference checks it."""
    width, heads, edges = args.width, args.heads, "+edge" in layer
    channels, edge_dim = width // heads, EDGE_DIM if edges else None
    if layer.startswith("TransformerConv"):
        conv = TransformerConv(width, channels, heads, edge_dim=edge_dim)
        return PygLocal(conv, graph, edges), None, {}
    if layer == "GATv2Conv":
        return PygLocal(GATv2Conv(width, channels, heads), graph, False), None, {}
    if layer == "dense-MHA":
        return DenseGlobal(width, heads, graph), None, {}
    mode = "global" if "global" in layer else "local"
    backend = "message_passing" if layer.endswith(MESSAGE_PASSING) else "flex"
    conv = FlexGraphConv(width, channels, heads, mode=mode, edge_dim=edge_dim, backend=backend)
    reference = copy.deepcopy(conv)
    reference.backend = "message_passing"
    if layer.startswith("naive"):
        mask, build_ms = naive_mask(graph, mode, args)
        structure = build_structure(graph, mode, args)[0]  # for the reference only
        info = dict(build_ms=build_ms, blocks=blocks_of(mask))
        return NaiveFlex(conv, mask), Ours(reference, graph, structure, False), info
    layout = next((name for suffix, name in LAYOUTS.items() if layer.endswith(suffix)), None)
    structure, build_ms = build_structure(graph, mode, args, layout, flex=backend == "flex")
    info = dict(build_ms=build_ms, block_density=structure.block_density)
    if backend == "flex":
        info.update(blocks=blocks_of(structure.block_mask), lookup=structure.lookup_kind)
    return Ours(conv, graph, structure, edges), Ours(reference, graph, structure, edges), info


# -------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(fn: Callable, device: torch.device, reps: int) -> tuple:
    """``(last result, median wall ms)`` of ``fn`` over ``reps`` synced calls after a warm-up."""
    fn()
    times, result = [], None
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return result, statistics.median(times)


def iteration_ms(step: Callable, device: torch.device, iters: int) -> list[float]:
    """Per-iteration ms: CUDA events on GPU (no host sync inside the loop), wall time on CPU."""
    if device.type != "cuda":
        return [timed_call(step, device, 1)[1] for _ in range(iters)]
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def benchmark(step: Callable, args) -> dict:
    """After the first call: ``warmup - 1`` more, then the median ms over ``iters`` iterations
    (fewer, but at least 3, when they would take longer than ``case_seconds``), peak memory."""
    start = time.perf_counter()
    for _ in range(args.warmup - 1):
        step()
    sync(args.device)
    per_iter = (time.perf_counter() - start) / max(1, args.warmup - 1)
    iters = min(args.iters, max(3, int(args.case_seconds / max(per_iter, 1e-9))))
    cuda = args.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = iteration_ms(step, args.device, iters)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return dict(ms=statistics.median(times), ms_min=min(times), iters=iters, peak_mb=peak)


def relative_error(value: Tensor, reference: Tensor) -> float:
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-12))


def run_case(layer: str, graph: Graph, dtype: torch.dtype, args) -> dict:
    """Check one layer against its reference, then time it; returns the measured fields.

    On CPU the flex layers run forward only, under ``no_grad`` (no FlexAttention backward)."""
    module, reference, info = make_layer(layer, graph, args)
    module = module.to(device=args.device, dtype=dtype)
    flex_on_cpu = layer.startswith(("ours", "naive")) and not layer.endswith(MESSAGE_PASSING)
    train = args.device.type == "cuda" or not flex_on_cpu
    x = graph.x.to(dtype, copy=True).requires_grad_(train)  # a fresh leaf, even in float32
    edge_attr = graph.edge_attr.to(dtype, copy=True).requires_grad_(train)

    def step() -> Tensor:
        module.zero_grad(set_to_none=True)
        x.grad = edge_attr.grad = None
        with torch.set_grad_enabled(train):
            out = module(x, edge_attr)
            if train:
                out.sum().backward()
        return out

    start = time.perf_counter()
    out = step()  # compiles on GPU: what a user waits for on the first batch
    sync(args.device)
    info["first_call_s"] = time.perf_counter() - start
    if reference is not None:
        x_ref = graph.x.clone().requires_grad_(train)
        with torch.set_grad_enabled(train):
            out_ref = reference.to(args.device)(x_ref, graph.edge_attr)
            if train:
                out_ref.sum().backward()
                info["rel_err_grad_x"] = relative_error(x.grad, x_ref.grad)
        info["rel_err_out"] = relative_error(out, out_ref)
        del reference, x_ref, out_ref
    del out
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    fields = {**info, **benchmark(step, args), "pass": "fwd+bwd" if train else "fwd"}
    if args.profile:
        fields["kernels"] = top_kernels(step, args)
    return fields


def top_kernels(step: Callable, args) -> list[dict]:
    """``--profile N``: the kernels (CPU: the ops) taking the most self time over ``N`` more
    steps under ``torch.profiler``: name, ms per step and share of all kernels' time, so a
    missed target can say which kernel it is waiting on."""
    cuda = args.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile):
            step()
        sync(args.device)
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    # on CUDA only the kernels themselves: an op's self device time repeats its kernels'
    wanted = DeviceType.CUDA if cuda else DeviceType.CPU
    events = [event for event in prof.key_averages() if event.device_type == wanted]
    times = [(getattr(event, field), event.key) for event in events]
    times = sorted((t for t in times if t[0] > 0), reverse=True)
    total = sum(us for us, _ in times) or 1.0
    return [
        dict(name=name[:160], ms_per_step=us / 1e3 / args.profile, share=us / total)
        for us, name in times[:PROFILE_TOP]
    ]


def run_recompiles(args, dtype: torch.dtype) -> dict:
    """Ours local and global (with edge features) over 50 consecutive molhiv batches of random
    sizes (64–256 graphs; 3 of 4–8 in smoke), each layer building its structure per batch;
    counts ``torch._dynamo`` graphs compiled (``stats.unique_graphs``), overall and per batch."""
    count, low, high = (3, 4, 8) if args.smoke else (50, 64, 256)
    sizes = torch.randint(low, high + 1, (count,), generator=torch.Generator().manual_seed(2))
    raw = molecule_raw(args.molhiv_root, int(sizes.sum()))
    channels, device, train = args.width // args.heads, args.device, args.device.type == "cuda"
    convs = [
        FlexGraphConv(args.width, channels, args.heads, mode=mode, edge_dim=EDGE_DIM,
                      backend="flex").to(device, dtype)
        for mode in ("local", "global")
    ]  # fmt: skip
    before = {group: dict(values) for group, values in counters.items()}
    compile_batches, batch_s, start, first = [], [], time.perf_counter(), 0
    for index, size in enumerate(sizes.tolist()):
        if time.perf_counter() - start > 2 * args.case_seconds:
            break  # a loop that recompiles every batch: report the batches done
        edge_index, batch = (t.to(device) for t in molecule_batch(raw, first, first + size))
        first += size
        x = torch.randn(batch.numel(), args.width, device=device, dtype=dtype)
        edge_attr = torch.randn(edge_index.size(1), EDGE_DIM, device=device, dtype=dtype)
        graphs, began = counters["stats"]["unique_graphs"], time.perf_counter()
        with torch.set_grad_enabled(train):
            out = sum(conv(x.requires_grad_(train), edge_index, edge_attr, batch).sum()
                      for conv in convs)  # fmt: skip
            if train:
                out.backward()
        sync(device)
        batch_s.append(time.perf_counter() - began)
        if counters["stats"]["unique_graphs"] > graphs:
            compile_batches.append(index)
    diff = {
        f"{group}.{key}": value - before.get(group, {}).get(key, 0)
        for group in ("frames", "stats", "aot_autograd")
        for key, value in counters[group].items()
    }
    steady = [t for i, t in enumerate(batch_s) if i not in compile_batches]
    return {
        "batches": len(batch_s), "compiles": diff.get("stats.unique_graphs", 0),
        "compile_batches": compile_batches, "dynamo_counters": diff,
        "first_call_s": batch_s[0], "total_s": sum(batch_s),
        "steady_batch_ms": statistics.median(steady) * 1e3 if steady else None,
        "pass": "fwd+bwd" if train else "fwd",
    }  # fmt: skip


# ------------------------------------------------------------------------------ floors, ratios
def hardware_rates(args) -> dict:
    """Measured copy bandwidth (bytes/s; a ``clone`` reads and writes each byte) and matmul rate
    (FLOP/s of ``torch.mm``) per dtype, best of 10: the denominators of the floors."""
    numel, dim = (2**22, 512) if args.smoke else (2**28, 8192)
    big = torch.empty(numel, device=args.device)
    copy_s = min(iteration_ms(big.clone, args.device, 10)) / 1e3
    rates = {}
    for name in args.dtypes:
        a = torch.randn(dim, dim, device=args.device, dtype=getattr(torch, name))
        a.mm(a)
        rates[name] = 2 * dim**3 / (min(iteration_ms(lambda a=a: a.mm(a), args.device, 10)) / 1e3)
    return dict(copy_bytes_per_s=2 * numel * 4 / copy_s, matmul_flop_per_s=rates)


def floor_fields(record: dict, env: dict) -> dict:
    """Hardware floor of a case. Bytes: features, weights and outputs (and in backward their
    gradients) once, edge indices (and ``+edge`` features) once per pass, over the copy
    bandwidth. FLOPs: q/k/v projections + QKᵀ and AV over the allowed pairs, backward as 2×
    forward, over the matmul rate. ``floor_ms`` is the larger; ``x_floor`` = measured / floor."""
    n, e, c, train = record["nodes"], record["edges"], env["width"], record["pass"] == "fwd+bwd"
    elt = torch.empty(0, dtype=getattr(torch, record["dtype"])).element_size()
    weights, index = 4 * c * c + 4 * c, 16 * e
    features = elt * e * EDGE_DIM if "+edge" in record["layer"] else 0
    moved = elt * (2 * n * c + weights) + index + features
    if train:
        moved += elt * (3 * n * c + 2 * weights) + index + 2 * features
    flops = (6 * n * c * c + 4 * record["pairs"] * c) * (3 if train else 1)
    bytes_ms = moved / env["copy_bytes_per_s"] * 1e3
    flops_ms = flops / env["matmul_flop_per_s"][record["dtype"]] * 1e3
    floor = max(bytes_ms, flops_ms)
    return dict(floor_bytes_ms=bytes_ms, floor_flops_ms=flops_ms, floor_ms=floor,
                x_floor=record["ms"] / floor)  # fmt: skip


def add_ratios(records: list[dict]) -> None:
    """Ours ÷ each peer of the same workload, dtype and scope (one run), and ours' structure
    build ÷ the naive ``create_block_mask``."""
    done = [r for r in records if r["status"] == "ok" and "ms" in r]
    for ours in (r for r in done if r["kind"] == "ours"):
        peers = [
            r for r in done
            if r["kind"] == "peer" and r["scope"] == ours["scope"]
            and (r["workload"], r["dtype"]) == (ours["workload"], ours["dtype"])
        ]  # fmt: skip
        ours["ratio"] = {peer["layer"]: ours["ms"] / peer["ms"] for peer in peers}
        for peer in peers:
            if "build_ms" in peer and "build_ms" in ours:
                ours["build_ratio_vs_create_block_mask"] = ours["build_ms"] / peer["build_ms"]


def markdown(records: list[dict]) -> str:
    """One table line per case."""
    fmt = lambda value, spec: "" if value is None else format(value, spec)  # noqa: E731
    lines = [
        "| workload | layer | dtype | ms fwd+bwd | peak MB | build ms | rel err | × floor"
        " | ratio to peers | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in records:
        ratios = ", ".join(f"{peer} {ratio:.2f}×" for peer, ratio in r.get("ratio", {}).items())
        note = (r.get("reason") or r.get("error") or "").split("\n")[0][:160]
        if r["layer"] == "recompiles" and r["status"] == "ok":
            note = f"{r['compiles']} compiled graphs in {r['batches']} batches (at batches "
            note += f"{r['compile_batches']}), steady {fmt(r['steady_batch_ms'], '.1f')} ms/batch"
        elif r.get("pass") == "fwd":
            note = "forward only"
        lines.append(
            f"| {r['workload']} | {r['layer']} | {r['dtype']} | {fmt(r.get('ms'), '.3f')}"
            f" | {fmt(r.get('peak_mb'), '.0f')} | {fmt(r.get('build_ms'), '.2f')}"
            f" | {fmt(r.get('rel_err_out'), '.1e')} | {fmt(r.get('x_floor'), '.1f')}"
            f" | {ratios} | {r['status']}{': ' + note if note else ''} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (SIGALRM)."""

    def expire(signum, frame):
        raise TimeoutError(f"case cut after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Run:
    """The records of one run, its time budget, and the JSON rewritten after every case."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.deadline = args, time.monotonic() + args.max_seconds
        self.records: list[dict] = []
        self.lost: str | None = None  # set once the CUDA context is lost (illegal memory access)
        cuda = args.device.type == "cuda"
        self.env = dict(
            torch=torch.__version__, torch_geometric=torch_geometric.__version__,
            cuda=torch.version.cuda, device=torch.cuda.get_device_name() if cuda else "cpu",
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            commit=git_commit(), argv=sys.argv[1:], smoke=args.smoke, width=args.width,
            heads=args.heads, block_size=args.block_size, edge_dim=EDGE_DIM,
            allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            recompile_limit=getattr(torch._dynamo.config, "recompile_limit", None),
            **hardware_rates(args),
        )  # fmt: skip

    def selected(self, case_id: str) -> bool:
        return any(fnmatch.fnmatch(case_id, pattern) for pattern in self.args.cases)

    def attempt(self, record: dict, body: Callable[[], dict]) -> None:
        """Run one case unless filtered out or out of time; record its fields or its error."""
        case_id = f"{record['workload']}/{record['layer']}/{record['dtype']}"
        if not self.selected(case_id):
            return
        remaining = self.deadline - time.monotonic()
        if self.lost or remaining <= 0:
            record.update(status="skipped", reason=self.lost or "--max-seconds budget spent")
        else:
            try:
                with time_limit(min(4 * self.args.case_seconds, remaining + GRACE_S)):
                    record.update(body(), status="ok")
            except Skip as reason:
                record.update(status="skipped", reason=str(reason))
            except Exception as error:  # recorded, never fatal: the next case runs
                record.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
                try:
                    sync(self.args.device)
                except Exception as lost:
                    self.lost = f"CUDA context lost in {case_id}: {lost}"[:500]
            gc.collect()
            if self.args.device.type == "cuda" and not self.lost:
                torch.cuda.empty_cache()
        self.records.append(record)
        elapsed = self.args.max_seconds - (self.deadline - time.monotonic())
        ms = f"{record['ms']:.3f} ms" if "ms" in record else ""
        print(f"[{elapsed:6.1f} s] {case_id}: {record['status']} {ms}", file=sys.stderr)
        self.flush()

    def flush(self) -> None:
        add_ratios(self.records)
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"environment": self.env, "records": self.records}, indent=1))
        os.replace(tmp, self.args.out)

    def workload(self, name: str, build: Callable[[], Graph]) -> None:
        """Every selected layer × dtype on one workload (built only if a case is selected)."""
        cases = [(l, d) for d in self.args.dtypes for l in LOCAL_LAYERS + GLOBAL_LAYERS]  # noqa: E741
        if not any(self.selected(f"{name}/{layer}/{dtype}") for layer, dtype in cases):
            return
        try:  # past the budget every case is recorded as skipped: no need to build
            graph, failure = build() if time.monotonic() < self.deadline else None, None
        except Exception as error:
            graph, failure = None, f"workload not built: {type(error).__name__}: {error}"[:500]
        for layer, dtype in cases:
            scope = "global" if layer in GLOBAL_LAYERS else "local"
            one_graph = graph is not None and graph.batch is None
            if (scope == "global" and one_graph) or (layer.endswith("+rcm") and not one_graph):
                continue  # global attention and packing for batches, rcm for one large graph
            record = dict(workload=name, layer=layer, dtype=dtype, scope=scope,
                          kind="ours" if layer.startswith("ours") else "peer")  # fmt: skip
            record.update(graph.sizes(scope) if graph is not None else {})

            def body(layer: str = layer, dtype: str = dtype, record: dict = record) -> dict:
                if graph is None:
                    raise Skip(failure)
                fields = run_case(layer, graph, getattr(torch, dtype), self.args)
                return {**fields, **floor_fields({**record, **fields}, self.env)}

            self.attempt(record, body)

    def recompiles(self) -> None:
        """The recompilation case, in bf16 on GPU (the training dtype), float32 on CPU."""
        dtype = torch.bfloat16 if self.args.device.type == "cuda" else torch.float32
        record = dict(workload="molhiv-batches", layer="recompiles", scope="local+global",
                      dtype=str(dtype).removeprefix("torch."), kind="ours")  # fmt: skip
        self.attempt(record, lambda: run_recompiles(self.args, dtype))


def plot(records: list[dict], path: Path) -> Path:
    """One panel per workload and scope with at least two layers that ran: ms forward+backward
    of each, one bar per dtype, labelled with its value."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    done = [r for r in records if r["status"] == "ok" and "ms" in r and r["layer"] != "recompiles"]
    panels = sorted({(r["workload"], r["scope"]) for r in done})
    panels = [
        p for p in panels if len({r["layer"] for r in done if (r["workload"], r["scope"]) == p}) > 1
    ]
    if not panels:
        raise ValueError("no workload has two timed layers to compare")
    dtypes = sorted({r["dtype"] for r in done})
    fig = Figure(figsize=(11, 2.2 + 1.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (workload, scope) in zip(axes, panels, strict=True):
        mine = [r for r in done if (r["workload"], r["scope"]) == (workload, scope)]
        layers = list(dict.fromkeys(r["layer"] for r in mine))
        height = 0.8 / len(dtypes)
        for i, dtype in enumerate(dtypes):
            ms = {r["layer"]: r["ms"] for r in mine if r["dtype"] == dtype}
            rows = [j for j, layer in enumerate(layers) if layer in ms]
            bars = ax.barh([j + i * height for j in rows], [ms[layers[j]] for j in rows], height,
                           label=dtype, color=f"C{i}")  # fmt: skip
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_yticks([j + height * (len(dtypes) - 1) / 2 for j in range(len(layers))], layers)
        ax.invert_yaxis()
        ax.margins(x=0.08)
        ax.set_title(f"{workload}, {scope} attention", fontsize=10)
    axes[-1].set_xlabel("ms, forward + backward (median)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny sizes on CPU, flex forward only")
    add("--out", type=Path, default=ROOT / "benchmarks/results/conv_h200.json")
    add("--dtypes", nargs="+", choices=["bfloat16", "float16", "float32"],
        help="default: bfloat16 float32 (smoke: float32)")  # fmt: skip
    add("--cases", nargs="+", help="fnmatch patterns of workload/layer/dtype (default: all)")
    add("--max-seconds", type=float, default=420.0, help="skip the cases after this budget")
    add("--case-seconds", type=float, default=30.0, help="fewer iterations past it; cut at 4×")
    add("--molhiv-root", type=Path, default=ROOT / "shared_data/ogbg_molhiv")
    add("--width", type=int, default=256)
    add("--heads", type=int, default=8)
    add("--block-size", type=int, default=128)
    add("--warmup", type=int, default=3, help="calls before timing, the compiling one included")
    add("--iters", type=int, default=10)
    add("--profile", type=int, default=0, metavar="N",
        help="after timing a case, N steps under torch.profiler: its top kernels")  # fmt: skip
    add("--report", type=Path, help="only print the table of an existing JSON")
    add("--plot", type=Path, help="with --report: also draw its timings into this PNG")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.heads, args.warmup, args.iters = 64, 4, 1, 2
    args.dtypes = args.dtypes or (["float32"] if args.smoke else ["bfloat16", "float32"])
    args.cases = args.cases or (SMOKE_CASES if args.smoke else ["*"])
    args.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        records = json.loads(args.report.read_text())["records"]
        print(markdown(records))
        if args.plot:
            plot(records, args.plot)
        return
    if args.smoke:
        torch.set_num_threads(1)  # on a shared CPU, OpenMP spinning makes tiny cases 100× slower
    # every case adds entries to the one compiled flex_attention; past the default limit of 8
    # dynamo would fall back to eager FlexAttention, which materialises N×N scores
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    run = Run(args)
    gc.freeze()  # the per-case gc.collect() then scans only what the cases allocate
    for name, build in workload_plan(args):
        if build is None:
            run.recompiles()
        else:
            run.workload(name, build)
    print(markdown(run.records))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
