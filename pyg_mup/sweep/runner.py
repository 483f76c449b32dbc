"""Running a sweep: one Optuna study, trials claimed by worker processes, killed ones re-run.

Each trial is one :func:`pyg_mup.train.train` run in ``<out>/trials/<number>/``; its objective
is the validation metric after the last epoch (never the test metric). A diverged trial (its
loss became nan/inf) is COMPLETE with the worst value (``+inf`` when minimising, ``-inf`` when
maximising) and the user attribute ``diverged = True``; a trial whose settings cannot run (a
:class:`~pyg_mup.train.ConfigError`, …) is FAIL with the message in ``error``.

Claiming: a grid is enqueued once, when the study is created, and workers take WAITING trials
with the storage's atomic WAITING → RUNNING transition (as ``Study.ask`` does), so each grid
point runs once however many workers share the storage. Non-grid samplers ask for new trials
until the budget is reached.

Killed workers: a worker writes its host and pid on the trial it runs and a heartbeat every
``stale_after / 4`` seconds. A RUNNING trial whose process is gone (same host) or whose heartbeat
is older than ``stale_after`` (another host) is marked FAIL (``stale = True``) by the next worker
that looks, and its parameters are enqueued again (``retry_of``: the first trial's number). The
retry resumes from the killed trial's last checkpoint (same folder), so no finished epoch is lost.
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from pyg_mup.data import DatasetError, load_dataset, task_of
from pyg_mup.train import CheckpointError, ConfigError, RunDirError, train
from pyg_mup.train.factory import dataset_transform

from .space import SweepError, SweepSpec

OWNER = "pyg_mup:owner"
HEARTBEAT = "pyg_mup:heartbeat"
SPEC = "pyg_mup:spec"
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler"}


def storage_of(spec: SweepSpec) -> optuna.storages.BaseStorage:
    """The study's storage: an RDB URL, else a journal file (default ``<out>/study.journal``)."""
    url = spec.storage_location()
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


class EnqueuedGridSampler(optuna.samplers.GridSampler):
    """Optuna's ``GridSampler`` for a grid whose points are all enqueued when the study is made
    and claimed by workers (:func:`claim_waiting`), never asked for. Its ``after_trial`` stops
    the study as the last unvisited point finishes, reading a grid id that only asked trials
    carry (a one-point grid raised ``KeyError: 'grid_id'``); workers here stop by themselves
    when no point waits, so that bookkeeping is skipped."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def sampler_of(
    spec: SweepSpec, worker: int = 0, trials_before: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler in local worker ``worker``, opened when the study held
    ``trials_before`` trials. Each worker seeds its own: workers that share a seed would all
    suggest the same settings (machines sharing a storage need different ``--sampler-seed``
    values for the same reason), and so would a resumed study repeat its first suggestions."""
    if spec.sampler == "grid":
        return EnqueuedGridSampler(spec.grid, seed=spec.sampler_seed)
    name = SAMPLERS.get(spec.sampler.lower(), spec.sampler)
    cls = getattr(optuna.samplers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, optuna.samplers.BaseSampler):
        raise SweepError(f"--sampler {spec.sampler}: not an Optuna sampler (grid, tpe, random, …)")
    seed = spec.sampler_seed + worker
    if trials_before:
        seed = int(np.random.SeedSequence([seed, trials_before]).generate_state(1)[0])
    return cls(seed=seed)


def open_study(spec: SweepSpec, create: bool = False, worker: int = 0) -> optuna.Study:
    """Load the sweep's study; with ``create``, create it (and enqueue its grid) if new.

    Raises :class:`SweepError` if the storage holds a different sweep under the same name.
    """
    storage = storage_of(spec)
    task = task_of(spec.settings.get("dataset", _dataset()))
    direction = "maximize" if task.higher_is_better else "minimize"
    identity = spec.sweep_identity()
    if create:
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=spec.study_name,
                sampler=sampler_of(spec),
                direction=direction,
            )
        except optuna.exceptions.DuplicatedStudyError:
            pass
        else:
            study.set_user_attr(SPEC, identity)
            for point in _grid_points(spec):
                study.enqueue_trial(point)
            return study
    study = optuna.load_study(storage=storage, study_name=spec.study_name)
    trials_before = 0 if spec.sampler == "grid" else len(study.get_trials(deepcopy=False))
    study.sampler = sampler_of(spec, worker, trials_before)
    stored = study.user_attrs.get(SPEC)
    if stored is not None:  # older studies kept "trials", and lack keys added since
        defaults = SweepSpec(out=spec.out).sweep_identity()
        stored = {k: v for k, v in {**defaults, **stored}.items() if k in identity}
    if stored is not None and _normalised(stored) != _normalised(identity):
        raise SweepError(
            f"the storage already holds a different sweep named {spec.study_name!r}; use the "
            "same settings and axes to resume it, or another --out / --study-name"
        )
    return study


