"""The files of a run in ``--out``: checkpoint, best weights, per-epoch metrics, summary.

- ``checkpoint.pt``: everything ``--resume`` needs (written atomically every epoch and on stop).
- ``best.pt``: the model weights and settings at the best validation metric so far.
- ``metrics.jsonl``: one JSON object per epoch.
- ``summary.json``: the run at a glance, rewritten after every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import checkpoint
from .checkpoint import atomic_write
from .config import ConfigError, TrainConfig
from .resume import resumed_config


class RunDirError(RuntimeError):
    """An output folder that cannot take this run, with a one-line message."""


class RunDir:
    """Paths and writers of one run's output folder (only the main rank writes)."""

    FILES = ("checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoint = path / "checkpoint.pt"
        self.best = path / "best.pt"
        self.metrics = path / "metrics.jsonl"
        self.summary = path / "summary.json"

    def existing(self) -> list[Path]:
        return [self.path / name for name in self.FILES if (self.path / name).exists()]

    def check_fresh(self, overwrite: bool) -> None:
        """Refuse to start a new run over an old one unless ``overwrite`` (checks only)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a folder")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RunDirError(f"--out {self.path}: {parent} is a file, not a folder")
                break
        if self.existing() and not overwrite:
            raise RunDirError(
                f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                "start over, or another --out"
            )

    def check_resumable(self) -> None:
        if not self.checkpoint.is_file():
            raise RunDirError(f"--resume: no checkpoint at {self.checkpoint}")

    def open_run(
        self, config: TrainConfig, explicit: set[str] | None
    ) -> tuple[TrainConfig, dict[str, Any] | None]:
        """``(config, state)`` of the run this folder is to take, checked before anything in it
        is written: a fresh run's ``config`` and ``None`` (refused over an old run without
        ``overwrite``); on ``--resume``, the stored settings with ``config``'s ``explicit`` ones
        applied (:func:`~.resume.resumed_config`) and the checkpoint to continue from.
        ``explicit`` ``None``: the settings that differ from the defaults."""
        if not config.resume:
            self.check_fresh(config.overwrite)
            return config, None
        self.check_resumable()
        state = checkpoint.load(self.checkpoint)
        explicit = config.explicit_fields() if explicit is None else explicit
        config = resumed_config(state["config"], config, explicit)
        config.validate()
        if state["progress"]["epoch"] > config.epochs:
            raise ConfigError(
                f"--epochs {config.epochs} is fewer than the {state['progress']['epoch']} "
                "epochs this run has already trained"
            )
        return config, state

    def begin(self, epochs_done: int | None) -> None:
        """Make the folder ready for this run's writes (main rank): a fresh run (``None``)
        creates it and removes an old run's files; a resumed one, ``epochs_done`` epochs in,
        drops the metric lines written after its checkpoint (:meth:`trim_metrics`)."""
        if epochs_done is None:
            self.start_fresh()
        else:
            self.trim_metrics(epochs_done)

    def start_fresh(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for path in self.existing():
            path.unlink()

    def trim_metrics(self, last_epoch: int) -> None:
        """Drop metric lines past ``last_epoch``: a run stopped after writing them but before its
        checkpoint would otherwise repeat those epochs in the file."""
        if not self.metrics.exists():
            return
        lines = [
            line
            for line in self.metrics.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= last_epoch
        ]
        text = "".join(f"{line}\n" for line in lines)
        atomic_write(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.summary, lambda f: f.write(text.encode()))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
