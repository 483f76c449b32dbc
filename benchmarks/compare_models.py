"""Our hybrid against the GINE baseline, issue 15's protocol: the same tuning budget at a small
width, each model's recipe trained unchanged at a large width over several seeds.

Per dataset and model, two ``pyg-mup sweep`` studies (:mod:`pyg_mup.sweep`):

1. ``tune``: TPE over log2 lr, dropout and weight decay at ``--tune-width`` (= μP's base width),
   ``--trials`` trials; its ``recipe.json`` is chosen on the validation metric only: after each
   trial's last epoch, or with ``--objective best`` at its best epoch (every epoch evaluated),
   the epoch the final runs report. With ``--tune-attention`` our model's study also chooses its
   attention (local, or global beside local) as a categorical axis; the baseline's space is
   unchanged.
2. ``final``: the recipe at ``--width`` with ``--seeds`` (a grid over the seed); OGB's number is
   the test metric at each run's best validation epoch, reported as mean ± std.

The baseline is built with ``--match-parameters`` (the transformer's parameter count at each
width), so the two are compared at equal size. Resumable: the same command continues the
studies in ``--out``. Usage::

    python benchmarks/compare_models.py --out runs/compare --root ../shared/data \\
        --datasets ogbg-molbace ogbg-molbbbp --trials 20 --seeds 0 1 2 --workers 2
    python benchmarks/compare_models.py --device cuda --workers 12 ...   # workers share one GPU
    python benchmarks/compare_models.py --smoke --out /tmp/compare       # seconds on CPU

Writes ``<out>/<dataset>/<model>/{tune,final}/`` and ``<out>/results.json``, and prints the
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from pyg_mup.sweep import SweepSpec, load_recipe, recipe_values, run_sweep
from pyg_mup.sweep.space import OBJECTIVES, setting_of

HYBRID = {"attention": "both", "local_branch": "gine", "pe": ["rwse:16"], "virtual_node": True}
"""Our model; the baseline gets the same settings so that its width matches this model's size
(the GINE baseline has its own virtual node either way)."""

MODELS = {
    "transformer": {"model": "transformer", **HYBRID},
    "gine": {"model": "gine", "match_parameters": True, **HYBRID},
}

TUNED = {
    "log2_lr": [-12.0, -6.0, False],
    "dropout": [0.0, 0.3, False],
    "weight_decay": [1e-4, 0.1, True],
}
"""What the tuning study samples: ``[low, high, log]``."""

ATTENTION_CHOICE = {"attention": ["local", "both"]}
"""With ``--tune-attention``: our model's attention is a categorical axis of its tuning study
(along edges only, or global beside local), chosen on validation like the rest of the recipe."""

REPORTED = [setting_of(axis) for axis in (*TUNED, *ATTENTION_CHOICE)]
"""The recipe settings each result row carries: what tuning may choose (``log2_lr`` is ``lr``)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["ogbg-molbace"])
    parser.add_argument("--root", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--trials", type=int, default=20, help="tuning trials per model")
    parser.add_argument("--tune-width", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="final")
    parser.add_argument(
        "--tune-attention",
        action="store_true",
        help="our model's tuning study also chooses its attention (local or both)",
    )
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny: molesol, 2 trials, width 32")
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.trials, args.tune_width, args.width = ["ogbg-molesol"], 2, 16, 32
        args.layers, args.epochs, args.seeds, args.max_samples = 1, 1, [0, 1], 64
    return args


def common_settings(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    settings = {
        "dataset": dataset,
        "layers": args.layers,
        "heads": 4,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "warmup_steps": 20,
        "device": args.device,
    }
    optional = {"root": args.root, "cache_dir": args.cache_dir, "max_samples": args.max_samples}
    return {**settings, **{k: v for k, v in optional.items() if v is not None}}


def tune(args: argparse.Namespace, dataset: str, model: str, out: Path) -> dict[str, Any]:
    """The tuning study at the small width; returns its recipe."""
    settings = {**common_settings(args, dataset), **MODELS[model], "width": args.tune_width}
    if args.objective == "best":
        settings["eval_every"] = 1
    choices = ATTENTION_CHOICE if args.tune_attention and model == "transformer" else {}
    for setting in choices:
        del settings[setting]
    spec = SweepSpec(
        out=str(out / "tune"),
        settings=settings,
        grid=choices,
        ranges=TUNED,
        sampler="tpe",
        trials=args.trials,
        workers=args.workers,
        plot=False,
        objective=args.objective,
    )
    report = run_sweep(spec)
    recipe = out / "tune" / "recipe.json"
    if not recipe.exists():
        errors = [t["error"] or t["message"] for t in report["trials"] if t["state"] != "COMPLETE"]
        first = f"; the first error: {errors[0]}" if errors else ""
        raise SystemExit(f"{dataset} {model}: no tuning trial finished with a metric{first}")
    return load_recipe(recipe)


def train_wide(args: argparse.Namespace, recipe: dict[str, Any], out: Path) -> list[dict]:
    """The recipe unchanged at ``--width``, one run per seed; their summaries."""
    settings = {**common_settings(args, recipe["dataset"]), **recipe_values(recipe)}
    # every epoch evaluated: OGB's number is the test metric at the best validation epoch (a
    # tuning trial is judged after its last epoch only, the sweep's default)
    settings.update(width=args.width, eval_every=1)
    spec = SweepSpec(
        out=str(out / "final"),
        settings=settings,
        grid={"seed": args.seeds},
        workers=args.workers,
        plot=False,
    )
    report = run_sweep(spec)
    return [
        json.loads((out / "final" / t["run_dir"] / "summary.json").read_text())
        for t in report["trials"]
        if t["state"] == "COMPLETE" and not t["diverged"]
    ]


def row(dataset: str, model: str, recipe: dict[str, Any], runs: list[dict]) -> dict[str, Any]:
    tests = [r["test_at_best_valid"] for r in runs]
    return {
        "dataset": dataset,
        "model": model,
        "metric": recipe["metric"],
        "tuned_valid": recipe["valid"],
        "settings": {k: recipe["settings"][k] for k in REPORTED},
        "params": runs[0]["num_params"] if runs else None,
        "model_width": runs[0].get("model_width") if runs else None,
        "seeds": [r["seed"] for r in runs],
        "test_mean": statistics.mean(tests) if tests else None,
        "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs) if runs else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | model | params (width) | lr, dropout, wd, attention | valid at tune width "
        "| test |",
        "|---|---|---:|---|---:|---|",
    ]
    for r in rows:
        s = r["settings"]
        test = "–" if r["test_mean"] is None else f"{r['test_mean']:.4f} ± {r['test_std']:.4f}"
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['params']:,} ({r['model_width']}) | "
            f"{s['lr']:.2g}, {s['dropout']:.2f}, {s['weight_decay']:.2g}, {s['attention']} | "
            f"{r['tuned_valid']:.4f} | {test} ({r['metric']}, {len(r['seeds'])} seeds) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            out = args.out / dataset / model
            recipe = tune(args, dataset, model, out)
            rows.append(row(dataset, model, recipe, train_wide(args, recipe, out)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
