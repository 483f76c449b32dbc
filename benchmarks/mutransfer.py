"""Learning-rate transfer across widths, SP beside μP (Tensor Programs V, Figure 1) on OGB data.

For each parametrization (SP, μP), width, learning rate (a log2 grid) and seed, one run of
``pyg-mup train`` (:func:`pyg_mup.train.train`: the same data path, model factory, optimizer —
``AdamW`` for SP, ``MuAdamW`` for μP — and loop as the CLI) trains a :class:`GraphTransformer`
for a fixed number of steps. Depth and heads are fixed; the head dimension is ``width / heads``
and grows with width, which is the μP setting of this repository (attention scale ``1/d``).
μP's base width is the smallest width of the grid, so SP and μP are the same model there.

Each run records its final training loss (the mean over the last epoch, i.e. the last
``ceil(train_graphs / batch_size)`` steps) and the validation metric from ``ogb``'s Evaluator.
A run whose loss becomes nan/inf (or whose predictions the Evaluator rejects) is kept in the
results with ``"status": "diverged"``.

Usage::

    python benchmarks/mutransfer.py --dataset ogbg-molhiv --root ../shared/data --tag cpu \\
        --widths 32 64 128 256 --log2-lrs -12 -10 -8 -6 -4 --seeds 0 --workers 2
    python benchmarks/mutransfer.py --device cuda --workers 8 --no-plot ...   # one GPU, 8 runs
    python benchmarks/mutransfer.py --smoke   # embedded ogbg-molesol, seconds on CPU
    python benchmarks/mutransfer.py --combine a.json b.json --tag cpu   # pieces of one grid

Writes ``<out>/mutransfer_<tag>.json`` and ``<out>/mutransfer_<tag>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pyg_mup.data import load_dataset, task_of
from pyg_mup.train import TrainConfig, read_metrics, train

PARAMETRIZATIONS = {"sp": False, "mup": True}
LABELS = {"sp": "SP", "mup": "μP"}
SHARED_SETTINGS = (
    "dataset", "layers", "heads", "batch_size", "train_graphs", "epochs", "warmup_steps",
    "weight_decay", "clip_grad", "base_width", "attention", "dropout", "lr_schedule",
)  # fmt: skip
"""Settings every piece of a combined sweep must share."""
LATER_SETTINGS = {"attention": "local", "dropout": 0.0, "lr_schedule": "constant"}
"""Settings added after some sweeps were recorded, with the value those sweeps ran with."""


@dataclass(frozen=True)
class Run:
    """One point of the grid."""

    param: str
    width: int
    log2_lr: float
    seed: int


def run_config(args: argparse.Namespace, run: Run, out: Path) -> TrainConfig:
    """The ``pyg-mup train`` settings of one grid point: everything but the point is shared."""
    return TrainConfig(
        dataset=args.dataset,
        root=args.root,
        cache_dir=args.cache_dir,
        out=str(out),
        overwrite=True,
        epochs=args.epochs,
        eval_every=args.epochs,  # a run records the validation metric of its last epoch only
        batch_size=args.batch_size,
        max_samples=args.train_graphs,
        width=run.width,
        layers=args.layers,
        heads=args.heads,
        attention=args.attention,
        lr=2.0**run.log2_lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        clip_grad=args.clip_grad,
        seed=run.seed,
        mup=PARAMETRIZATIONS[run.param],
        base_width=min(args.widths),
        device=args.device,
        progress=False,
    )


def execute(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """Train one grid point in a scratch folder; return its record (diverged runs included).

    Runs in a worker process with one thread: several small runs side by side use the cores
    better than one run with several threads (on a GPU, they fill the gaps between each
    other's kernel launches).
    """
    torch.set_num_threads(1)
    for name in ("recompile_limit", "cache_size_limit"):  # batch sizes vary: FlexAttention
        if hasattr(torch._dynamo.config, name):  # is compiled for several shapes per run
            setattr(torch._dynamo.config, name, 64)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutransfer-") as scratch:
        config = run_config(args, run, Path(scratch) / "run")
        error = None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                train(config)
        except (ValueError, RuntimeError) as exc:  # e.g. the Evaluator refusing nan predictions
            error = f"{type(exc).__name__}: {exc}"
        metrics_file = config.out_dir / "metrics.jsonl"
        epochs = read_metrics(metrics_file) if metrics_file.is_file() else []
    losses = [e["train_loss"] for e in epochs]
    finished = len(epochs) == args.epochs and error is None
    diverged = not finished or not all(math.isfinite(x) for x in losses)
    last = epochs[-1] if epochs else {}
    return {
        **asdict(run),
        "lr": 2.0**run.log2_lr,
        "status": "diverged" if diverged else "ok",
        "train_loss": last.get("train_loss", math.nan) if not diverged else math.nan,
        "valid": last.get("valid", math.nan) if not diverged else math.nan,
        "epoch_train_losses": losses,
        "error": error,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _execute_star(item: tuple[argparse.Namespace, Run]) -> dict[str, Any]:
    return execute(*item)


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per parametrization and width: the seed-mean loss per lr, and the lr that minimises it.

    A learning rate at which any seed diverged counts as diverged (its mean is nan).
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for param in PARAMETRIZATIONS:
        summary[param] = {}
        for width in sorted({r["width"] for r in records if r["param"] == param}):
            mine = [r for r in records if r["param"] == param and r["width"] == width]
            curve = {}
            for log2_lr in sorted({r["log2_lr"] for r in mine}):
                at = [r for r in mine if r["log2_lr"] == log2_lr]
                curve[log2_lr] = {
                    "train_loss": _mean([r["train_loss"] for r in at]),
                    "valid": _mean([r["valid"] for r in at]),
                    "diverged": sum(r["status"] == "diverged" for r in at),
                    "seeds": len(at),
                }
            finite = {k: v for k, v in curve.items() if math.isfinite(v["train_loss"])}
            best = min(finite, key=lambda k: finite[k]["train_loss"]) if finite else None
            summary[param][str(width)] = {
                "curve": {str(k): v for k, v in curve.items()},
                "best_log2_lr": best,
                "best_train_loss": finite[best]["train_loss"] if finite else None,
                "valid_at_best": finite[best]["valid"] if finite else None,
            }
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def plot(result: dict[str, Any], path: Path) -> Path:
    """SP and μP side by side: training loss (top) and validation metric (bottom) against
    log2 lr, one curve per width; each width's best lr is ringed, diverged lrs are left out."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    summary, meta = result["summary"], result["config"]
    widths = sorted({int(w) for s in summary.values() for w in s})
    colours = colormaps["viridis"].resampled(max(len(widths), 2))
    fig = Figure(figsize=(10, 7.5))
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    for col, param in enumerate(PARAMETRIZATIONS):
        for i, width in enumerate(widths):
            entry = summary[param].get(str(width))
            if entry is None:
                continue
            points = sorted((float(k), v) for k, v in entry["curve"].items())
            for row, key in enumerate(("train_loss", "valid")):
                xs = [x for x, v in points if math.isfinite(v[key])]
                ys = [v[key] for x, v in points if math.isfinite(v[key])]
                axes[row][col].plot(xs, ys, marker=".", color=colours(i), label=f"width {width}")
            best = entry["best_log2_lr"]
            if best is not None:
                axes[0][col].plot(
                    [best], [entry["best_train_loss"]], "o", mfc="none", ms=10, color=colours(i)
                )
        axes[0][col].set_title(f"{LABELS[param]}", fontsize=11)
        axes[0][col].set_yscale("log")  # the optima sit on a plateau far below the worst lrs
        axes[1][col].set_xlabel("log2 learning rate")
    axes[0][0].set_ylabel(f"training loss (mean of last {meta['last_k_steps']} steps)")
    axes[1][0].set_ylabel(f"validation {meta['metric']}")
    axes[0][1].legend(fontsize=8)
    fig.suptitle(
        f"{meta['dataset']}: GraphTransformer, {meta['layers']} layers, {meta['heads']} heads, "
        f"{meta['steps']} AdamW steps, batch {meta['batch_size']}, "
        f"{meta['train_graphs']} train graphs, seeds {sorted({r['seed'] for r in result['runs']})}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ogbg-molhiv")
    parser.add_argument("--root", help="folder holding the dataset in OGB's layout")
    parser.add_argument("--cache-dir", help="where read-only roots are copied")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument(
        "--log2-lrs", type=float, nargs="+", default=[-12.0, -10.0, -8.0, -6.0, -4.0]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--params", nargs="+", choices=list(PARAMETRIZATIONS), default=["sp", "mup"]
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--attention", default="local", help="local, global or both")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (workers share one GPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--train-graphs", type=int, default=2048, help="first N graphs of each split"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--clip-grad", type=float, default=0.0, help="0: no clipping")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--no-plot", action="store_true", help="JSON only (no matplotlib)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="merge these sweep JSONs (pieces of one grid) into mutransfer_<tag>; trains nothing",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="embedded ogbg-molesol, 2 widths x 3 lrs, few steps"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset, args.root, args.tag = "ogbg-molesol", None, "smoke"
        args.widths, args.log2_lrs, args.seeds = [16, 32], [-10.0, -7.0, -4.0], [0]
        args.layers, args.batch_size, args.train_graphs, args.epochs = 1, 16, 32, 2
        args.warmup_steps = 1
    return args


def combine(paths: list[Path], out: Path, tag: str) -> dict[str, Any]:
    """Merge sweeps run in pieces (other seeds, widths or lrs of the same grid) into one result.

    Raises ``ValueError`` if the pieces differ in a setting that changes what a run means.
    """
    parts = [json.loads(path.read_text()) for path in paths]
    config = dict(parts[0]["config"])
    for path, part in zip(paths[1:], parts[1:], strict=True):
        differ = [k for k in SHARED_SETTINGS if _setting(part["config"], k) != _setting(config, k)]
        if differ:
            raise ValueError(f"{path} differs from {paths[0]} in {', '.join(differ)}")
    runs = [run for part in parts for run in part["runs"]]
    runs.sort(key=lambda r: (r["param"], r["width"], r["log2_lr"], r["seed"]))
    for key, field in (("widths", "width"), ("log2_lrs", "log2_lr"), ("seeds", "seed")):
        config[key] = sorted({run[field] for run in runs})  # what ran, not what was asked
    config.update(
        tag=tag,
        runs_done=len(runs),
        wall_seconds=round(sum(part["config"]["wall_seconds"] for part in parts), 1),
        combined_from=[path.name for path in paths],
    )
    result = {"config": config, "summary": summarize(runs), "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mutransfer_{tag}.json"
    path.write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    return result


def _setting(config: dict[str, Any], key: str) -> Any:
    return config.get(key, LATER_SETTINGS.get(key))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, args.tag)
    runs = [  # seed by seed, so that a sweep stopped early keeps whole grids; within a seed
        Run(param, width, log2_lr, seed)  # widest first: the longest runs start first and
        for seed in args.seeds  # the workers finish together
        for width in sorted(args.widths, reverse=True)
        for param in args.params
        for log2_lr in args.log2_lrs
    ]
    # Load (and, on first use, copy and process) the dataset once here: workers then only read
    # the cache, instead of racing to write it, and a wrong --root fails before any run starts.
    load_dataset(args.dataset, args.root, args.cache_dir)
    started = time.perf_counter()
    records = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for record in pool.imap_unordered(_execute_star, [(args, r) for r in runs]):
            records.append(record)
            print(
                f"[{len(records)}/{len(runs)}] {record['param']:>3} width {record['width']:>4} "
                f"lr 2^{record['log2_lr']:g} seed {record['seed']}: {record['status']} "
                f"loss {record['train_loss']:.4f} valid {record['valid']:.4f} "
                f"({record['seconds']:.0f}s)",
                flush=True,
            )
            write(args, records, time.perf_counter() - started)
    result = write(args, records, time.perf_counter() - started)
    if not args.no_plot:
        plot(result, args.out / f"mutransfer_{args.tag}.png")
    for param, widths in result["summary"].items():
        for width, entry in widths.items():
            print(
                f"{LABELS[param]:>2} width {width:>4}: best lr 2^{entry['best_log2_lr']} "
                f"loss {entry['best_train_loss']}"
            )
    print(f"wrote {args.out / f'mutransfer_{args.tag}.json'}")
    return result


def write(args: argparse.Namespace, records: list[dict[str, Any]], seconds: float) -> dict:
    """Write the JSON of the runs so far (after every run, so that a stopped sweep keeps them)."""
    records = sorted(records, key=lambda r: (r["param"], r["width"], r["log2_lr"], r["seed"]))
    steps_per_epoch = math.ceil(args.train_graphs / args.batch_size)
    config = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
    }
    config.update(
        metric=task_of(args.dataset).metric,
        steps=args.epochs * steps_per_epoch,
        last_k_steps=steps_per_epoch,
        base_width=min(args.widths),
        optimizer={"sp": "torch.optim.AdamW", "mup": "pyg_mup.mup.MuAdamW"},
        head_dim="width / heads (heads fixed)",
        runs_done=len(records),
        wall_seconds=round(seconds, 1),
        torch=torch.__version__,
        threads_per_run=1,
    )
    result = {"config": config, "summary": summarize(records), "runs": records}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mutransfer_{args.tag}.json"
    temporary = path.with_suffix(".tmp")  # a sweep killed mid-write keeps the last whole JSON
    temporary.write_text(json.dumps(result, indent=1))
    temporary.replace(path)
    return result


if __name__ == "__main__":
    main()
