"""OGB datasets through the real ``ogb`` loading path, made safe to use offline.

``ogb``'s dataset classes download where there is internet, but offline they can hang on an
``input()`` prompt (a dataset folder without its ``RELEASE_v*.txt`` marker), try the network
(a missing ``raw/`` folder), write ``processed/`` into a read-only folder, or fail to unpickle
under torch ≥ 2.6. :func:`load_dataset` checks the folder first and turns each of those into one
clear :class:`DatasetError`, and then calls ``ogb`` as usual.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import InMemoryDataset
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

from pyg_mup.data.cache import _dataset_class, _install, _is_current
from pyg_mup.data.keys import describe_transform, processed_name
from pyg_mup.data.roots import _dataset_folder, _resolve
from pyg_mup.data.tasks import EMBEDDED_DATASET, DatasetError, Task, dataset_level, task_of
from pyg_mup.data.verify import _download_help, _verify_once


@dataclass
class OGBData:
    """A loaded dataset: the ``ogb`` dataset object, its official split and its task."""

    dataset: InMemoryDataset
    split_idx: dict[str, torch.Tensor]
    task: Task
    path: Path


@contextlib.contextmanager
def _ogb_guard() -> Iterator[None]:
    """Run ``ogb`` with an empty stdin (a prompt raises ``EOFError`` instead of hanging), its
    chatter ("Loading necessary files...") sent to stderr, keeping stdout for results, and
    without its harmless warning about read-only NumPy labels."""
    torch.serialization.add_safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage])
    stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        sys.stdin = stdin


def _construct(
    name: str, root: Path, source: Path, pre_transform: Callable[..., Any] | None
) -> InMemoryDataset:
    """Build ``ogb``'s dataset object from its current processed cache, or process into a
    temporary folder and install it; downloads go through ``ogb`` when the folder is absent."""
    folder = _dataset_folder(name, root)
    processed = folder / processed_name(pre_transform)
    description = describe_transform(pre_transform)
    md5sums = source / "MD5SUMS"
    existed = folder.exists()
    if existed:
        _verify_once(name, folder, md5sums)  # also catches split files changed after processing
    current = existed and _is_current(processed, folder, description)
    # The temporary folder sits beside the dataset folder when ogb may still download it (its
    # download replaces the dataset folder), else inside it; a rename never crosses devices.
    work = processed
    if not current:
        work = Path(
            tempfile.mkdtemp(
                prefix=f".{folder.name}.{processed.name}.", dir=folder if existed else root
            )
        )
    try:
        with _ogb_guard():
            dataset = _dataset_class(dataset_level(name))(
                name=name,
                root=str(root),
                pre_transform=pre_transform,
                processed_dir=work,
                md5sums=md5sums,
            )
    except BaseException as error:
        if work != processed:
            shutil.rmtree(work, ignore_errors=True)
        download_failed = isinstance(error, (OSError, EOFError, SystemExit, RuntimeError))
        if existed or isinstance(error, DatasetError) or not download_failed:
            raise
        # ogb leaves an empty folder behind a failed download; without its marker that folder
        # would turn the next attempt into a "has no RELEASE marker" error.
        shutil.rmtree(folder, ignore_errors=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(
            f"{name} is not in {root} and ogb could not download it ({reason}); "
            f"{_download_help(name, root)}"
        ) from error
    if work != processed:
        _install(work, processed, folder, description)
        dataset._processed_dir = str(processed)
    return dataset


def load_dataset(
    name: str = EMBEDDED_DATASET,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    pre_transform: Callable[..., Any] | None = None,
) -> OGBData:
    """Load OGB dataset ``name`` with its official split, offline when the files are there.

    Args:
        name: an OGB name such as ``ogbg-molhiv`` or ``ogbn-arxiv`` (see :func:`known_datasets`).
        root: the folder holding ``<name with _>/`` in OGB's layout, or where ``ogb`` may
            download it. ``None``: the embedded dataset, or :func:`default_root`.
        cache_dir: where read-only roots are copied (default :func:`default_cache_dir`).
        pre_transform: a PyG transform applied to every graph once, before the processed
            dataset is saved (``ogb``'s ``pre_transform``): per-graph work such as
            ``AddRandomWalkPE`` is then read from disk on later loads. Each transform gets its
            own processed folder (:func:`processed_name`), so changing it never reuses a cache
            made with another one; without one the folder is ``ogb``'s ``processed/``.

    Raises:
        DatasetError: unknown name, missing root, incomplete folder or a raw/split file that
            fails :func:`verify_files`, failed download, ``pre_transform`` not callable.
    """
    task = task_of(name)
    if pre_transform is not None and not callable(pre_transform):
        raise DatasetError(
            f"pre_transform must be a callable PyG transform, got {type(pre_transform).__name__}"
        )
    writable_root, source = _resolve(name, root, cache_dir)
    dataset = _construct(name, writable_root, source, pre_transform)
    with _ogb_guard():
        split_idx = dataset.get_idx_split()
    return OGBData(dataset, split_idx, task, _dataset_folder(name, writable_root))
