"""The training run: epochs of steps, evaluation with ``ogb``'s Evaluator, checkpoints, resume.

Determinism is a contract here: on CPU with one seed, ``--epochs 2`` and ``--epochs 1`` then
``--epochs 2 --resume`` give the same metrics, even when the first run was stopped mid-epoch,
because the epoch order comes from ``(seed, epoch)`` (:mod:`.workload`), the LR schedule from
the step count, and the checkpoint carries optimizer, scheduler, RNG states and the epoch's
partial sums. Data-parallel runs normalise each step's loss by the labelled entries of the
*global* batch, so K processes take the single-process step.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pyg_mup.data import load_dataset, make_evaluator

from . import checkpoint
from .config import FULL_GRAPH_MAX_EDGES, ConfigError, TrainConfig, resumed_config
from .distributed import Dist, all_reduce_sum, any_rank, barrier, gather_objects, setup, teardown
from .factory import (
    count_parameters,
    dataset_transform,
    make_model,
    make_optimizer,
    make_scheduler,
)
from .objective import Objective
from .rundir import RunDir
from .stopping import StopRequest
from .workload import GraphWorkload, NodeWorkload


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


def train(config: TrainConfig, explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) training as ``config`` says; return the summary (also in summary.json).

    Args:
        config: the run's settings.
        explicit: settings the user gave explicitly (checked against the stored ones on
            ``--resume``); ``None``: those that differ from the defaults.

    Raises:
        ConfigError, RunDirError, DatasetError, CheckpointError: with one-line messages, before
            anything in ``--out`` is written.
    """
    config.validate()
    check_device(config.device)
    dist, device = setup(config.device)
    try:
        return _Run(config, explicit, dist, device).run()
    finally:
        teardown()


def check_device(name: str) -> None:
    """:class:`ConfigError` for a ``--device`` this machine does not have (before any output)."""
    if not name.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: no CUDA device is available here (torch.cuda.is_available() is "
            "False); use --device cpu or auto"
        )
    index = name.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


class Diverged(Exception):
    """The training loss (or a prediction) became nan/inf: the run cannot continue."""


