"""Which trial a worker runs next, and the trials of killed workers.

Claiming: workers take WAITING trials with the storage's atomic WAITING → RUNNING transition
(as ``Study.ask`` does), so each grid point runs once however many workers share the storage.
Non-grid samplers ask for new trials until the budget is reached.

Killed workers: a worker writes its host and pid on the trial it runs and a heartbeat every
``stale_after / 4`` seconds (:mod:`.trial`). A RUNNING trial whose process is gone (same host)
or whose heartbeat is older than ``stale_after`` (another host) is marked FAIL
(``stale = True``) by the next worker that looks, and its parameters are enqueued again
(``retry_of``: the first trial's number). The retry resumes from the killed trial's last
checkpoint (same folder), so no finished epoch is lost.
"""

from __future__ import annotations

import os
import socket
import time

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from .space import SweepSpec
from .study import HEARTBEAT, OWNER


def budget_used(study: optuna.Study) -> int:
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
    """Take one WAITING trial (atomically: another worker's claim makes this one skip it).

    Retries of stopped or killed trials come first: each resumes from its checkpoint, so it is
    the work nearest done (enqueued last, in number order it would run after every fresh point).
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=lambda t: "retry_of" not in t.user_attrs):
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
