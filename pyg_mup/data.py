"""OGB datasets through the real ``ogb`` loading path, made safe to use offline.

``ogb``'s dataset classes download where there is internet, but offline they can hang on an
``input()`` prompt (a dataset folder without its ``RELEASE_v*.txt`` marker), try the network
(a missing ``raw/`` folder), write ``processed/`` into a read-only folder, or fail to unpickle
under torch ≥ 2.6. :func:`load_dataset` checks the folder first and turns each of those into
one clear :class:`DatasetError`, copies read-only roots (and the dataset embedded in this
package) to a writable cache, and then calls ``ogb`` as usual.

Tasks come from ``ogb``'s own metadata (``master.csv``); metrics always come from ``ogb``'s
``Evaluator`` (:func:`make_evaluator`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch_geometric.data import InMemoryDataset
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

EMBEDDED_DATASET = "ogbg-molesol"
"""The dataset shipped inside the package: ``pyg-mup train`` with no arguments trains on it."""

EMBEDDED_ROOT = Path(__file__).resolve().parent / "datasets"

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


@dataclass
class OGBData:
    """A loaded dataset: the ``ogb`` dataset object, its official split and its task."""

    dataset: InMemoryDataset
    split_idx: dict[str, torch.Tensor]
    task: Task
    path: Path


@cache
def _master(level: str) -> pd.DataFrame:
    """``ogb``'s metadata table for ``graph`` or ``node`` property prediction (one column each)."""
    import ogb.graphproppred
    import ogb.nodeproppred

    module = ogb.graphproppred if level == "graph" else ogb.nodeproppred
    path = Path(module.__file__).parent / "master.csv"
    return pd.read_csv(path, index_col=0, keep_default_na=False)


def _meta(name: str) -> pd.Series:
    return _master(_level(name))[name]


def _level(name: str) -> Literal["graph", "node"]:
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
        level=_level(name),
        task_type=meta["task type"],
        num_tasks=int(meta["num tasks"]),
        num_classes=int(meta["num classes"]),
        metric=meta["eval metric"],
    )


def make_evaluator(name: str) -> Any:
    """``ogb``'s ``Evaluator`` for ``name``; ``.eval({'y_true', 'y_pred'})`` gives the metric."""
    if _level(name) == "node":
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
    label = "graph-label" if _level(name) == "graph" else "node-label"
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


