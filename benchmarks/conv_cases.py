"""``bench_conv.py``'s measurements of one case: the correctness check against ours on the
message-passing backend, the timed forward+backward, ``--profile``'s top kernels, the
recompilation case, and the hardware floor a time is compared with."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch._dynamo.utils import counters
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from benchmarks.common import compiled_graphs, iteration_ms, sync
from benchmarks.conv_layers import AUTO, MESSAGE_PASSING, make_layer
from benchmarks.conv_workloads import EDGE_DIM, Graph, molecule_batch, molecule_raw
from pyg_mup import FlexGraphConv

PROFILE_TOP = 12  # kernels listed per case by --profile


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

    On CPU the flex layers run forward only, under ``no_grad`` (no FlexAttention backward);
    ``+auto`` runs the backend ``'auto'`` picks (there: dense or message passing) with backward."""
    module, reference, info = make_layer(layer, graph, args)
    module = module.to(device=args.device, dtype=dtype)
    flex_on_cpu = layer.startswith(("ours", "naive")) and not layer.endswith(
        (MESSAGE_PASSING, AUTO)
    )
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
        graphs, began = compiled_graphs(), time.perf_counter()
        with torch.set_grad_enabled(train):
            out = sum(conv(x.requires_grad_(train), edge_index, edge_attr, batch).sum()
                      for conv in convs)  # fmt: skip
            if train:
                out.backward()
        sync(device)
        batch_s.append(time.perf_counter() - began)
        if compiled_graphs() > graphs:
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
    if args.device.type == "cpu" and not args.smoke:  # an 8192² matmul takes seconds there
        numel, dim = 2**24, 2048
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
