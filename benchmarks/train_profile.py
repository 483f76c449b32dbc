"""``bench_train.py``'s looks inside a step, all outside its timed pass except the structure
clock: named ranges under ``torch.profiler`` (``--profile N``), op counts under
:class:`~pyg_mup.profiling.OpCounter` (``--count-steps N``), and the host time of the call that
builds our structures. Each wraps calls inside the model's forward by shadowing them
(:func:`shadowed`), so nothing in ``pyg_mup`` is edited and only the wrapped steps pay."""

from __future__ import annotations

import bisect
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function
from torch_geometric.data import Batch

from benchmarks.common import compiled_graphs, fmt, iteration_ms, sync, table
from benchmarks.train_models import unpack
from pyg_mup.profiling import OpCounter

Calls = list[tuple[object, str, str]]  # (owner, attribute, name) of calls to wrap
# --profile's ranges: the phases of a step, then the calls inside the forward
RANGES = (
    "loader", "batch_to_device", "forward", "loss", "backward", "optimizer",
    "structures", "attention_local", "attention_global",
)  # fmt: skip
# runtime calls that block the host until the device catches up (cudaMemcpy: the blocking copy)
SYNCS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
TOP = 15  # kernels and CPU ops listed per profile


def no_range(name: str) -> contextlib.AbstractContextManager:
    """The timed steps' stand-in for ``record_function``: no range, no profiler cost."""
    return contextlib.nullcontext()


@contextlib.contextmanager
def shadowed(calls: Calls, wrap: Callable[[Callable, str], Callable]) -> Iterator[None]:
    """Replace each ``owner.attribute`` with ``wrap(call, name)`` and restore it on exit: the
    wrappers reach into ``GraphTransformer.forward`` without editing ``pyg_mup``. An instance
    owner gets a shadowing instance attribute (removed on exit); a class owner (a static
    method such as ``GraphStructure.build``) its own attribute back. Shadows of one attribute
    must not nest."""
    saved = []
    for owner, attribute, name in calls:
        own = vars(owner).get(attribute) if isinstance(owner, type) else None
        wrapped = wrap(getattr(owner, attribute), name)
        setattr(owner, attribute, staticmethod(wrapped) if own is not None else wrapped)
        saved.append((owner, attribute, own))
    try:
        yield
    finally:
        for owner, attribute, own in reversed(saved):
            if own is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)


def around(enter: Callable[[str], contextlib.AbstractContextManager]) -> Callable:
    """A ``wrap`` for :func:`shadowed` that runs each call inside ``enter(name)``."""

    def wrap(call: Callable, name: str) -> Callable:
        def wrapper(*args, **kwargs):
            with enter(name):
                return call(*args, **kwargs)

        return wrapper

    return wrap


@contextlib.contextmanager
def clock(seconds: list[float]) -> Iterator[None]:
    """Append the wall seconds of the block to ``seconds`` (host time: on CUDA the block's
    kernels may still run after it; its syncs are inside it)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds.append(time.perf_counter() - start)


def count_ops(
    step: Callable[..., Tensor], batches: Iterable[Batch], steps: int, builds: Calls
) -> dict:
    """Up to ``steps`` training steps under :class:`OpCounter`: per step, the dispatched ops
    and the data-dependent ones (each a host sync on CUDA when its tensor is on the device),
    overall, by phase of the step, inside the ``builds`` calls (our structure build), and by
    op, plus the dynamo graphs compiled meanwhile. Why: the H200 step is host-bound, and these
    counts, unlike times, are the same on CPU and GPU (the fused AdamW keeps its step counters
    on the device: no host reads). Compiled FlexAttention runs compiled under the counter (its
    fused kernels are no dispatched ops: the profile counts kernels) and eager FlexAttention as
    one ``higher_order.flex_attention`` op plus its dense implementation's ops; the first
    counted step compiles compiled code again, once, for the counter's function mode."""
    iterator, done, step_ops, before = iter(batches), 0, OpCounter(), compiled_graphs()
    phases: defaultdict[str, OpCounter] = defaultdict(OpCounter)
    while done < steps and (batch := next(iterator, None)) is not None:
        # the builds counted inside the step only, not in a collate of the main process
        with step_ops, shadowed(builds, around(lambda name: phases[name])):
            step(batch, phases.__getitem__)  # each phase inside its own counter
        done += 1
    per_step = lambda count: count / max(done, 1)  # noqa: E731
    dependent = lambda ops: per_step(sum(ops.data_dependent.values()))  # noqa: E731
    return dict(
        steps=done, compiles=compiled_graphs() - before, ops_per_step=per_step(step_ops.total),
        data_dependent_per_step=dependent(step_ops),
        ops_per_step_by_phase={name: per_step(ops.total) for name, ops in phases.items()},
        data_dependent_per_step_by_phase={name: dependent(ops) for name, ops in phases.items()},
        data_dependent_ops={
            name: per_step(count) for name, count in step_ops.data_dependent.most_common()
        },
    )  # fmt: skip


