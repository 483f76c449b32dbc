"""Stop requests: Ctrl-C / SIGTERM and the ``--max-minutes`` budget, honoured between steps.

A signal only sets a flag; the loop sees it at the next step boundary, saves a checkpoint
there and returns, so ``--resume`` continues exactly where the run stopped. A second signal
gets the default behaviour (an immediate stop) for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager that records the first SIGINT/SIGTERM and watches a time budget."""

    def __init__(self, max_minutes: float | None = None) -> None:
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.signum is None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.out_of_time

    @property
    def reason(self) -> str:
        if self.signum is not None:
            return f"stopped by {signal.Signals(self.signum).name}"
        return "stopped at the --max-minutes budget"
