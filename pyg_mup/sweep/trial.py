"""One trial: its parameters suggested, one :func:`pyg_mup.train.train` run in
``<out>/trials/<number>/``, its result told to the study.

The trial's value is the validation metric the sweep judges on (``SweepSpec.objective``: after
the last epoch, or at the best one; never the test metric). A diverged trial (its loss became
nan/inf) is COMPLETE with the worst value (``+inf`` when minimising, ``-inf`` when maximising)
and the user attribute ``diverged = True``; a trial whose settings cannot run (a
:class:`~pyg_mup.train.ConfigError`, …) is FAIL with the message in ``error``; a trial stopped
by a signal or a time budget is FAIL (``stale``) and queued again, to resume from its
checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from pyg_mup.data import DatasetError
from pyg_mup.train import CheckpointError, ConfigError, RunDirError, train

from .space import OBJECTIVES, SweepSpec, objective_label
from .study import HEARTBEAT, OWNER


class TrialStopped(Exception):
    """A trial's run was stopped (by ``signum``, or by its time budget): the worker stops too."""

    def __init__(self, signum: int | None) -> None:
        super().__init__(signum)
        self.signum = signum


class _Heartbeat:
    """Writes the trial's heartbeat every ``interval`` seconds from a thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self.study, self.trial_id, self.interval = study, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a beat lost is caught by the next one
                self.study._storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_trial(study: optuna.Study, trial: Trial, spec: SweepSpec) -> FrozenTrial:
    """Suggest the trial's parameters, train, and tell the study the validation metric."""
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, OWNER, [socket.gethostname(), os.getpid()])
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time())
    params = {name: trial._suggest(name, dist) for name, dist in spec.distributions().items()}
    root = trial.user_attrs.get("retry_of", trial.number)
    recorded = f"trials/{root:05d}"  # relative to the sweep folder, wherever it is run from
    run_dir = Path(spec.out) / recorded
    config = spec.trial_config(params, out=str(run_dir))
    config.resume = (run_dir / "checkpoint.pt").is_file()  # a killed trial's retry continues
    config.overwrite = not config.resume
    worst = math.inf if study.direction == optuna.study.StudyDirection.MINIMIZE else -math.inf
    started = time.perf_counter()
    log = io.StringIO()
    with _Heartbeat(study, trial._trial_id, max(spec.stale_after / 4, 0.5)):
        try:
            with contextlib.redirect_stdout(log):
                summary = train(config)
        except (ConfigError, RunDirError, DatasetError, CheckpointError, RuntimeError) as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}".splitlines()[0])
            trial.set_user_attr("run_dir", recorded)
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_log(run_dir, log)
            return study.tell(trial, state=TrialState.FAIL)
    _write_log(run_dir, log)
    if summary.get("signal") or summary["status"] not in ("complete", "diverged"):
        # stopped (Ctrl-C, SIGTERM, a time budget): not a result. Its parameters go back in the
        # queue, and the retry continues from the checkpoint the stop wrote.
        trial.set_user_attr("stale", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(params), user_attrs={"retry_of": root})
        raise TrialStopped(summary.get("signal"))
    metrics = _last_epoch(run_dir)
    diverged = summary["status"] == "diverged"
    validation = {"valid": summary["final_valid"], "best_valid": summary["best_valid"]}
    score = validation[OBJECTIVES[spec.objective]]
    finite = score is not None and math.isfinite(score) and not diverged
    attrs = {
        "status": summary["status"],
        "diverged": diverged,
        "train_loss": None if diverged else metrics.get("train_loss"),
        "valid": validation["valid"] if finite else None,
        "test": summary["final_test"] if finite else None,
        "best_valid": validation["best_valid"] if finite else None,
        "test_at_best_valid": summary["test_at_best_valid"] if finite else None,
        "epochs": summary["epochs_completed"],
        "steps_per_epoch": summary["steps_per_epoch"],
        "steps": summary["epochs_completed"] * summary["steps_per_epoch"],
        "train_samples": summary["train_samples"],
        "metric": summary["metric"],
        "message": summary.get("message"),
        "run_dir": recorded,
        "seconds": round(time.perf_counter() - started, 2),
        "config": {**config.to_dict(), "out": recorded},
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    frozen = study.tell(trial, score if finite else worst)
    judged = objective_label(spec.objective)
    print(
        f"trial {trial.number}: {_describe(params)}: "
        + ("diverged" if diverged else f"{judged} {summary['metric']} {_fmt(score)}"),
        flush=True,
    )
    return frozen


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write_log(run_dir: Path, log: io.StringIO) -> None:
    with (run_dir / "train.log").open("a") as f:
        f.write(log.getvalue())


def _last_epoch(run_dir: Path) -> dict[str, Any]:
    from pyg_mup.train import read_metrics

    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    return records[-1] if records else {}
