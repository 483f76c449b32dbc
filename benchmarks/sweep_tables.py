"""Markdown tables of a sweep's trials.json: the best log2 lr per width (or depth), μP and SP.

Why: the README states what transfers from these numbers; the table is computed, not typed.
For each parametrization (or ``--by`` setting) and width (or number of layers), the seed-mean
training loss and validation metric of every log2 lr, the best lr of each, and the best values.
"Is wider (deeper) better?" is asked against the seeds' noise: each "step" column holds the
row's value at its best lr minus the row above's, with two standard errors of that difference
from the per-seed values; only a step outside them is called better or worse.

    python benchmarks/sweep_tables.py benchmarks/results/sweeps_h200/esol_width/trials.json

``--together`` makes one table of all the files given (sweeps of one dataset run apart),
``--objective best`` judges the trials on their best validation over the run instead of the
sweep's own objective (every trial records both), and ``--plot DIR`` draws the trials of all
the files given (sweeps of one dataset run apart, e.g. μP and SP, or widths and depths) on one
pair of transfer figures (``pyg-mup sweep``'s own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pyg_mup.sweep.space import OBJECTIVES, objective_label


def group_of(trial: dict, by: str) -> object:
    """The trial's value of the setting ``by`` (``parametrization``: ``mup`` or ``sp``)."""
    if by == "parametrization":
        return trial["params"].get(by, "mup" if trial["config"]["mup"] else "sp")
    return trial["config"][by]


def seed_values(
    trials: list[dict], axis: str, by: str = "parametrization", judged: str = "valid"
) -> dict[tuple, dict[int, list[tuple[float, float]]]]:
    """``{(value of by, axis value): {log2_lr: [(train loss, validation) of each seed]}}``, the
    validation number being the trial field ``judged`` (the sweep's objective)."""
    groups: dict[tuple, dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for trial in trials:
        if trial["state"] != "COMPLETE" or trial["diverged"] or trial.get(judged) is None:
            continue
        log2_lr = trial["params"].get("log2_lr")
        if log2_lr is None:
            continue
        key = (group_of(trial, by), trial["config"][axis])
        groups[key][log2_lr].append((trial["train_loss"], trial[judged]))
    return {key: dict(sorted(by_lr.items())) for key, by_lr in sorted(groups.items())}


def two_standard_errors(a: list[float], b: list[float]) -> float | None:
    """Two standard errors of ``mean(a) - mean(b)`` (``None`` below two seeds on a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return 2 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


def step(values: list[float], previous: list[float], higher_is_better: bool) -> str:
    """A step cell: this row's seed mean minus the row above's, with two standard errors;
    "better" or "**worse**" only outside them."""
    delta = statistics.mean(values) - statistics.mean(previous)
    noise = two_standard_errors(values, previous)
    if noise is None:
        return f"{delta:+.4f}"
    verdict = "within noise"
    if abs(delta) > noise:
        verdict = "better" if (delta > 0) == higher_is_better else "**worse**"
    return f"{delta:+.4f} (±{noise:.4f}, {verdict})"


def table(report: dict, axis: str, by: str = "parametrization") -> str:
    higher = report["higher_is_better"]
    better = max if higher else min
    objective = report.get("objective", "final")  # sweeps from before --objective: final
    judged = OBJECTIVES[objective]
    metric = f"{objective_label(objective)} {report['metric']}"
    rows = [
        f"| {by} | {axis} | best log2 lr (train loss) | train loss | step | "
        f"best log2 lr ({metric}) | {metric} | step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    previous: tuple | None = None
    for (group, value), seeds in seed_values(report["trials"], axis, by, judged).items():
        by_lr = {
            lr: (statistics.mean(v[0] for v in runs), statistics.mean(v[1] for v in runs))
            for lr, runs in seeds.items()
        }
        lr_loss = min(by_lr, key=lambda lr: by_lr[lr][0])
        lr_valid = better(by_lr, key=lambda lr: by_lr[lr][1])
        losses = [v[0] for v in seeds[lr_loss]]
        valids = [v[1] for v in seeds[lr_valid]]
        steps = ("", "")
        if previous is not None and previous[0] == group:
            steps = (step(losses, previous[1], False), step(valids, previous[2], higher))
        rows.append(
            f"| {group} | {value} | {lr_loss} | {by_lr[lr_loss][0]:.4f} | {steps[0]} | "
            f"{lr_valid} | {by_lr[lr_valid][1]:.4f} | {steps[1]} |"
        )
        previous = (group, losses, valids)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", type=Path, nargs="+", help="trials.json files")
    parser.add_argument("--axis", default=None, help="width or layers (default: what varies)")
    parser.add_argument(
        "--by", default="parametrization", help="the setting of each row (zero_query, ...)"
    )
    parser.add_argument(
        "--together", action="store_true", help="one table of all the files' trials"
    )
    parser.add_argument(
        "--objective",
        choices=sorted(OBJECTIVES),
        help="judge the trials on this instead of the sweep's objective",
    )
    parser.add_argument("--plot", type=Path, metavar="DIR", help="figures of all the trials")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.trials]
    if args.objective:
        reports = [{**report, "objective": args.objective} for report in reports]
    named = list(zip([path.parent.name for path in args.trials], reports, strict=True))
    if args.together:
        named = [(", ".join(name for name, _ in named), merged(reports))]
    for name, report in named:
        axis = args.axis or ("layers" if "layers" in report["grid"] else "width")
        print(f"### {name} ({report['dataset']}, by {axis})\n")
        print(table(report, axis, args.by) + "\n")
    if args.plot:
        for path in plot_together(reports, args.plot):
            print(f"wrote {path}")


def plot_together(reports: list[dict], out: Path) -> list[Path]:
    """The transfer figures of the trials of ``reports`` (one dataset) drawn together."""
    from pyg_mup.sweep.report import plot_transfer

    out.mkdir(parents=True, exist_ok=True)
    return plot_transfer(merged(reports), out)


def merged(reports: list[dict]) -> dict:
    """One report holding the trials of ``reports``, sweeps of one dataset; the union of their
    grids' axes."""
    datasets = {report["dataset"] for report in reports}
    if len(datasets) != 1:
        raise SystemExit(f"the sweeps must share one dataset, got {sorted(datasets)}")
    objectives = {report.get("objective", "final") for report in reports}
    if len(objectives) != 1:
        raise SystemExit(f"the sweeps must judge trials alike, got {sorted(objectives)}")
    grid: dict[str, list] = {}
    for report in reports:
        for axis, values in report["grid"].items():
            grid[axis] = list(dict.fromkeys([*grid.get(axis, []), *values]))
    trials = [t for report in reports for t in report["trials"]]
    return {**reports[0], "grid": grid, "trials": trials}


if __name__ == "__main__":
    main()
