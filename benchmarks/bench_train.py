"""End-to-end training throughput on an OGB graph dataset: our ``GraphTransformer`` against
the same-size model built from PyG's ``GPSConv`` + ``TransformerConv``, on one device.

Why: ``bench_conv.py`` times one layer on prebuilt structures; a user feels whole training
steps. Here every model trains on the same shuffled train split (same batches, width, layers,
heads, dtype, AdamW) and a step is all of it: collating the batch (``DataLoader``), moving it
to the device, building our attention structures, forward, loss, backward and the optimizer.

Models:

- ``ours-both``: ``GraphTransformer(attention='both')``, local + global ``FlexGraphConv`` per
  block, summed (GPS-like; global attention with edge biases and hop-distance gates).
- ``gps``: PyG's GPS: ``layers`` × ``GPSConv(TransformerConv, attn_type='multihead')`` with
  GPSConv's defaults (batch norm, ReLU MLP), mean pool, linear readout.
- ``ours-local``: ``GraphTransformer(attention='local')``.
- ``transformerconv``: the local-only twin of ``ours-local``, block for block: pre-norm
  ``TransformerConv`` + residual, pre-norm FFN (2 × width, GELU) + residual, final LayerNorm.

All four share the node and edge encoders (OGB's atom/bond embeddings for molecules; edge
features of ``EDGE_CHANNELS``). Per model: ``--warmup-steps`` untimed steps (they cover
``torch.compile`` of FlexAttention), then one timed pass over the train split (or
``--max-steps``) between two device syncs. The JSON holds graphs/s (end to end, and without the
time spent waiting for the loader), ms/step (mean and median), peak memory of the timed pass,
dynamo graphs compiled in warm-up and timed pass, parameter counts, and the throughput ratios
ours-both ÷ gps and ours-local ÷ transformerconv; for ours also the backend ``'auto'`` picked
per attention mode (on CUDA: message passing for sparse local blocks, FlexAttention for global
ones; always message passing on CPU). A model that fails (out of memory, compile
error) is recorded with its error and the next one runs; the JSON is rewritten after each.

``--profile N``: after a model's timed pass (never inside it), N more steps under
``torch.profiler`` with ranges around the phases of a step (loader, ``batch_to_device``,
``forward``, ``loss``, ``backward``, ``optimizer``) and, inside the forward, around our structure
build (``structures``) and each model's attention by kind (``attention_local``,
``attention_global``), so ours and the peers compare branch for branch. The record's
``profile`` holds, per step: synced wall time, CPU and device ms per range, the top device
kernels and self-CPU ops, device busy time (summed kernel time) against wall time (a small
fraction: the step is host-bound, waiting on launches or syncs), and the synchronizations and
device-to-host copies. Why: ``ours-both`` took 2.6× GPS's step time on an H200 while our
global layer alone is a few ms; one short GPU call must tell where the rest goes.
``--trace-dir DIR`` also writes each model's Chrome trace of those steps (``DIR/<model>.json.gz``).

Usage (from the repository root; ``--root`` holds ``ogbg_molhiv/`` in OGB's layout)::

    python benchmarks/bench_train.py --root shared_data --dtype bfloat16 \\
        --out benchmarks/results/train_h200_bf16.json
    python benchmarks/bench_train.py --root shared_data --dtype bfloat16 --profile 10 \\
        --trace-dir benchmarks/results/traces --out benchmarks/results/train_h200_profile.json
    python benchmarks/bench_train.py --smoke --out /tmp/train_smoke.json   # CPU, seconds
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch._dynamo
import torch_geometric
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GPSConv, TransformerConv, global_mean_pool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pyg_mup.data import OGBData, load_dataset  # noqa: E402
from pyg_mup.models import GraphTransformer  # noqa: E402
from pyg_mup.models.encoders import FeatureEncoder, FeatureSpec, feature_specs  # noqa: E402
from pyg_mup.mup import set_base_shapes  # noqa: E402
from pyg_mup.train.objective import Objective  # noqa: E402

EDGE_CHANNELS = 32  # GraphTransformer's default edge_channels, shared by every model
MODELS = ("ours-both", "gps", "ours-local", "transformerconv")
PEERS = {"ours-both": "gps", "ours-local": "transformerconv"}
SMOKE_DATASET = "ogbg-molesol"  # shipped with the package: the smoke run needs no data folder
# --profile's ranges: the phases of a step, then the calls inside the forward
RANGES = (
    "loader", "batch_to_device", "forward", "loss", "backward", "optimizer",
    "structures", "attention_local", "attention_global",
)  # fmt: skip
# runtime calls that block the host until the device catches up (cudaMemcpy: the blocking copy)
SYNCS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
TOP = 15  # kernels and CPU ops listed per profile


# -------------------------------------------------------------------------------------- models
class GPS(nn.Module):
    """PyG's GPS baseline: encoders → ``layers`` × ``GPSConv`` (local ``TransformerConv`` with
    edge features + global ``nn.MultiheadAttention``, GPSConv's defaults otherwise) → mean pool
    → linear readout. Shapes as :class:`~pyg_mup.models.GraphTransformer`."""

    def __init__(
        self,
        out_channels: int,
        width: int,
        layers: int,
        heads: int,
        node_features: FeatureSpec,
        edge_features: FeatureSpec,
    ) -> None:
        super().__init__()
        self.node_encoder = FeatureEncoder(node_features, width)
        self.edge_encoder = FeatureEncoder(edge_features, EDGE_CHANNELS)
        self.convs = nn.ModuleList(
            GPSConv(
                width,
                TransformerConv(width, width // heads, heads=heads, edge_dim=EDGE_CHANNELS),
                heads=heads,
                attn_type="multihead",
                dropout=0.0,
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(width, out_channels)

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int
    ) -> Tensor:
        h, e = self.node_encoder(x), self.edge_encoder(edge_attr)
        for conv in self.convs:
            h = conv(h, edge_index, batch, edge_attr=e)  # GPSConv passes edge_attr to the conv
        return self.head(global_mean_pool(h, batch, size=num_graphs))


class LocalBlock(nn.Module):
    """Our ``TransformerBlock(attention='local')`` with PyG's ``TransformerConv`` as the
    attention: ``h ← h + Conv(LN(h))``, ``h ← h + FFN(LN(h))``; no root weight (the residual
    is the skip path), as in ours."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.conv = TransformerConv(
            width, width // heads, heads=heads, edge_dim=EDGE_CHANNELS, root_weight=False
        )
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        h = h + self.conv(self.norm_attn(h), edge_index, edge_attr)
        return h + self.ffn(self.norm_ffn(h))


