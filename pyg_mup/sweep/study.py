"""A sweep's Optuna study: its storage, its sampler, and the identity that makes a resumed
sweep the same sweep.

A grid is enqueued once, when the study is created (every point a WAITING trial the workers
claim, :mod:`.claims`); other samplers ask for trials as they go. The sweep's settings and axes
are stored with the study, so resuming with different ones is refused and ``--report`` can
rebuild the outputs from the storage alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from pyg_mup.data import task_of

from .space import SweepError, SweepSpec, is_storage_url

OWNER = "pyg_mup:owner"
HEARTBEAT = "pyg_mup:heartbeat"
SPEC = "pyg_mup:spec"
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler"}


def storage_of(spec: SweepSpec) -> optuna.storages.BaseStorage:
    """The study's storage: an RDB URL, else a journal file (default ``<out>/study.journal``)."""
    url = spec.storage_location()
    if is_storage_url(url):
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
