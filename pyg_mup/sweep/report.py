"""A sweep's outputs: trials.json (every trial), the transfer figures and recipe.json.

The figures draw the training loss (top) and the validation metric the sweep judges on
(bottom, see ``SweepSpec.objective``) against log2 lr,
one panel per parametrization: ``transfer_width.png`` one curve per width (at the base depth)
when the width varies, ``transfer_depth.png`` one curve per depth (at the base width) when the
depth does, and the width figure alone for a sweep over neither.
Points are means over seeds; a learning rate where any seed diverged is left out of its curve.

Paths inside the sweep folder (the journal, each trial's run folder) are recorded relative to
it, so a sweep folder that is moved, copied to another machine or committed still says where its
runs are; paths outside it (``root``, ``cache_dir``, an external storage) are recorded as given.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import optuna

from pyg_mup.data import task_of
from pyg_mup.train.checkpoint import atomic_write

from .recipe import best_settings
from .space import OBJECTIVES, SweepSpec, is_storage_url

FORMAT = "pyg_mup.sweep/1"


def in_sweep(path: str | None, out: Path) -> str | None:
    """``path`` relative to the sweep folder ``out`` when it lies inside it, else as given
    (trials record their run folders relative to it; studies from before did not)."""
    if path is None or is_storage_url(path):
        return path
    folder = out.resolve()
    resolved = Path(path).resolve()
    return os.path.relpath(resolved, folder) if resolved.is_relative_to(folder) else path


def trial_record(trial: optuna.trial.FrozenTrial, out: Path) -> dict[str, Any]:
    """One trial of trials.json, its paths relative to the sweep folder ``out``."""
    attrs = trial.user_attrs
    config = attrs.get("config")
    if config is not None:
        config = {**config, "out": in_sweep(config.get("out"), out)}
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        # A trial killed before it suggested anything still has the grid point it was given.
        "params": trial.params or trial.system_attrs.get("fixed_params", {}),
        "value": value,
        "diverged": bool(attrs.get("diverged", False)),
        "status": attrs.get("status"),
        "train_loss": attrs.get("train_loss"),
        "valid": attrs.get("valid"),
        "test": attrs.get("test"),
        "best_valid": attrs.get("best_valid"),
        "test_at_best_valid": attrs.get("test_at_best_valid"),
        "metric": attrs.get("metric"),
        "epochs": attrs.get("epochs"),
        "steps": attrs.get("steps"),
        "steps_per_epoch": attrs.get("steps_per_epoch"),
        "train_samples": attrs.get("train_samples"),
        "retry_of": attrs.get("retry_of"),
        "stale": bool(attrs.get("stale", False)),
        "error": attrs.get("error"),
        "message": attrs.get("message"),
        "run_dir": in_sweep(attrs.get("run_dir"), out),
        "seconds": attrs.get("seconds"),
        "config": config,
    }


def trials_report(spec: SweepSpec, study: optuna.Study) -> dict[str, Any]:
    dataset = spec.trial_config({a: v[0] for a, v in spec.grid.items()}).dataset
    task = task_of(dataset)
    return {
        "format": FORMAT,
        "study_name": study.study_name,
        "storage": in_sweep(spec.storage_location(), Path(spec.out)),
        "direction": study.direction.name.lower(),
        "objective": spec.objective,
        "dataset": dataset,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "sampler": spec.sampler,
        "grid": spec.grid,
        "ranges": spec.ranges,
        "settings": spec.settings,
        "trials": [trial_record(t, Path(spec.out)) for t in study.get_trials(deepcopy=False)],
    }


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_outputs(spec: SweepSpec, study: optuna.Study) -> dict[str, Any]:
    """trials.json, the figures (unless ``spec.plot`` is off) and recipe.json (when a μP
    trial at the base shapes finished)."""
    out = Path(spec.out)
    report = trials_report(spec, study)
    write_json(out / "trials.json", report)
    recipe = best_settings(report["trials"], report["higher_is_better"], spec.objective)
    if recipe is not None:
        recipe["sweep"] = out.resolve().name  # the folder it came from, by name: no machine's path
        write_json(out / "recipe.json", recipe)
    if spec.plot:
        plot_transfer(report, out)
    return report


def _curves(trials: list[dict[str, Any]], by: str, fixed: dict[str, Any]) -> dict:
    """``{(mup, value of by): {log2 lr: [trials]}}`` of the finished trials matching ``fixed``."""
    curves: dict[tuple[bool, Any], dict[float, list[dict[str, Any]]]] = {}
    for t in trials:
        c = t["config"]
        if t["state"] != "COMPLETE" or c is None:
            continue
        if any(c[k] != v for k, v in fixed.items()):
            continue
        curves.setdefault((c["mup"], c[by]), {}).setdefault(math.log2(c["lr"]), []).append(t)
    return curves


def plot_transfer(report: dict[str, Any], out: Path) -> list[Path]:
    """Write transfer_width.png when widths vary, transfer_depth.png when depths vary (the
    width figure alone when neither does); returns the paths."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
    from matplotlib.ticker import MaxNLocator

    trials = [t for t in report["trials"] if t["config"] is not None]
    if not trials:
        return []
    objective = report.get("objective", "final")
    base = trials[0]["config"]
    figures = {
        name: (by, fixed, _curves(trials, by, fixed))
        for by, fixed, name in (
            ("width", {"layers": base["base_layers"]}, "transfer_width.png"),
            ("layers", {"width": base["base_width"]}, "transfer_depth.png"),
        )
    }
    varies = {name: len({key[1] for key in curves}) > 1 for name, (_, _, curves) in figures.items()}
    # One width's lr curve is worth a figure only when nothing else is drawn (a plain lr sweep).
    if varies["transfer_depth.png"] and not varies["transfer_width.png"]:
        del figures["transfer_width.png"]
    elif not varies["transfer_depth.png"]:
        del figures["transfer_depth.png"]
    written = []
    for name, (by, fixed, curves) in figures.items():
        values = sorted({key[1] for key in curves})
        params = sorted({key[0] for key in curves}, reverse=True)  # μP first
        if not params:
            continue
        colours = colormaps["viridis"].resampled(max(len(values), 2))
        fig = Figure(figsize=(5 * len(params), 7.5))
        axes = fig.subplots(2, len(params), sharex=True, sharey="row", squeeze=False)
        for col, mup in enumerate(params):
            for i, value in enumerate(values):
                points = sorted(curves.get((mup, value), {}).items())
                for row, key in enumerate(("train_loss", OBJECTIVES[objective])):
                    xs, ys = [], []
                    for x, at in points:
                        if any(t["diverged"] or t[key] is None for t in at):
                            continue
                        xs.append(x)
                        ys.append(sum(t[key] for t in at) / len(at))
                    axes[row][col].plot(xs, ys, marker=".", color=colours(i), label=f"{by} {value}")
            axes[0][col].set_title("μP" if mup else "SP")
            axes[1][col].set_xlabel("log2 learning rate")
            axes[1][col].xaxis.set_major_locator(MaxNLocator(integer=True))  # lrs are 2^k
        steps = sorted({t["steps"] for t in trials if t["steps"]})
        axes[0][0].set_ylabel(
            f"training loss (mean over the last epoch, {trials[0]['steps_per_epoch']} steps)"
        )
        judged = "validation" if objective == "final" else "best validation"
        axes[1][0].set_ylabel(f"{judged} {report['metric']}")
        axes[0][-1].legend(fontsize=8)
        fixed_text = ", ".join(f"{k} {v}" for k, v in fixed.items())
        fig.suptitle(
            f"{report['dataset']}: {fixed_text}, {'/'.join(map(str, steps))} steps, "
            f"{trials[0]['train_samples']} train graphs",
            fontsize=10,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    return written
