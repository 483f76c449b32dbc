"""Atomic checkpoints and RNG states, so ``--resume`` continues a run bit for bit.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder,
flushed to disk and renamed over the old one (``os.replace`` is atomic on POSIX), so a crash or
Ctrl-C mid-write leaves the previous checkpoint intact. It holds only tensors and plain Python
values: it loads with ``torch.load(weights_only=True)``.

A run writes two (:func:`save_run`, :func:`save_best`): ``kind='train'``, everything
``--resume`` needs (settings, :class:`~.progress.Progress`, model, optimizer and scheduler
states, every rank's RNG states), which :func:`restore_run` puts back; and ``kind='best'``, the
settings and weights at the best validation metric.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .distributed import Dist, barrier, gather_objects
from .progress import Progress

if TYPE_CHECKING:
    from .config import TrainConfig

FORMAT = "pyg_mup.train/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates files 0600; give the result the permissions open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format tag) to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; :class:`CheckpointError` if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyg_mup training checkpoint ({FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python), as tensors and tuples."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where there are as many GPUs)."""
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == (torch.cuda.device_count())
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def save_run(
    path: Path,
    dist: Dist,
    config: TrainConfig,
    progress: Progress,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
) -> None:
    """Write the ``--resume`` checkpoint on the main rank; every rank hands in its RNG state and
    waits until it is written (call it on every rank)."""
    rng = gather_objects(rng_state())
    if dist.is_main:
        save(
            path,
            {
                "kind": "train",
                "config": config.to_dict(),
                "progress": asdict(progress),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
            },
        )
    barrier()


def save_best(path: Path, dist: Dist, config: TrainConfig, epoch: int, model: nn.Module) -> None:
    """Write the best weights so far (after ``epoch`` epochs) and their settings, on the main
    rank."""
    if dist.is_main:
        save(
            path,
            {
                "kind": "best",
                "config": config.to_dict(),
                "epoch": epoch,
                "model": model.state_dict(),
            },
        )


def restore_run(
    state: dict[str, Any],
    dist: Dist,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
) -> Progress:
    """Load a :func:`save_run` checkpoint's states into the run; return its progress.

    This rank's RNG state is restored when the run has as many processes as the one that saved
    it; with another count the data order is still the same (it comes from the seed and epoch),
    so the run continues, with a warning that dropout noise will differ.
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = Progress(**state["progress"])
    rng = state["rng"]
    if len(rng) == dist.world_size:
        set_rng_state(rng[dist.rank])
    elif dist.is_main:
        warnings.warn(
            f"resuming a {len(rng)}-process run with {dist.world_size} processes: "
            "data order is unchanged but dropout noise will differ",
            stacklevel=2,
        )
    return progress
