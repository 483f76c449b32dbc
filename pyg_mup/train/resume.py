"""What a resumed run keeps: its stored settings, with only the :data:`RESUMABLE` ones (how
long, where, on what device) changed on the way."""

from __future__ import annotations

from typing import Any

from .config import ConfigError, TrainConfig, flag_name

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
                f"--{flag_name(name)} {value} differs from the run being resumed "
                f"({getattr(config, name)}); a resumed run keeps its settings (start a new --out "
                "to change them)"
            )
    config.resume = True
    return config
