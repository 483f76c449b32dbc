"""What a sweep varies: axes named after :class:`~pyg_mup.train.TrainConfig` settings.

Any setting may be an axis (``width``, ``layers``, ``seed``, ``dropout``, ``mup`` …), plus two
spellings made for μTransfer grids: ``log2_lr`` (the learning rate is ``2 ** log2_lr``, so a grid
of step 1 is a list of integers) and ``parametrization`` (``mup`` or ``sp``, i.e. ``--mup`` /
``--no-mup``). A *grid* axis lists its values (Optuna's ``GridSampler``, or categorical choices
for another sampler); a *range* gives ``low:high[:log]`` for samplers such as TPE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from pyg_mup.train.config import TrainConfig
from pyg_mup.train.settings import SETTINGS, parse_setting, value_type

DERIVED = {"log2_lr": "lr", "parametrization": "mup"}
"""Axis names that are not settings, and the setting each one sets."""

OBJECTIVES = {"final": "valid", "best": "best_valid"}
"""``objective`` → the trial record's field a trial is judged on."""


def objective_label(objective: str) -> str:
    """How logs and tables name the number a trial is judged on: ``valid`` or ``best valid``."""
    return OBJECTIVES[objective].replace("_", " ")


def is_storage_url(location: str) -> bool:
    """Whether a storage location is a database URL (``sqlite:///…``) rather than a file."""
    return "://" in location


class SweepError(ValueError):
    """A sweep that cannot run as asked, with a one-line message."""


def setting_of(axis: str) -> str:
    """The :class:`TrainConfig` setting an axis sets; :class:`SweepError` for unknown names."""
    name = axis.replace("-", "_")
    if name in DERIVED:
        return DERIVED[name]
    if name not in SETTINGS:
        raise SweepError(
            f"unknown sweep axis {axis!r}: use a `pyg-mup train` setting (e.g. width, layers, "
            "seed, dropout) or log2_lr / parametrization"
        )
    return name


def parse_axis_value(axis: str, text: str) -> Any:
    """One value of an axis from its command-line text."""
    name = axis.replace("-", "_")
    if name == "log2_lr":
        value = float(text)
        return int(value) if value.is_integer() else value
    if name == "parametrization":
        if text not in ("mup", "sp"):
            raise SweepError(f"parametrization values are mup and sp, got {text!r}")
        return text
    try:
        return parse_setting(setting_of(name), text)
    except ValueError as error:
        raise SweepError(str(error)) from None


def setting_value(axis: str, value: Any) -> tuple[str, Any]:
    """``(setting, value)`` that an axis value stands for."""
    name = axis.replace("-", "_")
    if name == "log2_lr":
        return "lr", 2.0**value
    if name == "parametrization":
        return "mup", value == "mup"
    return setting_of(name), value


