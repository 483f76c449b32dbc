"""Processed caches made by ``ogb``'s own dataset classes, keyed and checked.

``ogb`` processes into a temporary folder that is renamed into place, so no half-written cache is
ever read, and a cache records the raw files it was made from (rebuilt when they change) and the
``pre_transform`` it holds (:mod:`pyg_mup.data.keys`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from torch_geometric.data import InMemoryDataset

from pyg_mup.data.files import _PROCESSED_FILE, _RAW_STAMP, _TRANSFORM_STAMP, _fingerprint
from pyg_mup.data.tasks import DatasetError
from pyg_mup.data.verify import _verify_once


class _KeyedProcessing:
    """Mixed into ``ogb``'s dataset classes to change two things only: the processed folder is
    the caller's (a temporary folder while processing; the keyed one after), and the raw files
    are verified before ``ogb`` processes them (after a download too). Loading, downloading and
    processing stay ``ogb``'s."""

    def __init__(self, *args: Any, processed_dir: Path, md5sums: Path | None, **kwargs: Any):
        self._processed_dir = str(processed_dir)
        self._md5sums = md5sums
        super().__init__(*args, **kwargs)

    @property
    def processed_dir(self) -> str:
        return self._processed_dir

    def process(self) -> None:
        _verify_once(self.name, Path(self.root), self._md5sums)
        super().process()


_BASES = {
    "graph": ("ogb.graphproppred", "PygGraphPropPredDataset"),
    "node": ("ogb.nodeproppred", "PygNodePropPredDataset"),
}


@cache
def _dataset_class(level: str) -> type[InMemoryDataset]:
    """``ogb``'s dataset class for ``level`` with :class:`_KeyedProcessing` mixed in, made on
    first use (importing ``ogb`` takes seconds) and reachable as ``pyg_mup.data.Keyed<name>``
    so that datasets pickle (DataLoader workers under ``spawn``): pickle finds a class by its
    ``__module__``, the package, whose ``__getattr__`` calls :func:`keyed_class`."""
    module, name = _BASES[level]
    base = getattr(importlib.import_module(module), name)
    qualname = f"Keyed{name}"
    return type(
        qualname, (_KeyedProcessing, base), {"__module__": __package__, "__qualname__": qualname}
    )


def keyed_class(attr: str) -> type[InMemoryDataset] | None:
    """The keyed dataset class named ``attr`` (``KeyedPygGraphPropPredDataset``, ...), or None."""
    for level, (_, name) in _BASES.items():
        if attr == f"Keyed{name}":
            return _dataset_class(level)
    return None


def _is_current(processed: Path, folder: Path, description: str) -> bool:
    """Whether ``processed`` was made from ``folder``'s raw files as they are now, with the
    ``pre_transform`` that ``description`` describes."""
    raw, transform = processed / _RAW_STAMP, processed / _TRANSFORM_STAMP
    return (
        (processed / _PROCESSED_FILE).is_file()
        and raw.is_file()
        and transform.is_file()
        and raw.read_text() == _fingerprint(folder, "raw")
        and transform.read_text() == description
    )


def _install(work: Path, processed: Path, folder: Path, description: str) -> None:
    """Stamp the freshly processed ``work`` folder and rename it to ``processed``. A stale
    ``processed`` is moved aside first (renames, so a reader sees the old folder or the new one,
    never a mix); if a concurrent loader installed a current one meanwhile, keep that."""
    (work / _RAW_STAMP).write_text(_fingerprint(folder, "raw"))
    (work / _TRANSFORM_STAMP).write_text(description)
    old = work.with_name(f"{work.name}.old")
    try:
        if not _is_current(processed, folder, description):
            with contextlib.suppress(FileNotFoundError):
                os.replace(processed, old)
            with contextlib.suppress(OSError):
                os.replace(work, processed)
        if not _is_current(processed, folder, description):
            raise DatasetError(f"could not install the processed cache {processed}")
    finally:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