class LocalTransformer(nn.Module):
    """The ``transformerconv`` model: encoders → ``layers`` × :class:`LocalBlock` → LayerNorm →
    mean pool → linear readout, the structure of ``GraphTransformer(attention='local')``."""

    def __init__(
        self,
        out_channels: int,
        width: int,
        layers: int,
        heads: int,
        node_features: FeatureSpec,
        edge_features: FeatureSpec,
    ) -> None:
        super().__init__()
        self.node_encoder = FeatureEncoder(node_features, width)
        self.edge_encoder = FeatureEncoder(edge_features, EDGE_CHANNELS)
        self.blocks = nn.ModuleList(LocalBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_channels)

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int
    ) -> Tensor:
        h, e = self.node_encoder(x), self.edge_encoder(edge_attr)
        for block in self.blocks:
            h = block(h, edge_index, e)
        return self.head(global_mean_pool(self.norm(h), batch, size=num_graphs))


def build_model(name: str, out_channels: int, specs: tuple, args: argparse.Namespace) -> nn.Module:
    """One of :data:`MODELS` at the run's width, layers and heads (float32 weights)."""
    sizes = dict(width=args.width, layers=args.layers, heads=args.heads)
    if name.startswith("ours-"):
        model = GraphTransformer(
            out_channels, **sizes, attention=name.removeprefix("ours-"), node_features=specs[0],
            edge_features=specs[1], edge_channels=EDGE_CHANNELS,
        )  # fmt: skip
        return set_base_shapes(model, None)  # standard parametrization: MuReadout needs it
    peer = {"gps": GPS, "transformerconv": LocalTransformer}[name]
    return peer(out_channels, **sizes, node_features=specs[0], edge_features=specs[1])


