"""The settings of a training run, their defaults and their checks.

Defaults train the embedded dataset (``ogbg-molesol``) on two CPU cores in a few minutes.
A run's settings are stored in its checkpoint; ``--resume`` takes them from there, and only the
:data:`RESUMABLE` ones (how long, where, on what device) may be changed on the way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pyg_mup.data import EMBEDDED_DATASET
from pyg_mup.models import ATTENTION_KINDS

RESUMABLE = frozenset(
    {
        "epochs",
        "max_minutes",
        "device",
        "num_workers",
        "progress",
        "resume",
        "overwrite",
        "out",
        "root",
        "cache_dir",
        "eval_batch_size",
        "eval_every",
    }
)
"""Settings that may differ between a run and its resumption (none changes the results)."""

NODE_BATCHING = ("auto", "full", "sampled")
LR_SCHEDULES = ("constant", "cosine")
FULL_GRAPH_MAX_EDGES = 5_000_000
"""``--node-batching auto`` trains full-graph up to this many edges, with sampling beyond."""


class ConfigError(ValueError):
    """Settings that cannot make a run, with a one-line message."""


@dataclass
class TrainConfig:
    """Every setting of ``pyg-mup train``; see ``pyg-mup train --help`` for each one."""

    dataset: str = EMBEDDED_DATASET
    root: str | None = None
    out: str | None = None
    cache_dir: str | None = None
    epochs: int = 60
    batch_size: int = 64
    eval_batch_size: int = 256
    eval_every: int = 1
    width: int = 128
    layers: int = 4
    heads: int = 4
    attention: str = "local"
    max_distance: int = 5
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    clip_grad: float = 1.0
    seed: int = 0
    mup: bool = True
    base_width: int = 64
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    max_minutes: float | None = None
    num_workers: int = 0
    max_samples: int | None = None
    node_batching: str = "auto"
    num_neighbors: tuple[int, ...] = field(default=(15, 10))
    progress: bool | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.dataset

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work."""
        positive = ("epochs", "batch_size", "eval_batch_size", "eval_every", "width", "layers")
        for name in (*positive, "heads", "base_width", "max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            nearest = self.heads * max(1, self.width // self.heads)
            raise ConfigError(
                f"--width {self.width} is not divisible by --heads {self.heads}: each head gets "
                f"width/heads channels (e.g. --width {nearest})"
            )
        if self.mup and self.base_width % self.heads:
            raise ConfigError(
                f"--base-width {self.base_width} is not divisible by --heads {self.heads}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"--attention must be one of {', '.join(ATTENTION_KINDS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.node_batching not in NODE_BATCHING:
            raise ConfigError(f"--node-batching must be one of {', '.join(NODE_BATCHING)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{_flag(name)} must be positive")
        for name in ("weight_decay", "clip_grad", "warmup_steps", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must not be negative")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("--max-minutes must be positive")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError("--max-samples must be a positive integer")
        if not self.num_neighbors or any(n < -1 or n == 0 for n in self.num_neighbors):
            raise ConfigError("--num-neighbors takes positive counts per hop (-1: all)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["num_neighbors"] = list(self.num_neighbors)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "num_neighbors" in values:
            values["num_neighbors"] = tuple(values["num_neighbors"])
        return cls(**values)

    def explicit_fields(self) -> set[str]:
        """Fields that differ from the defaults (what a Python caller set)."""
        default = TrainConfig()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def resumed_config(stored: dict[str, Any], given: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The run's stored settings, with the :data:`RESUMABLE` ones the user gave on top.

    Raises :class:`ConfigError` if the user explicitly asked for a different value of a setting
    that shapes the run (``--width``, ``--lr``, …): resuming cannot change it.
    """
    config = TrainConfig.from_dict(stored)
    for name in sorted(explicit):
        value = getattr(given, name)
        if name == "epochs" and config.lr_schedule == "cosine" and value != config.epochs:
            raise ConfigError(
                f"--epochs {value} differs from the run being resumed ({config.epochs}) and its "
                "--lr-schedule cosine decays over exactly those epochs"
            )
        if name in RESUMABLE:
            setattr(config, name, value)
        elif value != getattr(config, name):
            raise ConfigError(
                f"--{_flag(name)} {value} differs from the run being resumed "
                f"({getattr(config, name)}); a resumed run keeps its settings (start a new --out "
                "to change them)"
            )
    config.resume = True
    return config
