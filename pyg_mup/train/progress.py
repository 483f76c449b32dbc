"""Where a training run is: the state that the loop advances, the checkpoint carries and the
report prints (epochs and steps done, the open epoch's partial loss sums, best and last metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Where the run is: ``epoch`` epochs done, ``step`` steps into the next one."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_count: float = 0.0
    epoch_seconds: float = 0.0
    seconds: float = 0.0
    best: dict[str, Any] = field(
        default_factory=lambda: {"epoch": None, "valid": None, "test": None}
    )
    last: dict[str, Any] = field(default_factory=lambda: {"valid": None, "test": None})