def our_backends(model: nn.Module, batch: Batch, device: torch.device) -> dict:
    """Per attention mode of ours, the backend ``'auto'`` picks on this batch and the block
    density that decides it (message passing for sparse local blocks, FlexAttention else)."""
    batch = batch.to(device)
    structures = model.structures(batch.edge_index, batch.num_nodes, batch.batch)
    conv = {mode: model.blocks[0].attn[mode] for mode in structures}
    probe = torch.empty(0, device=device)
    return {
        mode: dict(
            backend=conv[mode]._resolve_backend(probe, structure),
            block_density=structure.block_density,
        )
        for mode, structure in structures.items()
    }


# ---------------------------------------------------------------------------------------- data
def load(args: argparse.Namespace) -> OGBData:
    """The dataset through :func:`pyg_mup.data.load_dataset`: the real ``ogb`` path."""
    return load_dataset(args.dataset, args.root, args.cache_dir)


def train_loader(data: OGBData, args: argparse.Namespace) -> DataLoader:
    """The train split, shuffled by a generator seeded with ``--seed``: every model (and every
    pass) sees the same batches in the same order."""
    train = data.dataset[data.split_idx["train"]]
    generator = torch.Generator().manual_seed(args.seed)
    return DataLoader(
        train, args.batch_size, shuffle=True, generator=generator, num_workers=args.num_workers
    )


# -------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process (as ``bench_conv.py`` counts them)."""
    return counters["stats"]["unique_graphs"]


