"""``pyg-mup``: the command line. ``pyg-mup train --help`` lists every training flag.

Errors in what the user asked for (an unknown dataset, a missing root, ``--width`` not
divisible by ``--heads``, an unreadable checkpoint, ...) print one line and exit with status 2,
before anything in ``--out`` is written. A run stopped by Ctrl-C or SIGTERM saves a checkpoint
and exits with 128 + the signal number (130 / 143), as shells expect.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyg_mup.data import EMBEDDED_DATASET, DatasetError, known_datasets, task_of
from pyg_mup.models import ATTENTION_KINDS
from pyg_mup.train import CheckpointError, ConfigError, RunDirError, TrainConfig, train
from pyg_mup.train.config import LR_SCHEDULES, NODE_BATCHING

USER_ERRORS = (ConfigError, RunDirError, DatasetError, CheckpointError)


def _neighbors(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 15,10, got {text!r}") from None


def _add_train_arguments(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    """Every ``train`` flag; without defaults, parsing tells which flags were given."""
    d = TrainConfig()

    group = parser.add_argument_group("data")

    def add(*flags: str, default: object = None, **kwargs: object) -> None:
        if with_defaults:
            kwargs["default"] = default
        group.add_argument(*flags, **kwargs)

    add(
        "--dataset",
        default=d.dataset,
        metavar="NAME",
        help=f"OGB dataset, e.g. ogbg-molhiv or ogbn-arxiv (default: {EMBEDDED_DATASET}, "
        "shipped with the package); `pyg-mup datasets` lists them",
    )
    add(
        "--root",
        metavar="DIR",
        help="folder holding <name with _>/ in OGB's layout, or where ogb may download it "
        "(default: the embedded copy, else ~/.cache/pyg_mup/ogb); read-only roots are copied",
    )
    add(
        "--cache-dir",
        metavar="DIR",
        help="where read-only roots are copied (default: $PYG_MUP_CACHE or ~/.cache/pyg_mup)",
    )
    add(
        "--max-samples",
        type=int,
        metavar="N",
        help="use only the first N graphs/nodes of each split (quick checks)",
    )
    add(
        "--num-workers",
        default=d.num_workers,
        type=int,
        metavar="N",
        help="DataLoader worker processes (default: %(default)s)",
    )
    add(
        "--node-batching",
        default=d.node_batching,
        choices=NODE_BATCHING,
        help="ogbn-*: whole graph per step, or NeighborLoader mini-batches "
        "(default: auto, by size)",
    )
    add(
        "--num-neighbors",
        default=d.num_neighbors,
        type=_neighbors,
        metavar="K1,K2",
        help="ogbn-* sampled batches: neighbours per hop (default: 15,10)",
    )

    group = parser.add_argument_group("model")
    add("--width", default=d.width, type=int, help="model width (default: %(default)s)")
    add("--layers", default=d.layers, type=int, help="Transformer blocks (default: %(default)s)")
    add("--heads", default=d.heads, type=int, help="attention heads (default: %(default)s)")
    add(
        "--attention",
        default=d.attention,
        choices=ATTENTION_KINDS,
        help="along edges, over whole graphs, or both summed (GPS) (default: %(default)s)",
    )
    add(
        "--max-distance",
        default=d.max_distance,
        type=int,
        metavar="D",
        help="hop distances embedded by global attention (default: %(default)s)",
    )
    add("--dropout", default=d.dropout, type=float, help="(default: %(default)s)")
    add(
        "--mup",
        default=d.mup,
        action=argparse.BooleanOptionalAction,
        help="μP (default) or, with --no-mup, the standard-parametrization twin",
    )
    add(
        "--base-width",
        default=d.base_width,
        type=int,
        help="μP base width: the width the learning rate is tuned at (default: %(default)s)",
    )

    group = parser.add_argument_group("optimization")
    add(
        "--epochs",
        default=d.epochs,
        type=int,
        help="total epochs, also when resuming (default: %(default)s)",
    )
    add(
        "--batch-size",
        default=d.batch_size,
        type=int,
        help="graphs (or seed nodes) per step, over all processes (default: %(default)s)",
    )
    add(
        "--eval-batch-size",
        default=d.eval_batch_size,
        type=int,
        help="graphs (or nodes) per evaluation batch and process (default: %(default)s)",
    )
    add(
        "--eval-every",
        default=d.eval_every,
        type=int,
        metavar="K",
        help="evaluate every K epochs and after the last (default: %(default)s)",
    )
    add("--lr", default=d.lr, type=float, help="base learning rate (default: %(default)s)")
    add("--weight-decay", default=d.weight_decay, type=float, help="(default: %(default)s)")
    add(
        "--warmup-steps",
        default=d.warmup_steps,
        type=int,
        help="linear LR warm-up steps (default: %(default)s)",
    )
    add(
        "--lr-schedule",
        default=d.lr_schedule,
        choices=LR_SCHEDULES,
        help="after warm-up: constant, or cosine decay to 0 over --epochs (default: %(default)s)",
    )
    add(
        "--clip-grad",
        default=d.clip_grad,
        type=float,
        help="max gradient norm, 0 for none (default: %(default)s)",
    )
    add("--seed", default=d.seed, type=int, help="(default: %(default)s)")

    group = parser.add_argument_group("run")
    add(
        "--out",
        metavar="DIR",
        help="output folder: metrics.jsonl, summary.json, checkpoints (default: runs/<dataset>)",
    )
    add(
        "--resume",
        default=False,
        action="store_true",
        help="continue the run in --out from its checkpoint, up to --epochs",
    )
    add(
        "--overwrite",
        default=False,
        action="store_true",
        help="start over in an --out that holds a run",
    )
    add(
        "--device",
        default=d.device,
        help="auto (this rank's GPU, else CPU), cpu, cuda, cuda:N (default: %(default)s)",
    )
    add(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop cleanly (checkpoint saved) after M minutes",
    )
    add(
        "--progress",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="progress bar (default: when stderr is a terminal)",
    )


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
    _add_train_arguments(train_parser, with_defaults=True)
    commands.add_parser("datasets", help="list the OGB datasets pyg-mup can train on")
    return parser


def _explicit(argv: Sequence[str]) -> set[str]:
    """The ``train`` settings named on the command line."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _add_train_arguments(parser, with_defaults=False)
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
    return 128 + summary["signal"] if summary.get("signal") else 0


if __name__ == "__main__":
    sys.exit(main())
