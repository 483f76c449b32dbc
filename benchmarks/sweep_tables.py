"""Markdown tables of a sweep's trials.json: the best log2 lr per width (or depth), μP and SP.

Why: the README states what transfers from these numbers; the table is computed, not typed.
For each parametrization (or ``--by`` setting) and width (or number of layers), the seed-mean
training loss and validation metric of every log2 lr, the best lr of each, and the best values.

    python benchmarks/sweep_tables.py benchmarks/results/sweeps_h200/esol_width/trials.json

``--plot DIR`` draws the trials of all the files given (sweeps of one dataset run apart, e.g. μP
and SP, or widths and depths) on one pair of transfer figures (``pyg-mup sweep``'s own).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def group_of(trial: dict, by: str) -> object:
    """The trial's value of the setting ``by`` (``parametrization``: ``mup`` or ``sp``)."""
    if by == "parametrization":
        return trial["params"].get(by, "mup" if trial["config"]["mup"] else "sp")
    return trial["config"][by]


def seed_means(
    trials: list[dict], axis: str, by: str = "parametrization"
) -> dict[tuple, dict[int, tuple[float, float]]]:
    """``{(value of by, axis value): {log2_lr: (mean train loss, mean valid)}}``."""
    groups: dict[tuple, dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for trial in trials:
        if trial["state"] != "COMPLETE" or trial["diverged"] or trial["valid"] is None:
            continue
        log2_lr = trial["params"].get("log2_lr")
        if log2_lr is None:
            continue
        key = (group_of(trial, by), trial["config"][axis])
        groups[key][log2_lr].append((trial["train_loss"], trial["valid"]))
    return {
        key: {
            lr: (statistics.mean(v[0] for v in values), statistics.mean(v[1] for v in values))
            for lr, values in sorted(by_lr.items())
        }
        for key, by_lr in sorted(groups.items())
    }


def table(report: dict, axis: str, by: str = "parametrization") -> str:
    better = max if report["higher_is_better"] else min
    rows = [
        f"| {by} | {axis} | best log2 lr (train loss) | train loss | best log2 lr "
        f"(valid {report['metric']}) | valid {report['metric']} |",
        "|---|---|---|---|---|---|",
    ]
    for (group, value), by_lr in seed_means(report["trials"], axis, by).items():
        lr_loss = min(by_lr, key=lambda lr: by_lr[lr][0])
        lr_valid = better(by_lr, key=lambda lr: by_lr[lr][1])
        rows.append(
            f"| {group} | {value} | {lr_loss} | {by_lr[lr_loss][0]:.4f} | "
            f"{lr_valid} | {by_lr[lr_valid][1]:.4f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", type=Path, nargs="+", help="trials.json files")
    parser.add_argument("--axis", default=None, help="width or layers (default: what varies)")
    parser.add_argument(
        "--by", default="parametrization", help="the setting of each row (zero_query, ...)"
    )
    parser.add_argument("--plot", type=Path, metavar="DIR", help="figures of all the trials")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.trials]
    for path, report in zip(args.trials, reports, strict=True):
        axis = args.axis or ("layers" if "layers" in report["grid"] else "width")
        print(f"### {path.parent.name} ({report['dataset']}, by {axis})\n")
        print(table(report, axis, args.by) + "\n")
    if args.plot:
        for path in plot_together(reports, args.plot):
            print(f"wrote {path}")


def plot_together(reports: list[dict], out: Path) -> list[Path]:
    """The transfer figures of the trials of ``reports`` (one dataset) drawn together."""
    from pyg_mup.sweep.report import plot_transfer

    datasets = {report["dataset"] for report in reports}
    if len(datasets) != 1:
        raise SystemExit(f"--plot: the sweeps must share one dataset, got {sorted(datasets)}")
    merged = {**reports[0], "trials": [t for report in reports for t in report["trials"]]}
    out.mkdir(parents=True, exist_ok=True)
    return plot_transfer(merged, out)


if __name__ == "__main__":
    main()