def run_steps(
    step: Callable[[Batch], Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    steps: int | None,
) -> dict:
    """Up to ``steps`` training steps (``None``: all batches) between two device syncs: wall
    seconds, graphs, time waiting for the loader, per-step ms (CUDA events on GPU), last loss."""
    iterator = iter(batches)  # loader workers, if any, start before the clock
    cuda = device.type == "cuda"
    marks, graphs, loader_s, loss = [], 0, 0.0, None
    sync(device)
    start = time.perf_counter()
    while steps is None or len(marks) < steps:
        began = time.perf_counter()
        batch = next(iterator, None)
        loader_s += time.perf_counter() - began
        if batch is None:
            break
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            loss = step(batch)
            end.record()
            marks.append((begin, end))
        else:
            began = time.perf_counter()
            loss = step(batch)
            marks.append((time.perf_counter() - began) * 1e3)
        graphs += batch.num_graphs
    sync(device)
    seconds = time.perf_counter() - start
    step_ms = [b.elapsed_time(e) for b, e in marks] if cuda else marks
    last = float(loss) if loss is not None else None
    return dict(seconds=seconds, graphs=graphs, loader_s=loader_s, step_ms=step_ms, loss=last)


# ------------------------------------------------------------------------------------ profiling
def no_range(name: str) -> contextlib.AbstractContextManager:
    """The timed steps' stand-in for ``record_function``: no range, no profiler cost."""
    return contextlib.nullcontext()


def profiled_calls(model: nn.Module) -> list[tuple[object, str, str]]:
    """``(owner, attribute, range)`` for the calls a profile marks inside the forward: our
    structure build and, in every model, attention by kind (ours: ``FlexGraphConv`` per mode;
    GPS: ``TransformerConv`` local, ``MultiheadAttention`` global)."""
    if isinstance(model, GraphTransformer):
        calls = [(model, "structures", "structures")]
        for block in model.blocks:
            calls += [(conv, "forward", f"attention_{mode}") for mode, conv in block.attn.items()]
        return calls
    if isinstance(model, GPS):
        return [(conv.conv, "forward", "attention_local") for conv in model.convs] + [
            (conv.attn, "forward", "attention_global") for conv in model.convs
        ]
    return [(block.conv, "forward", "attention_local") for block in model.blocks]


@contextlib.contextmanager
def ranges_around(calls: list[tuple[object, str, str]]) -> Iterator[None]:
    """Shadow each ``owner.attribute`` with an instance attribute that calls it inside a
    ``record_function`` range, and remove the shadows on exit: the ranges reach into
    ``GraphTransformer.forward`` without editing ``pyg_mup``, and only the profiled steps pay
    for them."""

    def ranged(call: Callable, name: str) -> Callable:
        def wrapper(*args, **kwargs):
            with record_function(name):
                return call(*args, **kwargs)

        return wrapper

    for owner, attribute, name in calls:
        setattr(owner, attribute, ranged(getattr(owner, attribute), name))
    try:
        yield
    finally:
        for owner, attribute, _ in calls:
            delattr(owner, attribute)


def profile_steps(
    step: Callable[..., Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    steps: int,
    calls: list[tuple[object, str, str]],
    trace: Path | None,
) -> dict:
    """Up to ``steps`` training steps under ``torch.profiler`` (CPU, plus CUDA on a GPU), each
    phase in a range; the Chrome trace goes to ``trace`` if given. Returns the ``profile``
    record: the synced wall time of the steps (profiler overhead included: compare it with the
    timed median), dynamo compiles during them (a compile would swamp the profile), and
    :func:`summarize`'s per-step breakdown."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    iterator, done, before = iter(batches), 0, compiled_graphs()
    with ranges_around(calls), torch.profiler.profile(activities=activities) as prof:
        sync(device)
        start = time.perf_counter()
        while done < steps:
            with record_function("loader"):
                batch = next(iterator, None)
            if batch is None:
                break
            step(batch, record_function)
            done += 1
        sync(device)
        wall_s = time.perf_counter() - start
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))  # gzipped: '.gz' (tens of MB as plain JSON)
    wall_ms = wall_s * 1e3 / max(done, 1)
    profile = dict(steps=done, wall_ms_per_step=wall_ms, compiles=compiled_graphs() - before)
    profile.update(summarize(prof.events(), max(done, 1), cuda))
    busy = profile["device_busy_ms_per_step"]
    profile["device_busy_fraction"] = busy / wall_ms if busy is not None else None
    return profile


def summarize(events: list, steps: int, cuda: bool) -> dict:
    """Per step, from the profiler's events: for each range in :data:`RANGES` that ran, its
    calls, CPU ms (wall time on the host between its ends) and device ms (kernels launched
    while it was open, on any thread: backward runs on autograd's device thread); the
    :data:`TOP` device kernels by total time and CPU ops by self time; and on CUDA the device
    busy time (all kernel, copy and memset time summed), device ops, synchronizing runtime
    calls (:data:`SYNCS`) with the host time blocked in them, and device-to-host copies. Device
    fields are ``None`` on CPU, where no device activity is profiled."""
    per_step = lambda us: us / 1e3 / steps  # noqa: E731 (profiler µs in total → ms per step)
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    # the device side of a record_function range mirrors it as an annotation: not a kernel
    device = [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]

    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for event in host:
        if event.name in RANGES:
            spans[event.name].append((event.time_range.start, event.time_range.end))
    launched: dict[str, float] = defaultdict(float)  # µs of kernels launched inside each range
    for intervals in spans.values():
        intervals.sort()
    starts = {name: [start for start, _ in intervals] for name, intervals in spans.items()}
    for event in host:  # an op owns the kernels it launched (its range's annotation excluded)
        kernel_us = sum(k.duration for k in event.kernels if k.name != event.name)
        if not kernel_us:
            continue
        for name, intervals in spans.items():
            i = bisect.bisect_right(starts[name], event.time_range.start) - 1
            if i >= 0 and event.time_range.start <= intervals[i][1]:
                launched[name] += kernel_us
    ranges = {
        name: dict(
            calls_per_step=len(spans[name]) / steps,
            cpu_ms_per_step=per_step(sum(end - start for start, end in spans[name])),
            device_ms_per_step=per_step(launched[name]) if cuda else None,
        )
        for name in RANGES
        if name in spans
    }

    def top(totals: dict[str, list[float]], field: str) -> list[dict]:
        ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:TOP]
        return [
            {"name": name[:120], field: per_step(us), "calls_per_step": calls / steps}
            for name, (us, calls) in ranked
        ]

    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in device:
        kernels[event.name][0] += event.time_range.elapsed_us()
        kernels[event.name][1] += 1
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in host:
        ops[event.name][0] += event.self_cpu_time_total
        ops[event.name][1] += 1
    syncs = [e for e in host if e.name in SYNCS]
    dtoh = [e for e in device if e.name.startswith("Memcpy DtoH")]
    return dict(
        ranges=ranges,
        top_device_kernels=top(kernels, "ms_per_step"),
        top_cpu_ops=top(ops, "self_cpu_ms_per_step"),
        device_busy_ms_per_step=per_step(sum(k[0] for k in kernels.values())) if cuda else None,
        device_ops_per_step=len(device) / steps if cuda else None,
        syncs_per_step=len(syncs) / steps if cuda else None,
        sync_ms_per_step=per_step(sum(e.time_range.elapsed_us() for e in syncs)) if cuda else None,
        dtoh_copies_per_step=len(dtoh) / steps if cuda else None,
    )


def benchmark_model(name: str, data: OGBData, args: argparse.Namespace) -> dict:
    """Build, warm up and time one model; returns the fields of its record."""
    device, cuda = args.device, args.device.type == "cuda"
    example = data.dataset[0]
    specs = feature_specs(args.dataset, example.x, example.edge_attr)
    torch.manual_seed(args.seed)
    model = build_model(name, data.task.out_channels, specs, args).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    objective = Objective(data.task, data.dataset.y[data.split_idx["train"]])
    bf16 = args.dtype == "bfloat16"

    def step(
        batch: Batch, phase: Callable[[str], contextlib.AbstractContextManager] = no_range
    ) -> Tensor:
        """One training step; ``phase`` opens a named range around each part (``--profile``
        passes ``record_function``; the timed passes keep the no-op default). Zeroing the
        gradients stays before the backward, as timed: ``optimizer`` is two ranges a step."""
        with phase("batch_to_device"):
            batch = batch.to(device)
        with phase("forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
        with phase("loss"):
            loss_sum, count = objective.loss_terms(pred.float(), batch.y)
            loss = loss_sum / count.clamp(min=1)
        with phase("optimizer"):
            optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()
        return loss.detach()

    loader = train_loader(data, args)
    record = dict(params=sum(p.numel() for p in model.parameters()), width=model.head.in_features)
    if name.startswith("ours-"):  # a loader of its own: the timed order stays every model's
        record["backends"] = our_backends(model, next(iter(train_loader(data, args))), device)
    before = compiled_graphs()
    warmup = run_steps(step, loader, device, args.warmup_steps)
    record.update(warmup_s=warmup["seconds"], compiles_warmup=compiled_graphs() - before)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = compiled_graphs()
    timed = run_steps(step, loader, device, args.max_steps)
    steps, seconds = len(timed["step_ms"]), timed["seconds"]
    record.update(
        steps=steps, graphs=timed["graphs"], epoch_s=seconds,
        graphs_per_s=timed["graphs"] / seconds,
        graphs_per_s_excl_loader=timed["graphs"] / max(seconds - timed["loader_s"], 1e-9),
        loader_s=timed["loader_s"], ms_per_step=seconds / max(steps, 1) * 1e3,
        median_step_ms=statistics.median(timed["step_ms"]) if steps else None,
        compiles_timed=compiled_graphs() - before, final_loss=timed["loss"],
        peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    )  # fmt: skip
    if args.profile:
        trace = args.trace_dir / f"{name}.json.gz" if args.trace_dir else None
        try:  # a diagnostic: its failure must not cost the timings above
            record["profile"] = profile_steps(
                step, loader, device, args.profile, profiled_calls(model), trace
            )
        except Exception as error:
            record["profile"] = dict(error=f"{type(error).__name__}: {error}"[:2000])
    return record


# ------------------------------------------------------------------------------------- results
def add_ratios(records: list[dict]) -> dict:
    """``{'ours-both/gps': x, ...}``: ours' graphs/s over its peer's (> 1: ours is faster),
    end to end; each ours record also gets ``ratio_to_peer`` and, from the rates without the
    loader's time, ``ratio_to_peer_excl_loader``."""
    done = {r["model"]: r for r in records if r["status"] == "ok"}
    ratios = {}
    for ours, peer in PEERS.items():
        if ours in done and peer in done:
            mine, theirs = done[ours], done[peer]
            ratio = mine["graphs_per_s"] / theirs["graphs_per_s"]
            mine["ratio_to_peer"] = ratios[f"{ours}/{peer}"] = ratio
            if "graphs_per_s_excl_loader" in mine and "graphs_per_s_excl_loader" in theirs:
                rate = "graphs_per_s_excl_loader"
                mine["ratio_to_peer_excl_loader"] = mine[rate] / theirs[rate]
    return ratios


def markdown(records: list[dict]) -> str:
    """One table line per model."""
    fmt = lambda value, spec: "" if value is None else format(value, spec)  # noqa: E731
    lines = [
        "| model | params | graphs/s | excl. loader | ms/step | median ms | peak MB"
        " | compiles warm-up/timed | vs peer | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in records:
        peer = f"{r['ratio_to_peer']:.2f}× {PEERS[r['model']]}" if "ratio_to_peer" in r else ""
        compiles = f"{r['compiles_warmup']}/{r['compiles_timed']}" if "compiles_timed" in r else ""
        error = (": " + r["error"].split("\n")[0][:120]) if "error" in r else ""
        lines.append(
            f"| {r['model']} | {fmt(r.get('params'), ',')} | {fmt(r.get('graphs_per_s'), '.0f')}"
            f" | {fmt(r.get('graphs_per_s_excl_loader'), '.0f')}"
            f" | {fmt(r.get('ms_per_step'), '.2f')} | {fmt(r.get('median_step_ms'), '.2f')}"
            f" | {fmt(r.get('peak_mb'), '.0f')} | {compiles} | {peer} | {r['status']}{error} |"
        )
    return "\n".join(lines)


def profile_markdown(records: list[dict]) -> str:
    """``--profile``'s summary: per model, wall against device-busy ms per step, syncs, and
    each range's CPU/device ms per step (CPU alone without a GPU); then each model's five
    heaviest device kernels and self-CPU ops."""
    profiles = [(r["model"], r["profile"]) for r in records if "profile" in r]
    fmt = lambda value, spec: "" if value is None else format(value, spec)  # noqa: E731

    def pair(timing: dict | None) -> str:
        if timing is None:
            return ""
        device = fmt(timing["device_ms_per_step"], ".2f")
        return f"{timing['cpu_ms_per_step']:.2f}" + (f"/{device}" if device else "")

    lines = [
        "| model | wall ms | device busy ms | busy | syncs | device ops | "
        + " | ".join(RANGES) + " |",
        "|---|" + "---:|" * (5 + len(RANGES)),
    ]  # fmt: skip
    notes = []
    for model, p in profiles:
        if "error" in p:
            notes.append(f"- {model}: profile failed: {p['error'].splitlines()[0][:200]}")
            continue
        cells = [pair(p["ranges"].get(name)) for name in RANGES]
        lines.append(
            f"| {model} | {p['wall_ms_per_step']:.2f} | {fmt(p['device_busy_ms_per_step'], '.2f')}"
            f" | {fmt(p['device_busy_fraction'], '.0%')} | {fmt(p['syncs_per_step'], '.1f')}"
            f" | {fmt(p['device_ops_per_step'], '.0f')} | " + " | ".join(cells) + " |"
        )
        for title, items, field in (
            ("device kernels", p["top_device_kernels"], "ms_per_step"),
            ("self-CPU ops", p["top_cpu_ops"], "self_cpu_ms_per_step"),
        ):
            if items:
                heaviest = "; ".join(f"{i['name'][:60]} {i[field]:.2f}" for i in items[:5])
                notes.append(f"- {model} {title} (ms/step): {heaviest}")
    legend = "per step; each range: CPU ms/device ms (kernels launched inside it)"
    return "\n".join([legend, *lines, "", *notes])


def write_json(path: Path, env: dict, records: list[dict]) -> None:
    """Rewrite ``path`` atomically (a temporary file, then ``os.replace``)."""
    ratios = add_ratios(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(environment=env, ratios=ratios, records=records), indent=1))
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args: argparse.Namespace, data: OGBData) -> dict:
    import ogb

    cuda = args.device.type == "cuda"
    return dict(
        torch=torch.__version__, torch_geometric=torch_geometric.__version__,
        ogb=ogb.__version__, cuda=torch.version.cuda,
        device=torch.cuda.get_device_name(args.device) if cuda else "cpu",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(), argv=sys.argv[1:], smoke=args.smoke, dataset=args.dataset,
        train_graphs=int(data.split_idx["train"].numel()), dtype=args.dtype,
        float32_matmul_precision=torch.get_float32_matmul_precision(), width=args.width,
        layers=args.layers, heads=args.heads, edge_channels=EDGE_CHANNELS,
        batch_size=args.batch_size, lr=args.lr, optimizer="AdamW", seed=args.seed,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, num_workers=args.num_workers,
        profile_steps=args.profile,
        recompile_limit=getattr(torch._dynamo.config, "recompile_limit", None),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true",
        help=f"{SMOKE_DATASET} (shipped), CPU, width 32, 1 layer, batch 16, 4 steps")  # fmt: skip
    add("--out", type=Path, default=ROOT / "benchmarks/results/train_h200.json")
    add("--dataset", default="ogbg-molhiv", help="an ogbg-mol* dataset (atom and bond features)")
    add("--root", type=Path, default=ROOT / "shared_data",
        help="folder holding the dataset folder in OGB's layout")  # fmt: skip
    add("--cache-dir", type=Path, help="where read-only or raw-only folders are copied")
    add("--models", nargs="+", choices=MODELS, default=list(MODELS))
    add("--dtype", choices=["float32", "bfloat16"],
        help="bfloat16 (default; smoke: float32): torch.autocast around the forward pass, "
        "float32 weights")  # fmt: skip
    add("--tf32", action="store_true", help="let float32 matmuls use TF32 (default: exact)")
    add("--width", type=int, default=256)
    add("--layers", type=int, default=4)
    add("--heads", type=int, default=8)
    add("--batch-size", type=int, default=128)
    add("--lr", type=float, default=1e-4)
    add("--seed", type=int, default=0)
    add("--warmup-steps", type=int, default=20, help="untimed steps (compiles included)")
    add("--max-steps", type=int, help="timed steps (default: one pass over the split)")
    add("--num-workers", type=int, default=0, help="DataLoader workers (pyg-mup train's default)")
    add("--profile", type=int, default=0, metavar="N",
        help="after each timed pass, N steps under torch.profiler (default 0: none)")  # fmt: skip
    add("--trace-dir", type=Path, help="with --profile: write DIR/<model>.json.gz Chrome traces")
    args = parser.parse_args(argv)
    if args.trace_dir and not args.profile:
        parser.error("--trace-dir needs --profile N")
    if args.smoke:
        args.dataset, args.root = SMOKE_DATASET, None
        args.width, args.layers, args.heads, args.batch_size = 32, 1, 2, 16
        args.warmup_steps, args.max_steps = 2, 4
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    if args.width % args.heads:
        parser.error(f"--width {args.width} is not divisible by --heads {args.heads}")
    args.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # on a shared CPU, OpenMP spinning makes tiny steps slow
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    # shapes change from batch to batch: past dynamo's default limit of 8 recompiles the
    # compiled FlexAttention would fall back to eager, which materialises N×N scores
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    data = load(args)
    env, records = environment(args, data), []
    for name in args.models:
        record = dict(model=name)
        try:
            record.update(benchmark_model(name, data, args), status="ok")
        except Exception as error:  # recorded, never fatal: the next model runs
            record.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
        records.append(record)
        rate = record.get("graphs_per_s")
        rate_note = f"{rate:.0f} graphs/s" if rate and math.isfinite(rate) else ""
        print(f"{name}: {record['status']} {rate_note}", file=sys.stderr)
        write_json(args.out, env, records)
    print(markdown(records))
    if args.profile:
        print("\n" + profile_markdown(records))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
