"""Learning-rate transfer across widths, SP beside μP (Tensor Programs V, Figure 1) on OGB data.

A thin caller of ``pyg-mup sweep`` (:mod:`pyg_mup.sweep`): the grid parametrization × width ×
log2 lr × seed, every other setting fixed, μP's base width the smallest width (so SP and μP are
the same model there). Each trial is one ``pyg-mup train`` run; steps and the "last epoch"
window of the figure come from the graphs each run actually trained on (``--train-graphs``, or
the split when it is smaller), as recorded in its summary.

Usage::

    python benchmarks/mutransfer.py --dataset ogbg-molesol --root ../shared/data --tag cpu \\
        --widths 32 64 128 256 --log2-lrs -12 -10 -8 -6 -4 --seeds 0 1 --workers 2
    python benchmarks/mutransfer.py --device cuda --workers 8 ...   # workers share one GPU
    python benchmarks/mutransfer.py --smoke   # embedded ogbg-molesol, seconds on CPU

Writes the sweep folder ``<out>/mutransfer_<tag>/`` (trials.json, transfer_width.png,
recipe.json, the study); running the same command again resumes it (another grid is another
sweep: give it another --tag).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pyg_mup.sweep import SweepSpec, run_sweep


def spec_of(args: argparse.Namespace) -> SweepSpec:
    """The sweep these flags describe."""
    settings = {
        "dataset": args.dataset,
        "root": args.root,
        "cache_dir": args.cache_dir,
        "layers": args.layers,
        "heads": args.heads,
        "attention": args.attention,
        "batch_size": args.batch_size,
        "max_samples": args.train_graphs,
        "epochs": args.epochs,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "dropout": args.dropout,
        "lr_schedule": args.lr_schedule,
        "clip_grad": args.clip_grad,
        "device": args.device,
    }
    return SweepSpec(
        out=str(args.out / f"mutransfer_{args.tag}"),
        settings={k: v for k, v in settings.items() if v is not None},
        grid={
            "parametrization": args.params,
            "width": sorted(args.widths),
            "log2_lr": args.log2_lrs,
            "seed": args.seeds,
        },
        workers=args.workers,
        plot=not args.no_plot,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ogbg-molhiv")
    parser.add_argument("--root", help="folder holding the dataset in OGB's layout")
    parser.add_argument("--cache-dir", help="where read-only roots are copied")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--log2-lrs", type=int, nargs="+", default=[-12, -10, -8, -6, -4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--params", nargs="+", choices=["sp", "mup"], default=["sp", "mup"])
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
    parser.add_argument("--no-plot", action="store_true", help="JSON only (no figures)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--smoke", action="store_true", help="embedded ogbg-molesol, 2 widths x 3 lrs, few steps"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.dataset, args.root, args.tag = "ogbg-molesol", None, "smoke"
        args.widths, args.log2_lrs, args.seeds = [16, 32], [-10, -7, -4], [0]
        args.layers, args.batch_size, args.train_graphs, args.epochs = 1, 16, 32, 2
        args.heads, args.warmup_steps = 2, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run_sweep(spec_of(args))
    print(f"wrote {args.out / f'mutransfer_{args.tag}'}")
    return report


if __name__ == "__main__":
    main()