@dataclass
class SweepSpec:
    """Everything a sweep needs, JSON-serialisable (stored with the study, so a resumed sweep
    checks that it is the same sweep).

    Args:
        out: the sweep folder (study storage, trials/, trials.json, figures, recipe.json).
        settings: the fixed settings of every trial (only those that differ from the defaults
            need be given); ``out``, ``resume``, ``overwrite`` and ``progress`` are the sweep's.
        grid: axis → list of values.
        ranges: axis → ``[low, high, log]`` (for samplers other than ``grid``).
        sampler: ``'grid'`` or the name of an Optuna sampler class (``'tpe'`` = ``TPESampler``,
            ``'random'``, ``'cmaes'``, or e.g. ``'QMCSampler'``).
        trials: how many trials a non-grid sampler runs (a budget: with several workers up
            to ``workers - 1`` more may start).
        sampler_seed: seed of the sampler.
        storage: an Optuna storage URL (``sqlite:///…``, ``postgresql://…``) or the path of a
            journal file; default ``<out>/study.journal``.
        study_name: the study's name in the storage.
        workers: local worker processes (one torch thread each; all use ``settings['device']``).
        stale_after: seconds without a heartbeat after which a RUNNING trial of another machine
            counts as killed (trials of dead processes on this machine are seen at once).
        plot: write the figures.
        objective: the validation number a trial is judged on (its Optuna value, the recipe's
            choice, the figures' lower panel): ``'final'``, the metric after the last epoch
            (what μTransfer's curves compare), or ``'best'``, the best evaluated epoch's, OGB's
            early-stopping convention (with ``eval_every=1`` every epoch counts).
    """

    out: str
    settings: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, list[Any]] = field(default_factory=dict)
    sampler: str = "grid"
    trials: int | None = None
    sampler_seed: int = 0
    storage: str | None = None
    study_name: str = "sweep"
    workers: int = 1
    stale_after: float = 300.0
    plot: bool = True
    objective: str = "final"

    def validate(self) -> None:
        """:class:`SweepError` for the first thing that cannot work."""
        for name in self.settings:
            if name not in SETTINGS:
                raise SweepError(f"unknown setting {name!r}")
        axes = [*self.grid, *self.ranges]
        for axis in axes:
            setting_of(axis)
        targets = [setting_of(a) for a in axes]
        for target in set(targets):
            if targets.count(target) > 1:
                raise SweepError(f"two axes set {target!r}")
            if target in self.settings:
                raise SweepError(f"{target!r} is both a fixed setting and a sweep axis")
        for axis, values in self.grid.items():
            if not values or len(set(map(repr, values))) != len(values):
                raise SweepError(f"grid axis {axis!r} needs distinct values, got {values}")
        if not axes:
            raise SweepError("nothing to sweep: give --grid NAME=V1,V2,... or --range")
        if self.sampler == "grid":
            if self.ranges:
                raise SweepError("--sampler grid takes --grid axes only; ranges need e.g. tpe")
        elif not self.trials or self.trials < 1:
            raise SweepError(f"--sampler {self.sampler} needs --trials N")
        for axis, (low, high, _log) in self.ranges.items():
            if not low < high:
                raise SweepError(f"range {axis}: low must be below high, got {low}:{high}")
        if self.objective not in OBJECTIVES:
            raise SweepError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if self.workers < 1:
            raise SweepError(f"--workers must be a positive integer, got {self.workers}")
        base = self.trial_config({axis: values[0] for axis, values in self.grid.items()})
        base.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def storage_location(self) -> str:
        """Where the study lives: ``storage``, else the journal file ``<out>/study.journal``."""
        return self.storage or str(Path(self.out) / "study.journal")

    def sweep_identity(self) -> dict[str, Any]:
        """What makes two invocations the same sweep: not where, how many workers, nor the
        trial budget (a larger ``--trials`` extends a finished tuning study)."""
        keys = ("settings", "grid", "ranges", "sampler", "sampler_seed", "objective")
        return {k: v for k, v in self.to_dict().items() if k in keys}

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Each axis as an Optuna distribution (grid axes categorical)."""
        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for axis, values in self.grid.items():
            out[axis] = optuna.distributions.CategoricalDistribution(values)
        for axis, (low, high, log) in self.ranges.items():
            target = setting_of(axis)
            if axis != "log2_lr" and value_type(target) is int:
                out[axis] = optuna.distributions.IntDistribution(int(low), int(high), log=log)
            else:
                out[axis] = optuna.distributions.FloatDistribution(low, high, log=log)
        return out

    def shape_range(self, setting: str) -> list[Any]:
        """The values a shape setting takes over the sweep (one value when fixed)."""
        for axis, values in self.grid.items():
            if setting_of(axis) == setting:
                return sorted(values)
        for axis, (low, high, _log) in self.ranges.items():
            if setting_of(axis) == setting:
                return [low, high]
        return [self.settings.get(setting, getattr(TrainConfig(), setting))]

    def trial_config(self, params: dict[str, Any], out: str | None = None) -> TrainConfig:
        """The :class:`TrainConfig` of the trial with these axis values.

        Unless given as settings, μP's ``base_width`` is the smallest width of the sweep and
        ``base_layers`` the smallest depth (what the recipe is tuned at), and a trial evaluates
        only after its last epoch.
        """
        values = dict(self.settings)
        for axis, value in params.items():
            name, setting = setting_value(axis, value)
            values[name] = setting
        if "base_width" not in values:
            values["base_width"] = int(min(self.shape_range("width")))
        if "base_layers" not in values:
            values["base_layers"] = int(min(self.shape_range("layers")))
        values.setdefault("eval_every", values.get("epochs", TrainConfig().epochs))
        values.update(out=out, progress=False)
        return TrainConfig(**values)
