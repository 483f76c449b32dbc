"""What a training run tells: its console lines and the records it leaves in ``--out``.

Only the main rank prints or writes. Lines on stdout: a banner with the data, model and device;
one line per epoch; a last line saying how the run ended (divergence is reported by the
caller: the CLI prints it in one line on stderr). Files: one ``metrics.jsonl`` record per epoch
and ``summary.json`` (:class:`~.rundir.RunDir`), rewritten after every epoch and at the end.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from pyg_mup.data import Task

from .config import TrainConfig
from .distributed import Dist
from .factory import count_parameters
from .progress import Progress
from .rundir import RunDir
from .workload import GraphWorkload, NodeWorkload


class Report:
    """The run's console lines, ``metrics.jsonl`` records and ``summary.json``.

    Args:
        config: the run's settings.
        task: the dataset's task (its metric names the numbers).
        workload: the batches (sizes in the banner and summary).
        model: the model (its parameter count).
        dist: this process's place in the job (only the main rank prints or writes).
        device: the device the run trains on.
        files: the output folder.
    """

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        workload: GraphWorkload | NodeWorkload,
        model: nn.Module,
        dist: Dist,
        device: torch.device,
        files: RunDir,
    ) -> None:
        self.config, self.task, self.workload = config, task, workload
        self.model, self.dist, self.device, self.files = model, dist, device, files

    def log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def show_progress_bar(self) -> bool:
        """A progress bar on the main rank: ``--progress``/``--no-progress``, else when stderr is
        a terminal."""
        if not self.dist.is_main:
            return False
        if self.config.progress is not None:
            return self.config.progress
        return sys.stderr.isatty()

    def banner(self) -> str:
        c = self.config
        mode = f"μP (base width {c.base_width})" if c.mup else "SP"
        where = f"{self.device}" + (f" × {self.dist.world_size}" if self.dist.enabled else "")
        return (
            f"{c.dataset} ({self.workload.describe()}; {self.task.task_type}, "
            f"{self.task.metric}) | width {self._width()}, {c.layers} layers, {c.heads} heads, "
            f"{c.attention} attention, {mode} | {count_parameters(self.model):,} params | "
            f"{where}"
        )

    @property
    def built_width(self) -> int:
        """The width the model was built at (``--match-parameters`` widens the baseline)."""
        return getattr(self.model, "width", self.config.width)

    def _width(self) -> str:
        if self.built_width == self.config.width:
            return str(self.built_width)
        return (
            f"{self.built_width} (--match-parameters: the GraphTransformer's size at "
            f"{self.config.width})"
        )

    def already_trained(self, progress: Progress) -> None:
        """The line of a ``--resume`` of a run that has trained all its epochs."""
        self.log(f"{self.files.path}: already trained {progress.epoch}/{self.config.epochs} epochs")

    def epoch(
        self,
        progress: Progress,
        train_loss: float,
        metrics: dict[str, float | None],
        lr: float,
        seconds: float,
    ) -> None:
        """Record the epoch that ``progress`` has just closed: its ``metrics.jsonl`` line, the
        running summary and its console line. ``metrics`` ``{'valid', 'test'}`` (``None``: not
        evaluated this epoch), ``lr`` the learning rate the schedule has reached, ``seconds``
        the epoch's training and evaluation time."""
        p, m = progress, self.task.metric
        record = {
            "epoch": p.epoch,
            "train_loss": train_loss,
            "valid": metrics["valid"],
            "test": metrics["test"],
            "metric": m,
            "lr": lr,
            "seconds": round(seconds, 3),
        }
        if self.dist.is_main:
            self.files.append_metrics(record)
            self.files.write_summary(self.summary(p, "running"))
        best = p.best
        self.log(
            f"epoch {p.epoch:>3}/{self.config.epochs} | train loss {train_loss:.4f} | valid {m} "
            f"{_fmt(metrics['valid'])} | test {m} {_fmt(metrics['test'])} | best valid "
            f"{_fmt(best['valid'])} @ {best['epoch']} | {seconds:.1f}s"
        )

    def summary(self, progress: Progress, status: str) -> dict[str, Any]:
        """``summary.json``'s content: settings, size, best and last metrics, ``status``."""
        c, p = self.config, progress
        return {
            "dataset": c.dataset,
            "metric": self.task.metric,
            "higher_is_better": self.task.higher_is_better,
            "best_epoch": p.best["epoch"],
            "best_valid": p.best["valid"],
            "test_at_best_valid": p.best["test"],
            "final_valid": p.last["valid"],
            "final_test": p.last["test"],
            "epochs": c.epochs,
            "epochs_completed": p.epoch,
            "status": status,
            "num_params": count_parameters(self.model),
            "mup": c.mup,
            "width": c.width,
            "model_width": self.built_width,
            "base_width": c.base_width if c.mup else None,
            "layers": c.layers,
            "heads": c.heads,
            "attention": c.attention if self.task.level == "graph" else "local",
            "lr": c.lr,
            "depth_parametrization": c.depth_parametrization,
            "base_layers": c.base_layers,
            "zero_query": c.zero_query,
            "batch_size": c.batch_size,
            "train_samples": self.workload.num_train,
            "steps_per_epoch": self.workload.steps_per_epoch(),
            "seed": c.seed,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "seconds": round(p.seconds, 3),
            "out": str(self.files.path),
        }

    def finish(
        self,
        progress: Progress,
        status: str,
        signum: int | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Write the final summary (with the stopping ``signum`` and divergence ``message``),
        print how the run ended, and return the summary."""
        summary = self.summary(progress, status)
        summary["signal"] = signum
        summary["message"] = message
        if self.dist.is_main:
            self.files.write_summary(summary)
        p, m = progress, self.task.metric
        if status == "diverged":
            pass  # the caller reports it (the CLI in one line on stderr)
        elif status == "complete":
            self.log(
                f"test {m} {_fmt(p.best['test'])} at best valid {m} {_fmt(p.best['valid'])} "
                f"(epoch {p.best['epoch']}); outputs in {self.files.path}"
            )
        else:
            self.log(
                f"{status} at epoch {p.epoch + 1}, step {p.step}; checkpoint saved: continue "
                f"with --resume --out {self.files.path}"
            )
        return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