def default_cache_dir() -> Path:
    """Where read-only roots are copied: ``$PYG_MUP_CACHE`` or ``~/.cache/pyg_mup``."""
    env = os.environ.get("PYG_MUP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pyg_mup"


def default_root() -> Path:
    """Where ``ogb`` downloads datasets when no ``--root`` is given."""
    return default_cache_dir() / "ogb"


def _download_help(name: str, root: Path) -> str:
    url = _meta(name)["url"]
    return (
        f"download {url} and unzip it into {root} so that "
        f"{root / folder_name(name) / marker(name)} and its raw/ and split/ folders exist"
    )


def _check_folder(name: str, folder: Path, root: Path) -> None:
    """Raise :class:`DatasetError` unless ``folder`` holds a complete OGB dataset."""
    if not (folder / marker(name)).is_file():
        raise DatasetError(
            f"{folder} has no {marker(name)}, the release marker ogb needs (without it ogb "
            f"asks on stdin whether to re-download); if the files are OGB's current release add "
            f"an empty {marker(name)}, else remove the folder and {_download_help(name, root)}"
        )
    missing = [f for f in required_files(name) if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{folder} is incomplete (missing {', '.join(missing)}); {_download_help(name, root)}"
        )


def _fingerprint(folder: Path) -> str:
    """A digest of the file names, sizes and times under ``folder``, ``processed/`` aside."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] != "processed":
            stat = path.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _writable(path: Path) -> bool:
    """Whether ``path`` may be written. The mode bits count too: root passes ``os.access`` even
    on a folder without write bits, such as the read-only ``shared/`` copy CI lays out."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _loadable_in_place(folder: Path) -> bool:
    processed = folder / "processed"
    return _writable(folder) and (not processed.exists() or _writable(processed))


def _cached_copy(folder: Path, cache_dir: Path) -> Path:
    """Copy ``folder`` (not its ``processed/``) into the cache once; return the cache's root.

    The copy is keyed by ``folder``'s absolute path and refreshed when its files change. It is
    written to a temporary folder and renamed into place, so concurrent loaders (one per DDP
    rank) and interrupted copies never see half a dataset.
    """
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    root = cache_dir / "ogb" / key
    target = root / folder.name
    stamp = root / f"{folder.name}.source"
    fingerprint = _fingerprint(folder)
    if target.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        shutil.copytree(folder, tmp / folder.name, ignore=shutil.ignore_patterns("processed"))
        for path in (tmp / folder.name).rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / folder.name, target)
        stamp.write_text(fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


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


def resolve_root(name: str, root: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """The writable root ``ogb`` should load ``name`` from, after checking what is there.

    - ``root=None`` and the embedded dataset: a cache copy of the package's copy.
    - ``root=None`` otherwise: :func:`default_root`, where ``ogb`` downloads if needed.
    - a root holding the dataset folder: checked complete; copied to the cache if read-only.
    - a root without it: returned as is, for ``ogb`` to download into (it must be writable).
    """
    check_name(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if root is None:
        if name == EMBEDDED_DATASET:
            return _cached_copy(EMBEDDED_ROOT / folder_name(name), cache)
        root = default_root()
        root.mkdir(parents=True, exist_ok=True)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; {_download_help(name, root)}")
    if root.name == folder_name(name) and (root / marker(name)).is_file():
        root = root.parent  # the dataset folder itself was given; ogb wants the one above
    folder = root / folder_name(name)
    if not folder.exists() and (root / f"{folder_name(name)}_pyg").exists():
        folder = root / f"{folder_name(name)}_pyg"
    if folder.exists():
        _check_folder(name, folder, root)
        return root if _loadable_in_place(folder) else _cached_copy(folder, cache)
    if not _writable(root):
        raise DatasetError(
            f"{name} is not in {root}, which is read-only; {_download_help(name, root)}"
        )
    return root


def _construct(name: str, root: Path) -> InMemoryDataset:
    """Build ``ogb``'s dataset object; downloads go through ``ogb`` when the folder is absent."""
    if _level(name) == "node":
        from ogb.nodeproppred import PygNodePropPredDataset as Dataset
    else:
        from ogb.graphproppred import PygGraphPropPredDataset as Dataset
    folder = root / folder_name(name)
    existed = folder.exists()
    try:
        with _ogb_guard():
            return Dataset(name=name, root=str(root))
    except (OSError, EOFError, SystemExit, RuntimeError) as error:
        if existed:
            raise
        # ogb leaves an empty folder behind a failed download; without its marker that folder
        # would turn the next attempt into a "has no RELEASE marker" error.
        shutil.rmtree(folder, ignore_errors=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(
            f"{name} is not in {root} and ogb could not download it ({reason}); "
            f"{_download_help(name, root)}"
        ) from error


def load_dataset(
    name: str = EMBEDDED_DATASET,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> OGBData:
    """Load OGB dataset ``name`` with its official split, offline when the files are there.

    Args:
        name: an OGB name such as ``ogbg-molhiv`` or ``ogbn-arxiv`` (see :func:`known_datasets`).
        root: the folder holding ``<name with _>/`` in OGB's layout, or where ``ogb`` may
            download it. ``None``: the embedded dataset, or :func:`default_root`.
        cache_dir: where read-only roots are copied (default :func:`default_cache_dir`).

    Raises:
        DatasetError: unknown name, missing root, incomplete folder, failed download.
    """
    task = task_of(name)
    writable_root = resolve_root(name, root, cache_dir)
    dataset = _construct(name, writable_root)
    with _ogb_guard():
        split_idx = dataset.get_idx_split()
    return OGBData(dataset, split_idx, task, writable_root / folder_name(name))
