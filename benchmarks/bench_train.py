"""End-to-end training throughput on an OGB graph dataset: our ``GraphTransformer`` against
the same-size model built from PyG's ``GPSConv`` + ``TransformerConv``, on one device.

Why: ``bench_conv.py`` times one layer on prebuilt structures; a user feels whole training
steps. Here every model trains on the same shuffled train split (same batches, width, layers,
heads, dtype, fused AdamW) the way ``pyg-mup train`` feeds it: a ``DataLoader`` (in
``--num-workers`` processes, pinned on CUDA) collates each batch — ours with
:class:`pyg_mup.graph.StructureCollater`, which builds the model's attention structures there
(``model.structure_spec``), the peers with PyG's loader — and the step moves it to the device
(``non_blocking``) and runs forward, loss, backward and the optimizer.

Models (``train_models``): ``ours-both`` (``GraphTransformer(attention='both')``, local +
global ``FlexGraphConv`` per block, summed, GPS-like), ``gps`` (PyG's ``GPSConv(TransformerConv,
attn_type='multihead')`` × ``layers``, mean pool, linear readout), ``ours-local``
(``attention='local'``) and ``transformerconv`` (its local-only twin, block for block: pre-norm
``TransformerConv`` + residual, pre-norm FFN + residual). All four share the node and edge
encoders. The dataset carries hop distances (``AddHopDistance`` as ``pre_transform``, cached)
when a model attends globally, as in ``pyg-mup train``; only global attention collates them.

Per model: ``--warmup-steps`` untimed steps (they cover ``torch.compile`` of FlexAttention),
then one timed pass over the train split (or ``--max-steps``) between two device syncs. The JSON
holds steps/s and graphs/s (end to end, and without the time spent waiting for the loader),
ms/step (mean and median), the host time of structure builds inside the step
(``GraphStructure.build``: 0 when the loader builds them) and its share, the loader's collate
ms per batch and, of it, our structure build (both timed apart, in the main process, on the
first ``--collate-batches`` batches), peak memory, dynamo graphs compiled, parameter counts,
ratios ours-both ÷ gps and ours-local ÷ transformerconv, and for ours the backend ``'auto'``
picked per attention mode. After the timed pass (never inside it): ``--count-steps N`` steps
under :class:`pyg_mup.profiling.OpCounter` (dispatched ops and data-dependent ops per step, the
latter each a host sync on CUDA, overall and by phase), and ``--profile N`` steps under
``torch.profiler`` with ranges per phase and per attention kind (``train_profile``: device busy
share, device ops — kernels — per step, syncs on CUDA); ``--trace-dir DIR`` writes their Chrome
traces; ``--cuda-graph-steps N`` times the first batch's step eager and as a replayed CUDA graph
(``train_profile.cuda_graph_replay``). A model that fails is recorded with its error and the
next one runs; the JSON is rewritten after each. ``--compile`` wraps every model in
``torch.compile(dynamic=True)`` (the warm-up steps take its compiles). No CUDA graphs in the
timed pass: batches change node counts, so a graph per bucket of padded sizes (and padded
structures) would be needed first.

Usage (from the repository root; ``--root`` holds ``ogbg_molhiv/`` in OGB's layout)::

    python benchmarks/bench_train.py --root shared_data --dtype bfloat16 \\
        --out benchmarks/results/train_h200_bf16.json
    python benchmarks/bench_train.py --device cpu --root shared_data --dtype float32 \\
        --width 128 --heads 4 --max-steps 40 --out benchmarks/results/train_cpu.json
    python benchmarks/bench_train.py --smoke --out /tmp/train_smoke.json   # CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common, train_models, train_profile  # noqa: E402
from benchmarks.train_data import collate_costs, load, train_loader  # noqa: E402
from benchmarks.train_models import (  # noqa: E402
    EDGE_CHANNELS,
    MODELS,
    STRUCTURE_CALLS,
    unpack,
)
from benchmarks.train_profile import Calls, around, clock, no_range, shadowed  # noqa: E402
from benchmarks.train_records import add_ratios, markdown, merged  # noqa: E402
from pyg_mup.data import OGBData  # noqa: E402
from pyg_mup.graph import StructuredBatch  # noqa: E402
from pyg_mup.models.encoders import feature_specs  # noqa: E402
from pyg_mup.train.objective import Objective  # noqa: E402

SMOKE_DATASET = "ogbg-molesol"  # shipped with the package: the smoke run needs no data folder


# --------------------------------------------------------------------------------------- steps
def run_steps(
    step: Callable[[StructuredBatch | Batch], Tensor],
    batches: Iterable[StructuredBatch | Batch],
    device: torch.device,
    steps: int | None,
    builds: Calls,
) -> dict:
    """Up to ``steps`` training steps (``None``: all batches) between two device syncs: wall
    seconds, graphs, time waiting for the loader, per-step ms (CUDA events on GPU), host
    seconds inside the ``builds`` calls within the steps (a structure build), last loss."""
    iterator = iter(batches)  # loader workers, if any, start before the clock
    times, build_s, graphs, loader_s, loss = common.StepTimes(device), [], 0, 0.0, None
    common.sync(device)
    start = time.perf_counter()
    while steps is None or len(times.marks) < steps:
        began = time.perf_counter()
        item = next(iterator, None)
        loader_s += time.perf_counter() - began
        if item is None:
            break
        with times.step(), shadowed(builds, around(lambda name: clock(build_s))):
            loss = step(item)
        graphs += unpack(item)[0].num_graphs
    common.sync(device)
    seconds = time.perf_counter() - start
    last = float(loss) if loss is not None else None
    return dict(seconds=seconds, graphs=graphs, loader_s=loader_s, step_ms=times.ms(),
                build_s=sum(build_s), loss=last)  # fmt: skip


def diagnostic(measure: Callable[[], dict]) -> dict:
    """``measure()``, or its error: a diagnostic's failure must not cost the timings."""
    try:
        return measure()
    except Exception as error:
        return dict(error=common.error_text(error))


