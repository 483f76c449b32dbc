"""``pyg-mup``: the command line. ``pyg-mup train --help`` lists every training flag.

Errors in what the user asked for (an unknown dataset, a missing root, ``--width`` not
divisible by ``--heads``, an unreadable checkpoint, ...) print one line and exit with status 2,
before anything in ``--out`` is written. A run (or a sweep) stopped by Ctrl-C or SIGTERM saves
a checkpoint and exits with 128 + the signal number (130 / 143), as shells expect. A run whose
training loss becomes nan/inf stops with one line, keeps its last good checkpoint and exits
with 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyg_mup.data import EMBEDDED_DATASET, DatasetError, known_datasets, task_of
from pyg_mup.sweep import SweepError, load_recipe, recipe_values
from pyg_mup.sweep.space import OBJECTIVES
from pyg_mup.train import CheckpointError, ConfigError, RunDirError, TrainConfig, train
from pyg_mup.train.config import GROUPS
from pyg_mup.train.settings import SETTINGS, parse_setting, settings_in, value_type

USER_ERRORS = (ConfigError, RunDirError, DatasetError, CheckpointError)
DIVERGED = 3
"""Exit status of a run stopped because its loss became nan/inf (summary.json: 'diverged')."""


def _argument_type(name: str):
    """argparse ``type=`` for a setting: its own parser or the annotation's type, with errors
    argparse prints as one line."""

    def convert(text: str):
        try:
            return parse_setting(name, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = value_type(name).__name__  # argparse names the type in its errors
    return convert


def add_setting_arguments(
    parser: argparse.ArgumentParser, with_defaults: bool, exclude: frozenset[str] = frozenset()
) -> None:
    """One ``--flag`` per :class:`TrainConfig` field (its metadata says how), in argument
    groups by setting group; without defaults, parsing tells which flags were given."""
    default = TrainConfig()
    for group in GROUPS:
        arguments = parser.add_argument_group(group)
        for name in settings_in(group):
            if name in exclude:
                continue
            meta = SETTINGS[name].metadata
            value = getattr(default, name)
            help_text = meta["help"]
            if "default" not in help_text and value is not None and meta["flag"] != "store_true":
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
                help_text += f" (default: {shown})".replace("%", "%%")
            kwargs: dict = {"help": help_text, "dest": name}
            if with_defaults:
                kwargs["default"] = value
            if meta["flag"] == "switch":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta["flag"] == "store_true":
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = _argument_type(name)
                if meta["choices"] is not None:
                    kwargs["choices"] = meta["choices"]
                if meta["metavar"] is not None:
                    kwargs["metavar"] = meta["metavar"]
            arguments.add_argument(f"--{name.replace('_', '-')}", **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyg-mup", description="FlexAttention graph transformers with μP, on OGB."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train_parser = commands.add_parser(
        "train",
        help="train a graph transformer on an OGB dataset",
        description="Train on an OGB dataset (default: the embedded ogbg-molesol), writing "
        "OUT/metrics.jsonl, OUT/summary.json and checkpoints. Under torchrun, data-parallel.",
    )
    add_setting_arguments(train_parser, with_defaults=True)
    train_parser.add_argument(
        "--recipe",
        metavar="FILE",
        help="start from a sweep's recipe.json (its settings and base shapes, and the width "
        "and depth it was chosen at); the flags given here override it, e.g. --width 1024 "
        "--layers 16",
    )
    sweep_parser = commands.add_parser(
        "sweep",
        help="tune on Optuna: a μTransfer grid or a sampler over ranges; writes a recipe",
        description="Run (or resume) a sweep in --out: one Optuna study, each trial one "
        "`pyg-mup train` run. Writes OUT/trials.json, OUT/transfer_width.png (and "
        "transfer_depth.png), OUT/recipe.json. The `train` flags below fix every trial's "
        "settings; any setting may instead be a --grid or --range axis.",
        argument_default=argparse.SUPPRESS,
    )
    _add_sweep_arguments(sweep_parser)
    commands.add_parser("datasets", help="list the OGB datasets pyg-mup can train on")
    return parser


SWEEP_OWNED = frozenset({"out", "resume", "overwrite", "progress"})
"""``train`` settings the sweep sets itself for each trial."""

SMOKE = {
    "settings": {
        "layers": 1,
        "heads": 2,
        "epochs": 1,
        "batch_size": 32,
        "max_samples": 64,
        "warmup_steps": 1,
    },
    "grid": {"width": [16, 32], "log2_lr": [-8, -4]},
}
"""``--smoke``: 4 tiny trials on the embedded dataset (seconds on a CPU core)."""


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--out", required=True, metavar="DIR", help="the sweep folder")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="an axis and its values: any train setting (width, layers, seed, dropout, "
        "weight_decay, ...), log2_lr or parametrization (mup,sp); repeat for more axes",
    )
    sweep.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH[:log]",
        help="an axis sampled in [LOW, HIGH] (samplers other than grid)",
    )
    sweep.add_argument(
        "--sampler",
        default=None,
        help="grid (default with --grid only), tpe (default with --range), random, cmaes, "
        "or any optuna.samplers class name",
    )
    sweep.add_argument("--trials", type=int, default=None, help="trial budget of a sampler")
    sweep.add_argument(
        "--objective",
        choices=tuple(OBJECTIVES),
        default=None,
        help="judge trials on the validation metric after the last epoch (final, the "
        "default) or at the best evaluated epoch (best, OGB's convention; with --eval-every 1)",
    )
    sweep.add_argument("--sampler-seed", type=int, default=0)
    sweep.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage URL (sqlite:///f.db, postgresql://...) or a journal file path "
        "shared by several machines (default: OUT/study.journal)",
    )
    sweep.add_argument("--study-name", default="sweep")
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local worker processes sharing the storage, one torch thread each; with "
        "--device cuda they share the GPU",
    )
    sweep.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds without a heartbeat before another machine's RUNNING trial is re-run "
        "(dead processes on this machine are seen at once) (default: 300)",
    )
    sweep.add_argument("--no-plot", action="store_true", default=False, help="no figures")
    sweep.add_argument(
        "--report",
        action="store_true",
        default=False,
        help="run no trial: write trials.json, the figures and recipe.json from the storage as "
        "it stands (a sweep stopped early, or one still running on other machines); takes "
        "only --out, --storage, --study-name and --no-plot: the rest is stored with the study",
    )
    sweep.add_argument(
        "--smoke",
        action="store_true",
        default=False,
        help="4 tiny trials (width 16,32 x log2 lr -8,-4, 1 epoch, 64 graphs) on the "
        "embedded dataset, unless the flags given say otherwise",
    )
    add_setting_arguments(parser, with_defaults=False, exclude=SWEEP_OWNED)


def _axes(items: list[str], kind: str) -> dict:
    """``NAME=...`` items of --grid / --range as a dict (:class:`SweepError` if malformed)."""
    from pyg_mup.sweep.space import parse_axis_value

    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not text:
            raise SweepError(
                f"--{kind} {item!r}: expected NAME={'V1,V2' if kind == 'grid' else 'LOW:HIGH'}"
            )
        name = name.replace("-", "_")
        if name in out:
            raise SweepError(f"--{kind} {name} given twice")
        if kind == "grid":
            out[name] = [parse_axis_value(name, v) for v in text.split(",")]
        else:
            parts = text.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise SweepError(f"--range {item!r}: expected NAME=LOW:HIGH or NAME=LOW:HIGH:log")
            try:
                out[name] = [float(parts[0]), float(parts[1]), len(parts) == 3]
            except ValueError:
                raise SweepError(f"--range {item!r}: LOW and HIGH must be numbers") from None
    return out


def _sweep(args: argparse.Namespace) -> int:
    from pyg_mup.sweep import SweepSpec, report_sweep, run_sweep

    values = vars(args)
    if args.report:
        given = _given_sweep_flags(values)
        if given:
            raise SweepError(f"--report takes its sweep's settings from the storage, not {given}")
        report = report_sweep(args.out, args.storage, args.study_name, not args.no_plot)
        return _summary(report, args.out)
    own = {"out", "grid", "range", "sampler", "trials", "sampler_seed", "storage", "study_name"}
    own |= {"workers", "stale_after", "no_plot", "report", "smoke", "command", "objective"}
    settings = {k: v for k, v in values.items() if k not in own}
    grid, ranges = _axes(args.grid, "grid"), _axes(args.range, "range")
    if args.smoke:
        settings = {**SMOKE["settings"], **settings}
        if not grid and not ranges:
            grid = dict(SMOKE["grid"])
    sampler = args.sampler or ("grid" if not ranges else "tpe")
    spec = SweepSpec(
        out=args.out,
        settings=settings,
        grid=grid,
        ranges=ranges,
        sampler=sampler,
        trials=args.trials,
        sampler_seed=args.sampler_seed,
        storage=args.storage,
        study_name=args.study_name,
        workers=args.workers,
        stale_after=args.stale_after,
        plot=not args.no_plot,
        objective=args.objective or "final",
    )
    return _summary(run_sweep(spec), args.out)


def _given_sweep_flags(values: dict) -> str:
    """The flags beside ``--report`` that would change the sweep, as the user wrote them."""
    ignored = [name for name in values if name in SETTINGS and name not in SWEEP_OWNED]
    ignored += [kind for kind in ("grid", "range", "smoke") if values[kind]]
    ignored += ["sampler"] if values["sampler"] else []
    ignored += [k for k in ("trials", "objective") if values[k] is not None]
    return " ".join(f"--{name.replace('_', '-')}" for name in ignored)


def _summary(report: dict, out: str) -> int:
    """Print the trials' states; 0, or 128 + the signal that stopped the sweep (as ``train``)."""
    states = [t["state"] for t in report["trials"]]
    diverged = sum(t["diverged"] for t in report["trials"])
    print(
        f"{states.count('COMPLETE')} trials complete ({diverged} diverged), "
        f"{states.count('FAIL')} failed, {states.count('RUNNING') + states.count('WAITING')} "
        f"not finished; outputs in {out}"
    )
    stopped_by = report.get("stopped_by")
    if stopped_by is not None:
        print(f"pyg-mup: sweep stopped by signal {stopped_by}; the same command resumes it")
        return 128 + stopped_by
    return 0


