"""OGB datasets through the real ``ogb`` loading path, made safe to use offline.

:func:`load_dataset` checks the folder first and turns each way ``ogb`` fails offline into one
clear :class:`DatasetError` (:mod:`~pyg_mup.data.load`), copies read-only roots (and the dataset
embedded in this package) to a writable cache (:mod:`~pyg_mup.data.roots`), verifies the raw and
split files (:func:`verify_files`, once per version of the files; :mod:`~pyg_mup.data.verify`),
and then calls ``ogb`` as usual. ``ogb`` processes into a temporary folder that is renamed into
place, so no half-written cache is ever read, and a cache records the raw files it was made from
(rebuilt when they change) and the ``pre_transform`` it holds (one folder per transform;
:mod:`~pyg_mup.data.cache`, :mod:`~pyg_mup.data.keys`).

Tasks come from ``ogb``'s own metadata (``master.csv``); metrics always come from ``ogb``'s
``Evaluator`` (:func:`make_evaluator`; :mod:`~pyg_mup.data.tasks`).
"""

from __future__ import annotations

from torch_geometric.data import InMemoryDataset

from pyg_mup.data.cache import keyed_class
from pyg_mup.data.keys import describe_transform, processed_name
from pyg_mup.data.load import OGBData, load_dataset
from pyg_mup.data.load import _ogb_guard as _ogb_guard  # for tests: ogb under the guard
from pyg_mup.data.roots import EMBEDDED_ROOT, default_cache_dir, default_root, resolve_root
from pyg_mup.data.tasks import (
    EMBEDDED_DATASET,
    SUPPORTED_TASK_TYPES,
    DatasetError,
    Task,
    check_name,
    dataset_level,
    folder_name,
    known_datasets,
    make_evaluator,
    marker,
    required_files,
    task_of,
)
from pyg_mup.data.tasks import _meta as _meta  # for tests: ogb's metadata of a name
from pyg_mup.data.verify import verify_files

__all__ = [
    "EMBEDDED_DATASET",
    "EMBEDDED_ROOT",
    "SUPPORTED_TASK_TYPES",
    "DatasetError",
    "OGBData",
    "Task",
    "check_name",
    "dataset_level",
    "default_cache_dir",
    "default_root",
    "describe_transform",
    "folder_name",
    "known_datasets",
    "load_dataset",
    "make_evaluator",
    "marker",
    "processed_name",
    "required_files",
    "resolve_root",
    "task_of",
    "verify_files",
]


def __getattr__(attr: str) -> type[InMemoryDataset]:
    keyed = keyed_class(attr)
    if keyed is None:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    return keyed
