"""What every benchmark here shares: timing (CUDA-synchronised on GPU, wall time on CPU), the
dynamo compile count, the environment and commit a result was measured on, the atomically
rewritten JSON, and markdown tables. Benchmarks measure; nothing here asserts."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch._dynamo
import torch_geometric
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    """Wait for the device's queue (a no-op on CPU, where ops finish before they return)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimes:
    """Per-step ms of a loop without a host sync inside it: CUDA events on GPU (read after the
    loop's closing :func:`sync`), wall time on CPU. ``with times.step(): ...`` times one step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    @contextmanager
    def step(self) -> Iterator[None]:
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self.marks.append((begin, end))
        else:
            start = time.perf_counter()
            yield
            self.marks.append((time.perf_counter() - start) * 1e3)

    def ms(self) -> list[float]:
        """The steps' ms; on CUDA only after the device has been synchronised."""
        return [b.elapsed_time(e) for b, e in self.marks] if self.cuda else list(self.marks)


def timed_call(fn: Callable, device: torch.device, reps: int) -> tuple:
    """``(last result, median wall ms)`` of ``fn`` over ``reps`` synced calls after a warm-up."""
    fn()
    times, result = [], None
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return result, statistics.median(times)


def iteration_ms(step: Callable, device: torch.device, iters: int) -> list[float]:
    """Per-iteration ms of ``iters`` calls of ``step`` (:class:`StepTimes`)."""
    times = StepTimes(device)
    for _ in range(iters):
        with times.step():
            step()
    sync(device)
    return times.ms()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process."""
    return counters["stats"]["unique_graphs"]


def raise_recompile_limit(limit: int = 256) -> None:
    """Shapes change from batch to batch (and case to case): past dynamo's default limit of 8
    recompiles, compiled FlexAttention falls back to eager, which materialises N×N scores."""
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


# --------------------------------------------------------------------------------- environment
def git_state() -> dict:
    """The checkout's ``commit`` (``git rev-parse HEAD``) and whether tracked files differ from
    it (``dirty``): a result is reproducible from its commit only when it was not dirty.
    ``None`` for both outside a git checkout."""

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return dict(commit=commit, dirty=bool(status) if status is not None else None)


def environment(device: torch.device, **fields) -> dict:
    """The versions, device, CPU threads, date, commit and command line of a run, then the
    benchmark's own ``fields`` (its settings)."""
    cuda = device.type == "cuda"
    return dict(
        torch=torch.__version__, torch_geometric=torch_geometric.__version__,
        cuda=torch.version.cuda, device=torch.cuda.get_device_name(device) if cuda else "cpu",
        cpu_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_state(), argv=sys.argv[1:],
        recompile_limit=getattr(torch._dynamo.config, "recompile_limit", None), **fields,
    )  # fmt: skip


def error_text(error: BaseException) -> str:
    """How a failed case or model is recorded: the exception's type and message, capped."""
    return f"{type(error).__name__}: {error}"[:2000]


def write_json(path: Path, payload: dict) -> None:
    """Rewrite ``path`` atomically (a temporary file, then ``os.replace``): a run cut short
    leaves the last complete JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- tables
def fmt(value: object, spec: str) -> str:
    """``format(value, spec)``, or an empty cell for a value not measured."""
    return "" if value is None else format(value, spec)


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; a column whose title ends with ``:`` is right-aligned (numbers)."""
    rule = "|" + "|".join("---:" if c.endswith(":") else "---" for c in columns) + "|"
    lines = [[c.removesuffix(":") for c in columns], *rows]
    header, *body = ("| " + " | ".join(cells) + " |" for cells in lines)
    return "\n".join([header, rule, *body])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either was not measured."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