def _normalised(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True))


def _dataset() -> str:
    from pyg_mup.train.config import TrainConfig

    return TrainConfig().dataset


def _grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every grid point, in the order the axes were given (the last axis varies fastest)."""
    if spec.sampler != "grid":
        return []
    points: list[dict[str, Any]] = [{}]
    for axis, values in spec.grid.items():
        points = [{**p, axis: v} for p in points for v in values]
    return points


def run_sweep(spec: SweepSpec) -> dict[str, Any]:
    """Run (or resume) the sweep; write trials.json, the figures and recipe.json; return the
    trials' report (:func:`pyg_mup.sweep.report.trials_report`), with ``stopped_by`` (the
    signal number) when SIGINT/SIGTERM stopped the sweep before its trials were done.

    Raises:
        SweepError, ConfigError, DatasetError: with one-line messages, before any trial runs.
    """
    from .report import write_outputs

    spec.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Copy/process the dataset once, here: workers then only read the cache (and a wrong --root
    # fails before any trial starts).
    settings = spec.trial_config({a: v[0] for a, v in spec.grid.items()})
    transform = dataset_transform(settings) if settings.dataset.startswith("ogbg-") else None
    load_dataset(settings.dataset, settings.root, settings.cache_dir, pre_transform=transform)
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    open_study(spec, create=True)
    received: list[int] = []
    if spec.workers == 1:
        try:
            work(spec.to_dict())
        except _Stopped as stop:
            received += [stop.signum] if stop.signum is not None else []
    else:
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=work, args=(spec.to_dict(), True, worker), daemon=False)
            for worker in range(spec.workers)
        ]
        for process in processes:
            process.start()
        with _signals_passed_on(processes, received):
            for process in processes:
                process.join()
    report = write_outputs(spec, open_study(spec))
    return {**report, "stopped_by": received[0]} if received else report


@contextlib.contextmanager
def _signals_passed_on(processes: list[multiprocessing.process.BaseProcess], received: list[int]):
    """While the workers run, SIGINT and SIGTERM sent to this process (Ctrl-C in its terminal,
    ``kill PID``, a scheduler stopping the job) go on to them; they run in their own process
    group, so this is the one copy they get. Each stops at its next step boundary with its trial
    checkpointed and queued again, and none is left running without the process that started
    it. The signals are appended to ``received``."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def pass_on(signum: int, _frame: object) -> None:
        received.append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_sweep(
    out: str, storage: str | None = None, study_name: str = "sweep", plot: bool = True
) -> dict[str, Any]:
    """Write trials.json, the figures and recipe.json of the sweep in ``out`` (or in
    ``storage``) from its study as it stands, running no trial: the outputs of a sweep that was
    stopped early, or of one whose workers still run elsewhere. The sweep's settings and axes
    are the ones stored with its study. Returns the trials' report.

    Raises:
        SweepError: the storage holds no such sweep.
    """
    from .report import write_outputs

    located = SweepSpec(out=out, storage=storage, study_name=study_name)
    where = located.storage_location()
    if storage is None and not Path(where).is_file():
        raise SweepError(f"--report: no sweep in {out} (no {where})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(storage=storage_of(located), study_name=study_name)
    except KeyError:  # what Optuna raises for a study name its storage does not hold
        raise SweepError(f"--report: no sweep named {study_name!r} in {where}") from None
    stored = study.user_attrs.get(SPEC)
    if stored is None:
        raise SweepError(f"--report: the study {study_name!r} in {where} is not a pyg-mup sweep")
    identity = located.sweep_identity()
    spec = replace(located, plot=plot, **{k: v for k, v in stored.items() if k in identity})
    return write_outputs(spec, study)


def work(spec_dict: dict[str, Any], own_process: bool = False, worker: int = 0) -> int:
    """A worker (``worker``: its index on this machine): run trials of the sweep until none is
    left; returns how many it ran."""
    spec = SweepSpec(**spec_dict)
    if own_process:
        # Several small runs side by side use the cores better than one run with several
        # threads (on a GPU, they fill the gaps between each other's kernel launches).
        torch.set_num_threads(1)
        if hasattr(os, "setpgid"):  # signals reach a worker once, from run_sweep: a
            os.setpgid(0, 0)  # terminal's Ctrl-C as well would be a second, immediate stop
    for name in ("recompile_limit", "cache_size_limit"):  # batch sizes vary: FlexAttention
        if hasattr(torch._dynamo.config, name):  # is compiled for several shapes per run
            setattr(torch._dynamo.config, name, 64)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    study = open_study(spec, worker=worker)
    from .report import write_outputs

    # After each trial, trials.json and recipe.json are rewritten (whole files, atomically), so a
    # sweep stopped at any point leaves them current; the figures are drawn once, at the end.
    snapshot = replace(spec, plot=False)
    done = 0
    while True:
        recover_stale(study, spec)
        trial = claim_waiting(study)
        if trial is None:
            if spec.sampler == "grid" or _budget_used(study) >= spec.trials:
                return done
            trial = study.ask()
        try:
            run_trial(study, trial, spec)
        except _Stopped:
            if own_process:
                return done
            raise
        done += 1
        write_outputs(snapshot, study)


class _Stopped(Exception):
    """A trial's run was stopped (by ``signum``, or by its time budget): the worker stops too."""

    def __init__(self, signum: int | None) -> None:
        super().__init__(signum)
        self.signum = signum


def _budget_used(study: optuna.Study) -> int:
    """Trials that count against a sampler's budget (not those failed by a killed worker:
    their retries count instead)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.FAIL or not t.user_attrs.get("stale")
    )


def _trial_id(study: optuna.Study, number: int) -> int:
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def claim_waiting(study: optuna.Study) -> Trial | None:
    """Take one WAITING trial (atomically: another worker's claim makes this one skip it)."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = _trial_id(study, frozen.number)
        try:
            if study._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return Trial(study, trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(frozen: FrozenTrial, stale_after: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (see the module docstring)."""
    now = time.time() if now is None else now
    owner = frozen.system_attrs.get(OWNER)
    if owner is not None and owner[0] == socket.gethostname() and not _alive(owner[1]):
        return True
    beat = frozen.system_attrs.get(HEARTBEAT)
    if beat is None and frozen.datetime_start is not None:
        beat = frozen.datetime_start.timestamp()
    return beat is not None and now - beat > stale_after


def recover_stale(study: optuna.Study, spec: SweepSpec) -> list[int]:
    """Fail the RUNNING trials of killed workers and enqueue their parameters again; returns
    the numbers of the trials failed here."""
    failed = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(frozen, spec.stale_after):
            continue
        trial_id = _trial_id(study, frozen.number)
        try:
            study._storage.set_trial_user_attr(trial_id, "stale", True)
            if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        params = frozen.system_attrs.get("fixed_params") or frozen.params
        root = frozen.user_attrs.get("retry_of", frozen.number)
        study.enqueue_trial(params, user_attrs={"retry_of": root})
        failed.append(frozen.number)
    return failed


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
        raise _Stopped(summary.get("signal"))
    metrics = _last_epoch(run_dir)
    diverged = summary["status"] == "diverged"
    score = summary["final_valid" if spec.objective == "final" else "best_valid"]
    finite = score is not None and math.isfinite(score) and not diverged
    attrs = {
        "status": summary["status"],
        "diverged": diverged,
        "train_loss": None if diverged else metrics.get("train_loss"),
        "valid": summary["final_valid"] if finite else None,
        "test": summary["final_test"] if finite else None,
        "best_valid": summary["best_valid"] if finite else None,
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
    judged = "valid" if spec.objective == "final" else "best valid"
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
