"""The settings as data: every :class:`~.config.TrainConfig` field by name and group, its
type, and its value from command-line text.

Why a module of its own: the parser (:mod:`pyg_mup.cli`), the sweep's search spaces
(:mod:`pyg_mup.sweep.space`) and its recipes (:mod:`pyg_mup.sweep.recipe`) are generated from
the field declarations, never written out again.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .config import TrainConfig, flag_name

SETTINGS = {f.name: f for f in fields(TrainConfig)}
"""Every setting by name, with its :func:`~.config.setting` metadata."""

SHAPES = ("width", "layers")
"""What a recipe is applied *to*: the only model settings it does not carry."""

RECIPE_KEYS = tuple(
    name
    for name, f in SETTINGS.items()
    if f.metadata["group"] in ("model", "optimisation")
    and name not in (*SHAPES, "base_width", "base_layers")
)
"""The hyperparameters a sweep's recipe.json holds (its base shapes are stored beside them)."""


def settings_in(group: str) -> tuple[str, ...]:
    """The names of the settings of one of :data:`GROUPS`, in declaration order."""
    return tuple(name for name, f in SETTINGS.items() if f.metadata["group"] == group)


def value_type(name: str) -> type:
    """The Python type of a setting's values (``int`` for ``int | None``, …)."""
    annotation = str(SETTINGS[name].type).replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, str)


def parse_setting(name: str, text: str) -> Any:
    """``text`` (from a command line) as a value of setting ``name``; ``ValueError`` if not."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}")
    meta = SETTINGS[name].metadata
    if meta["parse"] is not None:
        value = meta["parse"](text)
    elif value_type(name) is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--{flag_name(name)} takes true or false, got {text!r}")
        value = lowered in ("true", "1", "yes")
    else:
        try:
            value = value_type(name)(text)
        except ValueError:
            raise ValueError(
                f"--{flag_name(name)} takes {value_type(name).__name__} values, got {text!r}"
            ) from None
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ValueError(
            f"--{flag_name(name)} must be one of {', '.join(map(str, meta['choices']))}"
        )
    return value
