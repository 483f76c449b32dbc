"""What OGB asks of each dataset and which files it reads, from ``ogb``'s own metadata.

Tasks come from ``ogb``'s ``master.csv`` (:func:`task_of`); metrics always come from ``ogb``'s
``Evaluator`` (:func:`make_evaluator`). :func:`required_files` and :func:`marker` name what a
complete dataset folder holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd

EMBEDDED_DATASET = "ogbg-molesol"
"""The dataset shipped inside the package: ``pyg-mup train`` with no arguments trains on it."""

# Tasks the training loop can learn and ogb's Evaluator can score from a tensor of predictions.
SUPPORTED_TASK_TYPES = (
    "binary classification",
    "multiclass classification",
    "regression",
)


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded, with a one-line message that says what to do."""


@dataclass(frozen=True)
class Task:
    """What OGB asks of a dataset, read from ``ogb``'s ``master.csv``.

    ``num_tasks`` targets per graph (or node); for ``multiclass classification`` there is one
    target holding a class id in ``[0, num_classes)``. Labels of binary tasks may be NaN
    (missing): those entries are left out of the loss, and ``ogb``'s ``Evaluator`` skips them.
    """

    name: str
    level: Literal["graph", "node"]
    task_type: str
    num_tasks: int
    num_classes: int
    metric: str

    @property
    def is_regression(self) -> bool:
        return self.task_type == "regression"

    @property
    def is_multiclass(self) -> bool:
        return self.task_type == "multiclass classification"

    @property
    def out_channels(self) -> int:
        """Width of the model's output: class logits for multi-class, one score per task else."""
        return self.num_classes if self.is_multiclass else self.num_tasks

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in ("rmse", "mae")


@cache
def _master(level: str) -> pd.DataFrame:
    """``ogb``'s metadata table for ``graph`` or ``node`` property prediction (one column each)."""
    import ogb.graphproppred
    import ogb.nodeproppred

    module = ogb.graphproppred if level == "graph" else ogb.nodeproppred
    path = Path(module.__file__).parent / "master.csv"
    return pd.read_csv(path, index_col=0, keep_default_na=False)


def _meta(name: str) -> pd.Series:
    return _master(dataset_level(name))[name]


def dataset_level(name: str) -> Literal["graph", "node"]:
    """``'node'`` for ``ogbn-*`` datasets (one prediction per node), else ``'graph'``."""
    return "node" if name.startswith("ogbn-") else "graph"


def _is_supported(name: str) -> bool:
    meta = _meta(name)
    hetero = meta.get("is hetero", "False") == "True"
    return meta["task type"] in SUPPORTED_TASK_TYPES and not hetero


def known_datasets() -> list[str]:
    """The OGB graph- and node-property datasets this package can train on, sorted."""
    names = [*_master("graph").columns, *_master("node").columns]
    return sorted(n for n in names if _is_supported(n))


def check_name(name: str) -> None:
    """Raise :class:`DatasetError` listing the known names if ``name`` is not one of them."""
    if name not in known_datasets():
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")


def task_of(name: str) -> Task:
    """The OGB task of dataset ``name`` (e.g. ``ogbg-molhiv``: 1 binary task, ``rocauc``)."""
    check_name(name)
    meta = _meta(name)
    return Task(
        name=name,
        level=dataset_level(name),
        task_type=meta["task type"],
        num_tasks=int(meta["num tasks"]),
        num_classes=int(meta["num classes"]),
        metric=meta["eval metric"],
    )


def make_evaluator(name: str) -> Any:
    """``ogb``'s ``Evaluator`` for ``name``; ``.eval({'y_true', 'y_pred'})`` gives the metric."""
    if dataset_level(name) == "node":
        from ogb.nodeproppred import Evaluator
    else:
        from ogb.graphproppred import Evaluator
    return Evaluator(name)


def folder_name(name: str) -> str:
    """The folder ``ogb`` keeps ``name`` in under its root: ``ogbg-molhiv`` → ``ogbg_molhiv``."""
    return name.replace("-", "_")


def required_files(name: str) -> list[str]:
    """Files (relative to the dataset folder) that ``ogb`` reads, besides the release marker."""
    meta = _meta(name)
    label = "graph-label" if dataset_level(name) == "graph" else "node-label"
    if meta["binary"] == "True":
        raw = ["data.npz", f"{label}.npz"]
    else:
        raw = ["edge.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz", f"{label}.csv.gz"]
        if meta["has_node_attr"] == "True":
            raw.append("node-feat.csv.gz")
        if meta["has_edge_attr"] == "True":
            raw.append("edge-feat.csv.gz")
        extra = f"{meta['additional node files']},{meta['additional edge files']}"
        raw += [f"{f}.csv.gz" for f in extra.split(",") if f and f != "None"]
    split = [f"split/{meta['split']}/{part}.csv.gz" for part in ("train", "valid", "test")]
    return [f"raw/{f}" for f in raw] + split


def marker(name: str) -> str:
    """The release marker ``ogb`` checks before it trusts a dataset folder."""
    return f"RELEASE_v{_meta(name)['version']}.txt"
