"""Running a sweep: one Optuna study (:mod:`.study`), trials claimed by worker processes
(:mod:`.claims`), each one :func:`pyg_mup.train.train` run (:mod:`.trial`); the outputs
rewritten as trials end (:mod:`.report`), and each trial's freed memory handed back
(:mod:`pyg_mup.train.memory`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from pyg_mup.data import load_dataset
from pyg_mup.train.factory import dataset_transform
from pyg_mup.train.memory import release_freed_memory

from .claims import budget_used, claim_waiting, recover_stale
from .space import SweepError, SweepSpec
from .study import SPEC, open_study, storage_of
from .trial import TrialStopped, run_trial


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
    transform = dataset_transform(settings)
    load_dataset(settings.dataset, settings.root, settings.cache_dir, pre_transform=transform)
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    open_study(spec, create=True)
    received: list[int] = []
    if spec.workers == 1:
        try:
            work(spec.to_dict())
        except TrialStopped as stop:
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
            if spec.sampler == "grid" or budget_used(study) >= spec.trials:
                return done
            trial = study.ask()
        try:
            run_trial(study, trial, spec)
        except TrialStopped:
            if own_process:
                return done
            raise
        finally:
            release_freed_memory()
        done += 1
        write_outputs(snapshot, study)
