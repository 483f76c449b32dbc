"""The training loop: epochs of steps, evaluation with ``ogb``'s Evaluator, stops, divergence.

Determinism is a contract here: on CPU with one seed, ``--epochs 2`` and ``--epochs 1`` then
``--epochs 2 --resume`` give the same metrics, even when the first run was stopped mid-epoch,
because the epoch order comes from ``(seed, epoch)`` (:mod:`.workload`), the LR schedule from
the step count, and the checkpoint carries optimizer, scheduler, RNG states and the epoch's
partial sums. Data-parallel runs normalise each step's loss by the labelled entries of the
*global* batch, so K processes take the single-process step.

What the run prints and records is :mod:`.report`'s; its checkpoints are :mod:`.checkpoint`'s
and its output folder, fresh or resumed, is :mod:`.rundir`'s.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pyg_mup.data import load_dataset, make_evaluator

from . import checkpoint
from .config import FULL_GRAPH_MAX_EDGES, ConfigError, TrainConfig
from .distributed import Dist, all_reduce_sum, any_rank, barrier, setup, teardown
from .factory import dataset_transform, make_model, make_optimizer, make_scheduler
from .memory import TRIM_CHECK_STEPS, HeapTrimmer
from .objective import Objective
from .progress import Progress
from .report import Report
from .rundir import RunDir
from .stopping import StopRequest
from .workload import GraphWorkload, NodeWorkload


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
        config, state = self.files.open_run(config, explicit)
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
        self.progress = (
            Progress()
            if state is None
            else checkpoint.restore_run(state, dist, self.model, self.optimizer, self.scheduler)
        )
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            if dist.enabled
            else self.model
        )
        if dist.is_main:
            self.files.begin(None if state is None else self.progress.epoch)
        self.report = Report(config, self.task, self.workload, self.model, dist, device, self.files)
        self._trim_heap = HeapTrimmer()

    # ------------------------------------------------------------------------------ set-up
    def _load_data(self):
        """Load on the main rank first: it copies/processes the files the others then read."""
        if not self.dist.is_main:
            barrier()
        c = self.config
        transform = dataset_transform(c)
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

    # ------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        c, p = self.config, self.progress
        self.report.log(self.report.banner())
        if p.epoch >= c.epochs:
            self.report.already_trained(p)
            return self.report.finish(p, "complete")
        with StopRequest(c.max_minutes) as stop:
            try:
                while p.epoch < c.epochs:
                    if not self._train_epoch(stop):
                        self._save()
                        return self.report.finish(p, stop.reason, signum=stop.signum)
                    self._end_epoch()
            except Diverged as error:
                # No checkpoint now: the last one (end of the last good epoch) stays as it was.
                return self.report.finish(p, "diverged", message=str(error))
        return self.report.finish(p, "complete")

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
            disable=not self.report.show_progress_bar(),
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
                if p.step % TRIM_CHECK_STEPS == 0:
                    self._trim_heap()
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
            checkpoint.save_best(self.files.best, self.dist, c, p.epoch, self.model)
        lr = self.optimizer.param_groups[0]["lr"] / self.scheduler.base_lrs[0] * c.lr
        self._save()
        self.report.epoch(p, train_loss, metrics, lr, seconds)
        self._trim_heap()

    def _improves(self, valid: float | None) -> bool:
        best = self.progress.best["valid"]
        if valid is None or math.isnan(valid):  # not evaluated this epoch, or no metric
            return False
        if best is None:
            return True
        return valid > best if self.task.higher_is_better else valid < best

    def _save(self) -> None:
        """The ``--resume`` checkpoint of where the run is (on every rank; the main one writes)."""
        checkpoint.save_run(
            self.files.checkpoint,
            self.dist,
            self.config,
            self.progress,
            self.model,
            self.optimizer,
            self.scheduler,
        )