def profile_steps(
    step: Callable[..., Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    steps: int,
    calls: Calls,
    trace: Path | None,
) -> dict:
    """Up to ``steps`` training steps under ``torch.profiler`` (CPU, plus CUDA on a GPU), each
    phase in a range (a ``structures`` range inside ``loader`` is a build in the main
    process's collate, ``--num-workers 0``); the Chrome trace goes to ``trace`` if given.
    Returns the ``profile``
    record: the synced wall time of the steps (profiler overhead included: compare it with the
    timed median), dynamo compiles during them (a compile would swamp the profile), and
    :func:`summarize`'s per-step breakdown."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    iterator, done, before = iter(batches), 0, compiled_graphs()
    profiler = torch.profiler.profile(activities=activities)
    with shadowed(calls, around(record_function)), profiler as prof:
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


def cuda_graph_replay(
    step: Callable[..., Tensor], item: object, device: torch.device, iters: int
) -> dict:
    """What CUDA graphs could give the step: one batch's step timed eager, then captured as one
    CUDA graph and replayed, median ms of ``iters`` each. The replay launches the captured
    kernels with no host work per op, so it is the step's ceiling, not a training loop: a graph
    replays fixed shapes and addresses, and batches change node counts, so training with graphs
    needs every batch tensor, structures included, padded to a few bucket sizes first. ``step``
    must use a capturable optimizer; a step with a host sync fails the capture (the error names
    the op)."""
    if device.type != "cuda":
        return dict(error="CUDA graphs need a CUDA device")
    item = item.to(device)
    graphs = unpack(item)[0].num_graphs
    side = torch.cuda.Stream()  # warm-up off the default stream, as graph capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(item)
    torch.cuda.current_stream().wait_stream(side)
    eager_ms = statistics.median(iteration_ms(lambda: step(item), device, iters))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(item)
    graph_ms = statistics.median(iteration_ms(graph.replay, device, iters))
    return dict(batch_graphs=graphs, eager_ms=eager_ms, graph_ms=graph_ms,
                speedup=eager_ms / graph_ms, graphs_per_s=graphs / graph_ms * 1e3)  # fmt: skip


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


def profile_markdown(records: list[dict]) -> str:
    """``--profile``'s summary: per model, wall against device-busy ms per step, syncs, and
    each range's CPU/device ms per step (CPU alone without a GPU); then each model's five
    heaviest device kernels and self-CPU ops."""
    profiles = [(r["model"], r["profile"]) for r in records if "profile" in r]

    def pair(timing: dict | None) -> str:
        if timing is None:
            return ""
        device = fmt(timing["device_ms_per_step"], ".2f")
        return f"{timing['cpu_ms_per_step']:.2f}" + (f"/{device}" if device else "")

    columns = ["model", "wall ms:", "device busy ms:", "busy:", "syncs:", "device ops:"]
    rows, notes = [], []
    for model, p in profiles:
        if "error" in p:
            notes.append(f"- {model}: profile failed: {p['error'].splitlines()[0][:200]}")
            continue
        cells = [pair(p["ranges"].get(name)) for name in RANGES]
        rows.append([
            model, f"{p['wall_ms_per_step']:.2f}", fmt(p["device_busy_ms_per_step"], ".2f"),
            fmt(p["device_busy_fraction"], ".0%"), fmt(p["syncs_per_step"], ".1f"),
            fmt(p["device_ops_per_step"], ".0f"), *cells,
        ])  # fmt: skip
        for title, items, field in (
            ("device kernels", p["top_device_kernels"], "ms_per_step"),
            ("self-CPU ops", p["top_cpu_ops"], "self_cpu_ms_per_step"),
        ):
            if items:
                heaviest = "; ".join(f"{i['name'][:60]} {i[field]:.2f}" for i in items[:5])
                notes.append(f"- {model} {title} (ms/step): {heaviest}")
    legend = "per step; each range: CPU ms/device ms (kernels launched inside it)"
    summary = table([*columns, *(f"{name}:" for name in RANGES)], rows)
    return "\n".join([legend, summary, "", *notes])