def benchmark_model(name: str, data: OGBData, args: argparse.Namespace) -> dict:
    """Build, warm up and time one model; returns the fields of its record."""
    device, cuda = args.device, args.device.type == "cuda"
    example = data.dataset[0]
    specs = feature_specs(args.dataset, example.x, example.edge_attr)
    torch.manual_seed(args.seed)
    model = train_models.build_model(name, data.task.out_channels, specs, args).to(device).train()
    # one graph of kernels per shape bucket instead of one launch per op: the lever on a step
    # bound by the host (dynamic: batches change node counts; warm-up steps take the compiles)
    forward_model = torch.compile(model, dynamic=True) if args.compile else model
    objective = Objective(data.task, data.dataset.y[data.split_idx["train"]])
    bf16 = args.dtype == "bfloat16"

    def make_step(optimizer: torch.optim.Optimizer) -> Callable[..., Tensor]:
        """The training step of ``forward_model`` with ``optimizer``."""

        def step(
            item: StructuredBatch | Batch,
            phase: Callable[[str], contextlib.AbstractContextManager] = no_range,
        ) -> Tensor:
            """One training step; ``phase`` opens a named range around each part
            (``--profile`` passes ``record_function``; the timed passes keep the no-op default).
            Zeroing the gradients stays before the backward, as timed: ``optimizer`` is two
            ranges a step."""
            with phase("batch_to_device"):
                batch, structures = unpack(item.to(device, non_blocking=True))
            with phase("forward"), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                pred = train_models.forward(forward_model, batch, structures)
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

        return step

    # fused: torch's default AdamW reads its step counters on the host every step
    step = make_step(torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True))
    loader = train_loader(data, args, train_models.collater(model, device))
    record = dict(params=sum(p.numel() for p in model.parameters()), width=model.head.in_features)
    record.update(collate_costs(loader, args))
    if name.startswith("ours-"):  # the first batch's structures, collated apart
        first = loader.collate_fn([loader.dataset[i] for i in range(args.batch_size)])
        dtype = torch.bfloat16 if bf16 else torch.float32
        structures = first.to(device).structures
        record["backends"] = train_models.our_backends(model, structures, dtype)
    before = common.compiled_graphs()
    warmup = run_steps(step, loader, device, args.warmup_steps, STRUCTURE_CALLS)
    record.update(warmup_s=warmup["seconds"], compiles_warmup=common.compiled_graphs() - before)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = common.compiled_graphs()
    timed = run_steps(step, loader, device, args.max_steps, STRUCTURE_CALLS)
    steps, seconds, step_ms = len(timed["step_ms"]), timed["seconds"], timed["step_ms"]
    record.update(
        steps=steps, graphs=timed["graphs"], epoch_s=seconds, steps_per_s=steps / seconds,
        graphs_per_s=timed["graphs"] / seconds,
        graphs_per_s_excl_loader=timed["graphs"] / max(seconds - timed["loader_s"], 1e-9),
        loader_s=timed["loader_s"], ms_per_step=seconds / max(steps, 1) * 1e3,
        median_step_ms=statistics.median(step_ms) if steps else None,
        min_step_ms=min(step_ms) if steps else None,
        structure_ms_per_step=timed["build_s"] * 1e3 / max(steps, 1),
        structure_share=common.ratio(timed["build_s"] * 1e3, sum(step_ms)),
        compiles_timed=common.compiled_graphs() - before, final_loss=timed["loss"],
        peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    )  # fmt: skip
    if args.count_steps:
        record["ops"] = diagnostic(
            lambda: train_profile.count_ops(step, loader, args.count_steps, STRUCTURE_CALLS)
        )
    if args.cuda_graph_steps:
        # capturable: the step counters stay on the device, so the optimizer step replays
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True, capturable=True)
        first = loader.collate_fn([loader.dataset[i] for i in range(args.batch_size)])
        record["cuda_graph"] = diagnostic(
            lambda: train_profile.cuda_graph_replay(
                make_step(optimizer), first, device, args.cuda_graph_steps
            )
        )
    if args.profile:
        trace = args.trace_dir / f"{name}.json.gz" if args.trace_dir else None
        calls = STRUCTURE_CALLS + train_models.attention_calls(model)
        record["profile"] = diagnostic(
            lambda: train_profile.profile_steps(step, loader, device, args.profile, calls, trace)
        )
    return record