class _Run:
    def __init__(
        self, config: TrainConfig, explicit: set[str] | None, dist: Dist, device: torch.device
    ) -> None:
        self.dist, self.device = dist, device
        self.files = RunDir(config.out_dir)
        self.progress = Progress()
        state = None
        if config.resume:
            self.files.check_resumable()
            state = checkpoint.load(self.files.checkpoint)
            explicit = config.explicit_fields() if explicit is None else explicit
            config = resumed_config(state["config"], config, explicit)
            config.validate()
            if state["progress"]["epoch"] > config.epochs:
                raise ConfigError(
                    f"--epochs {config.epochs} is fewer than the {state['progress']['epoch']} "
                    "epochs this run has already trained"
                )
        else:
            self.files.check_fresh(config.overwrite)
        self.config = config

        self.data = self._load_data()
        self.task = self.data.task
        self.workload = self._make_workload()
        self.evaluator = make_evaluator(config.dataset)
        self.objective = Objective(self.task, self.workload.y_train())

        checkpoint.seed_everything(config.seed)
        self.model = make_model(config, self.task, self.workload.example).to(device)
        self.workload.prepare_for(self.model)
        self._pending_loss: tuple[torch.Tensor, int, int] | None = None
        self.optimizer = make_optimizer(config, self.model)
        total_steps = config.epochs * self.workload.steps_per_epoch()
        self.scheduler = make_scheduler(config, self.optimizer, total_steps)
        checkpoint.seed_everything(config.seed + dist.rank)
        if state is not None:
            self._restore(state)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            if dist.enabled
            else self.model
        )
        if dist.is_main:
            if state is None:
                self.files.start_fresh()
            else:
                self.files.trim_metrics(self.progress.epoch)

    # ------------------------------------------------------------------------------ set-up
    def _load_data(self):
        """Load on the main rank first: it copies/processes the files the others then read."""
        if not self.dist.is_main:
            barrier()
        c = self.config
        transform = dataset_transform(c) if c.dataset.startswith("ogbg-") else None
        data = load_dataset(c.dataset, c.root, c.cache_dir, pre_transform=transform)
        if self.dist.is_main:
            barrier()
        return data

    def _make_workload(self):
        c = self.config
        common = dict(
            data=self.data,
            batch_size=c.batch_size,
            eval_batch_size=c.eval_batch_size,
            dist=self.dist,
            device=self.device,
            seed=c.seed,
            max_samples=c.max_samples,
        )
        if self.task.level == "graph":
            return GraphWorkload(num_workers=c.num_workers, **common)
        mode = c.node_batching
        if mode == "auto":
            mode = "full" if self.data.dataset[0].num_edges <= FULL_GRAPH_MAX_EDGES else "sampled"
        return NodeWorkload(mode=mode, num_neighbors=c.num_neighbors, **common)

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            checkpoint.set_rng_state(rng[self.dist.rank])
        elif self.dist.is_main:
            warnings.warn(
                f"resuming a {len(rng)}-process run with {self.dist.world_size} processes: "
                "data order is unchanged but dropout noise will differ",
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        c, p = self.config, self.progress
        self._log(self._banner())
        if p.epoch >= c.epochs:
            self._log(f"{self.files.path}: already trained {p.epoch}/{c.epochs} epochs")
            return self._finish("complete")
        with StopRequest(c.max_minutes) as stop:
            try:
                while p.epoch < c.epochs:
                    if not self._train_epoch(stop):
                        self._save()
                        return self._finish(stop.reason, signum=stop.signum)
                    self._end_epoch()
            except Diverged as error:
                # No checkpoint now: the last one (end of the last good epoch) stays as it was.
                return self._finish("diverged", message=str(error))
        return self._finish("complete")

    def _train_epoch(self, stop: StopRequest) -> bool:
        """Train the current epoch from ``progress.step``; ``False`` if stopped on the way."""
        p, c = self.progress, self.config
        steps = self.workload.steps_per_epoch()
        self.ddp.train()
        bar = tqdm(
            total=steps,
            initial=p.step,
            desc=f"epoch {p.epoch + 1}/{c.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
            disable=not self.dist.is_main or not self._show_progress(),
        )
        started = time.perf_counter()
        items = 0
        with bar:
            for batch in self.workload.train_batches(p.epoch, p.step):
                if any_rank(stop.requested, self.device):
                    self._record_loss()
                    p.epoch_seconds += time.perf_counter() - started
                    return False
                items += self._step(batch)
                p.step += 1
                rate = items * self.dist.world_size / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    loss=f"{p.loss_sum / max(p.loss_count, 1):.4f}",
                    **{f"{self.workload.level}s/s": f"{rate:.0f}"},
                    refresh=False,
                )
                bar.update()
        self._record_loss()
        p.epoch_seconds += time.perf_counter() - started
        return True

    def _step(self, batch: Any) -> int:
        """One optimizer step on this rank's share of a global batch; returns its size.

        The step's loss is read on the host one step late (:meth:`_record_loss`): reading it
        now would make the host wait for the device before it queues the next step.
        """
        pred, y, weight = self.workload.forward(self.ddp, batch)
        loss_sum, count = self.objective.loss_terms(pred, y)
        loss_sum = loss_sum * weight
        totals = all_reduce_sum(torch.stack([loss_sum.detach(), count * weight]).double())
        # DDP averages gradients over ranks; scaling by world_size makes it the global-batch mean.
        scale = (self.dist.world_size / totals[1].clamp(min=1.0)).to(loss_sum.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum * scale).backward()
        if self.config.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self._record_loss()
        self._pending_loss = (totals, self.progress.epoch, self.progress.step)
        return self.workload.batch_size_of(batch)

    def _record_loss(self) -> None:
        """Add the last unread step's loss to the epoch's; stop if it is not finite."""
        if self._pending_loss is None:
            return
        totals, epoch, step = self._pending_loss
        self._pending_loss = None
        global_loss, global_count = totals.tolist()  # every rank sees the same values
        if not math.isfinite(global_loss):
            raise Diverged(
                f"training loss is {global_loss} at epoch {epoch + 1}, step {step + 1} "
                f"(--lr {self.config.lr:g}); try a smaller --lr"
            )
        self.progress.loss_sum += global_loss
        self.progress.loss_count += global_count

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        outputs = self.workload.predict(self.model, ("valid", "test"))
        metrics = {}
        for split, (y, pred) in outputs.items():
            if not bool(torch.isfinite(pred).all()):
                raise Diverged(
                    f"{split} predictions are not finite after epoch {self.progress.epoch + 1} "
                    f"(--lr {self.config.lr:g}); try a smaller --lr"
                )
            try:
                result = self.evaluator.eval(
                    {
                        "y_true": self.objective.targets(y),
                        "y_pred": self.objective.predictions(pred),
                    }
                )
                metrics[split] = float(result[self.task.metric])
            except RuntimeError as error:
                if self.dist.is_main:
                    warnings.warn(f"{split} {self.task.metric}: {error}", stacklevel=2)
                metrics[split] = math.nan
        return metrics

    def _end_epoch(self) -> None:
        p, c = self.progress, self.config
        eval_started = time.perf_counter()
        due = (p.epoch + 1) % c.eval_every == 0 or p.epoch + 1 == c.epochs
        metrics = self._evaluate() if due else {"valid": None, "test": None}
        seconds = p.epoch_seconds + time.perf_counter() - eval_started
        p.epoch += 1
        train_loss = p.loss_sum / max(p.loss_count, 1.0)
        p.step, p.loss_sum, p.loss_count, p.epoch_seconds = 0, 0.0, 0.0, 0.0
        p.seconds += seconds
        if due:
            p.last = dict(metrics)
        if self._improves(metrics["valid"]):
            p.best = {"epoch": p.epoch, "valid": metrics["valid"], "test": metrics["test"]}
            self._save_best()
        record = {
            "epoch": p.epoch,
            "train_loss": train_loss,
            "valid": metrics["valid"],
            "test": metrics["test"],
            "metric": self.task.metric,
            "lr": self.optimizer.param_groups[0]["lr"] / self.scheduler.base_lrs[0] * c.lr,
            "seconds": round(seconds, 3),
        }
        self._save()
        if self.dist.is_main:
            self.files.append_metrics(record)
            self.files.write_summary(self._summary("running"))
        m = self.task.metric
        best = p.best
        self._log(
            f"epoch {p.epoch:>3}/{c.epochs} | train loss {train_loss:.4f} | valid {m} "
            f"{_fmt(metrics['valid'])} | test {m} {_fmt(metrics['test'])} | best valid "
            f"{_fmt(best['valid'])} @ {best['epoch']} | {seconds:.1f}s"
        )

    def _improves(self, valid: float | None) -> bool:
        best = self.progress.best["valid"]
        if valid is None or math.isnan(valid):  # not evaluated this epoch, or no metric
            return False
        if best is None:
            return True
        return valid > best if self.task.higher_is_better else valid < best

    # ------------------------------------------------------------------------- persistence
    def _save(self) -> None:
        """Checkpoint on the main rank (every rank hands in its RNG state)."""
        rng = gather_objects(checkpoint.rng_state())
        if self.dist.is_main:
            checkpoint.save(
                self.files.checkpoint,
                {
                    "kind": "train",
                    "config": self.config.to_dict(),
                    "progress": asdict(self.progress),
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng,
                },
            )
        barrier()

    def _save_best(self) -> None:
        if self.dist.is_main:
            checkpoint.save(
                self.files.best,
                {
                    "kind": "best",
                    "config": self.config.to_dict(),
                    "epoch": self.progress.epoch,
                    "model": self.model.state_dict(),
                },
            )

    def _summary(self, status: str) -> dict[str, Any]:
        c, p = self.config, self.progress
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

    def _finish(
        self, status: str, signum: int | None = None, message: str | None = None
    ) -> dict[str, Any]:
        summary = self._summary(status)
        summary["signal"] = signum
        summary["message"] = message
        if self.dist.is_main:
            self.files.write_summary(summary)
        p, m = self.progress, self.task.metric
        if status == "diverged":
            pass  # the caller reports it (the CLI in one line on stderr)
        elif status == "complete":
            self._log(
                f"test {m} {_fmt(p.best['test'])} at best valid {m} {_fmt(p.best['valid'])} "
                f"(epoch {p.best['epoch']}); outputs in {self.files.path}"
            )
        else:
            self._log(
                f"{status} at epoch {p.epoch + 1}, step {p.step}; checkpoint saved: continue "
                f"with --resume --out {self.files.path}"
            )
        return summary

    # ------------------------------------------------------------------------------ output
    def _show_progress(self) -> bool:
        if self.config.progress is not None:
            return self.config.progress
        return sys.stderr.isatty()

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def _banner(self) -> str:
        c = self.config
        mode = f"μP (base width {c.base_width})" if c.mup else "SP"
        where = f"{self.device}" + (f" × {self.dist.world_size}" if self.dist.enabled else "")
        return (
            f"{c.dataset} ({self.workload.describe()}; {self.task.task_type}, "
            f"{self.task.metric}) | width {c.width}, {c.layers} layers, {c.heads} heads, "
            f"{c.attention} attention, {mode} | {count_parameters(self.model):,} params | "
            f"{where}"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
