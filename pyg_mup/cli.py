"""``pyg-mup``: the command line. ``pyg-mup train --help`` lists every training flag.

Errors in what the user asked for (an unknown dataset, a missing root, ``--width`` not
divisible by ``--heads``, an unreadable checkpoint, ...) print one line and exit with status 2,
before anything in ``--out`` is written. A run stopped by Ctrl-C or SIGTERM saves a checkpoint
and exits with 128 + the signal number (130 / 143), as shells expect. A run whose training loss
becomes nan/inf stops with one line, keeps its last good checkpoint and exits with 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyg_mup.data import EMBEDDED_DATASET, DatasetError, known_datasets, task_of
from pyg_mup.train import CheckpointError, ConfigError, RunDirError, TrainConfig, train
from pyg_mup.train.config import GROUPS, SETTINGS, parse_setting, settings_in, value_type

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
    commands.add_parser("datasets", help="list the OGB datasets pyg-mup can train on")
    return parser


def _explicit(argv: Sequence[str]) -> set[str]:
    """The ``train`` settings named on the command line."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_setting_arguments(parser, with_defaults=False)
    return set(vars(parser.parse_known_args(argv)[0]))


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
    if args.command != "train":
        parser.print_help()
        return 2
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        summary = train(TrainConfig(**settings), explicit=_explicit(argv[1:]))
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