# ------------------------------------------------------------------------------------- results
def environment(args: argparse.Namespace, data: OGBData) -> dict:
    import ogb

    return common.environment(
        args.device, note=args.note, ogb=ogb.__version__, smoke=args.smoke,
        dataset=args.dataset, train_graphs=int(data.split_idx["train"].numel()),
        dtype=args.dtype, compile=args.compile,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        width=args.width, layers=args.layers, heads=args.heads, edge_channels=EDGE_CHANNELS,
        batch_size=args.batch_size, lr=args.lr, optimizer="AdamW(fused=True)", seed=args.seed,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, num_workers=args.num_workers,
        pin_memory=args.device.type == "cuda", collate_batches=args.collate_batches,
        count_steps=args.count_steps, profile_steps=args.profile,
        cuda_graph_steps=args.cuda_graph_steps,
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
    add("--compile", action="store_true",
        help="torch.compile every model (dynamic shapes; compiles in the warm-up)")  # fmt: skip
    add("--width", type=int, default=256)
    add("--layers", type=int, default=4)
    add("--heads", type=int, default=8)
    add("--batch-size", type=int, default=128)
    add("--lr", type=float, default=1e-4)
    add("--seed", type=int, default=0)
    add("--warmup-steps", type=int, default=20, help="untimed steps (compiles included)")
    add("--max-steps", type=int, help="timed steps (default: one pass over the split)")
    add(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader workers collating (ours: building structures); 0: in the main process",
    )
    add("--collate-batches", type=int, default=20, metavar="N",
        help="batches whose collate and structure build are timed apart (smoke: 2)")  # fmt: skip
    add(
        "--count-steps",
        type=int,
        metavar="N",
        help="after each timed pass, N steps under OpCounter (default 2; smoke 1; 0: none)",
    )
    add("--profile", type=int, default=0, metavar="N",
        help="after each timed pass, N steps under torch.profiler (default 0: none)")  # fmt: skip
    add("--cuda-graph-steps", type=int, default=0, metavar="N",
        help="after each timed pass, the first batch's step N times eager and N times replayed "
        "as one captured CUDA graph: the ceiling of CUDA graphs (default 0: none)")  # fmt: skip
    add("--trace-dir", type=Path, help="with --profile: write DIR/<model>.json.gz Chrome traces")
    add("--device", choices=["cuda", "cpu"], help="default: cuda if available (smoke: cpu)")
    add("--threads", type=int, help="torch.set_num_threads (default: torch's; smoke: 1)")
    add("--rounds", type=int, default=1,
        help="time every model this many times, the order reversed each round (on a shared CPU "
        "the model timed second runs faster); records keep the medians over rounds, and "
        "ratios_by_round the ratios of each round (diagnostics: first round only)")  # fmt: skip
    add("--note", default="", help="free text stored in the JSON's environment")
    args = parser.parse_args(argv)
    if args.trace_dir and not args.profile:
        parser.error("--trace-dir needs --profile N")
    if args.smoke:
        args.dataset, args.root = SMOKE_DATASET, None
        args.width, args.layers, args.heads, args.batch_size = 32, 1, 2, 16
        args.warmup_steps, args.max_steps, args.collate_batches = 2, 4, 2
        args.threads = args.threads or 1  # on a shared CPU, OpenMP spinning slows tiny steps
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    if args.width % args.heads:
        parser.error(f"--width {args.width} is not divisible by --heads {args.heads}")
    if args.count_steps is None:
        args.count_steps = 1 if args.smoke else 2
    cuda = torch.cuda.is_available() and not args.smoke
    args.device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    return args


def time_model(name: str, data: OGBData, args: argparse.Namespace) -> dict:
    """One model's record; an error is recorded, never fatal (the next model runs)."""
    record = dict(model=name)
    try:
        record.update(benchmark_model(name, data, args), status="ok")
    except Exception as error:
        record.update(status="error", error=common.error_text(error))
    gc.collect()
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    rate = record.get("graphs_per_s")
    rate_note = f"{rate:.0f} graphs/s" if rate and math.isfinite(rate) else ""
    print(f"{name}: {record['status']} {rate_note}", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    common.raise_recompile_limit()
    data = load(args)
    env, rounds = environment(args, data), []
    for number in range(args.rounds):
        order = args.models if number % 2 == 0 else args.models[::-1]
        # later rounds time only: the op counts, profiles and graph replays of the first stand
        # for all
        quiet = (
            args
            if number == 0
            else argparse.Namespace(
                **{**vars(args), "count_steps": 0, "profile": 0, "cuda_graph_steps": 0}
            )
        )
        rounds.append({name: time_model(name, data, quiet) for name in order})
        records = [merged([r[name] for r in rounds]) for name in args.models]
        ratios = add_ratios(records)
        by_round = [add_ratios([dict(r[name]) for name in args.models]) for r in rounds]
        common.write_json(
            args.out,
            dict(environment=env, ratios=ratios, ratios_by_round=by_round, records=records),
        )
    print(markdown(records))
    if args.profile:
        print("\n" + train_profile.profile_markdown(records))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
