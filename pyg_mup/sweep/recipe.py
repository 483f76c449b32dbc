"""recipe.json: the hyperparameters a sweep found at its base shapes, for ``pyg-mup train``.

Chosen on the validation metric only (the test metric is recorded in trials.json, never used
to choose): among the finished, non-diverged μP trials at the base width and depth, the
settings whose validation metric (after the last epoch, or the best epoch's with the sweep's
``objective='best'``), averaged over the seeds that ran them, is best. Applied with
``pyg-mup train --recipe recipe.json --width 1024 --layers 16``: the recipe's settings and base
shapes, then the flags given on the command line on top.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pyg_mup.train.config import ConfigError
from pyg_mup.train.settings import RECIPE_KEYS

from .space import OBJECTIVES

FORMAT = "pyg_mup.recipe/1"


def best_settings(
    trials: list[dict[str, Any]], higher_is_better: bool, objective: str = "final"
) -> dict[str, Any] | None:
    """The recipe (see the module docstring) from trials.json's ``trials``, judged on
    ``objective`` (``'final'`` or ``'best'``); ``None`` if no finished μP trial at the base
    shapes has a finite validation metric."""
    judged = OBJECTIVES[objective]
    candidates = [
        t
        for t in trials
        if t["state"] == "COMPLETE"
        and not t["diverged"]
        and t.get(judged) is not None
        and math.isfinite(t[judged])
        and t["config"]["mup"]
        and t["config"]["width"] == t["config"]["base_width"]
        and t["config"]["layers"] == t["config"]["base_layers"]
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in candidates:
        key = json.dumps({k: t["config"][k] for k in RECIPE_KEYS}, sort_keys=True)
        groups.setdefault(key, []).append(t)
    if not groups:
        return None

    def mean_valid(group: list[dict[str, Any]]) -> float:
        return sum(t[judged] for t in group) / len(group)

    best = (max if higher_is_better else min)(groups.values(), key=mean_valid)
    config = best[0]["config"]
    return {
        "format": FORMAT,
        "dataset": config["dataset"],
        "metric": best[0]["metric"],
        "higher_is_better": higher_is_better,
        "selected_on": judged,
        "valid": mean_valid(best),
        "seeds": sorted(t["config"]["seed"] for t in best),
        "trials": sorted(t["number"] for t in best),
        "base_shapes": {"base_width": config["base_width"], "base_layers": config["base_layers"]},
        "settings": {k: config[k] for k in RECIPE_KEYS},
    }


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe.json; :class:`ConfigError` (one line) if it is not one."""
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--recipe {path}: cannot read it ({error})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        raise ConfigError(f"--recipe {path} is not a pyg-mup sweep recipe ({FORMAT})")
    unknown = set(recipe["settings"]) - set(RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"--recipe {path}: unknown settings {', '.join(sorted(unknown))}")
    return recipe


def recipe_values(recipe: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~pyg_mup.train.TrainConfig` values a recipe sets: its settings, its base
    shapes and its dataset."""
    return {**recipe["settings"], **recipe["base_shapes"], "dataset": recipe["dataset"]}