def _explicit(argv: Sequence[str]) -> set[str]:
    """The ``train`` settings named on the command line."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_setting_arguments(parser, with_defaults=False)
    return set(vars(parser.parse_known_args(argv)[0])) & set(SETTINGS)


def _list_datasets() -> int:
    for name in known_datasets():
        task = task_of(name)
        mark = "  (embedded)" if name == EMBEDDED_DATASET else ""
        print(f"{name:<18} {task.level:<5} {task.task_type:<26} {task.metric}{mark}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyg-mup``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "datasets":
        return _list_datasets()
    if args.command == "sweep":
        try:
            return _sweep(args)
        except (*USER_ERRORS, SweepError) as error:
            print(f"pyg-mup: error: {error}", file=sys.stderr)
            return 2
    if args.command != "train":
        parser.print_help()
        return 2
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "recipe")}
    explicit = _explicit(argv[1:])
    try:
        if args.recipe:
            recipe = recipe_values(load_recipe(args.recipe))
            # Unless given, the shapes the recipe was chosen at, not the package's defaults.
            recipe = {"width": recipe["base_width"], "layers": recipe["base_layers"], **recipe}
            settings.update({k: v for k, v in recipe.items() if k not in explicit})
            explicit |= set(recipe)
        summary = train(TrainConfig(**settings), explicit=explicit)
    except USER_ERRORS as error:
        print(f"pyg-mup: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only before training starts: from then on Ctrl-C saves a checkpoint instead.
        print("pyg-mup: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    return _exit_status(summary)


def _exit_status(summary: dict) -> int:
    """0 when complete, 128 + signal when stopped by one, :data:`DIVERGED` when diverged."""
    if summary["status"] == "diverged":
        done = summary["epochs_completed"]
        kept = (
            f"the checkpoint of epoch {done} (the last good one) is in {summary['out']}"
            if done
            else "no epoch had finished, so there is no checkpoint"
        )
        print(f"pyg-mup: diverged: {summary['message']}; {kept}", file=sys.stderr)
        return DIVERGED
    return 128 + summary["signal"] if summary.get("signal") else 0


if __name__ == "__main__":
    sys.exit(main())
