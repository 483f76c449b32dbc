"""OGB datasets through the real ``ogb`` loading path, made safe to use offline.

``ogb``'s dataset classes download where there is internet, but offline they can hang on an
``input()`` prompt (a dataset folder without its ``RELEASE_v*.txt`` marker), try the network
(a missing ``raw/`` folder), write ``processed/`` into a read-only folder, or fail to unpickle
under torch ≥ 2.6. And they trust their files: a truncated or short raw file either fails deep
inside pandas or processes "successfully" into graphs whose features no longer line up, and the
``processed/`` cache it leaves is reused even after the raw files are fixed.

:func:`load_dataset` checks the folder first and turns each of those into one clear
:class:`DatasetError`, copies read-only roots (and the dataset embedded in this package) to a
writable cache, verifies the raw and split files (:func:`verify_files`, once per version of the
files), and then calls ``ogb`` as usual. ``ogb`` processes into a temporary folder that is renamed
into place, so no half-written cache is ever read, and a cache records the raw files it was made
from (rebuilt when they change) and the ``pre_transform`` it holds (one folder per transform).

Tasks come from ``ogb``'s own metadata (``master.csv``); metrics always come from ``ogb``'s
``Evaluator`` (:func:`make_evaluator`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import os
import re
import shutil
import sys
import tempfile
import types
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
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


# Names inside a dataset folder that belong to this module, not to the OGB release: processed
# caches ("processed", "processed_<digest>") and dot-names (stamps, folders being written).
_VERIFIED = ".pyg_mup_verified"  # fingerprint of the files that last passed verify_files
_RAW_STAMP = "raw.fingerprint"  # in a processed folder: the raw/ files it was made from
_TRANSFORM_STAMP = "pre_transform.txt"  # in a processed folder: describe_transform() of it
_PROCESSED_FILE = "geometric_data_processed.pt"  # what ogb writes into its processed folder


def _is_release_file(rel: Path) -> bool:
    return not rel.parts[0].startswith(("processed", "."))


def _fingerprint(folder: Path, under: str | None = None) -> str:
    """A digest of the names, sizes and modification times of ``folder``'s release files (all,
    or those under ``under``), without reading them: cheap enough for every load."""
    digest = hashlib.sha256()
    for path in sorted((folder / under if under else folder).rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and _is_release_file(rel):
            stat = path.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _skip_caches(folder: Path) -> Callable[[str, list[str]], list[str]]:
    """A ``shutil.copytree`` ``ignore`` that leaves out ``folder``'s processed caches and
    dot-names (only at its top level, where this module puts them)."""

    def ignore(where: str, names: list[str]) -> list[str]:
        top = Path(where) == folder
        return [name for name in names if top and not _is_release_file(Path(name))]

    return ignore


def _writable(path: Path) -> bool:
    """Whether ``path`` may be written. The mode bits count too: root passes ``os.access`` even
    on a folder without write bits, such as the read-only ``shared/`` copy CI lays out."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _loadable_in_place(folder: Path) -> bool:
    processed = folder / "processed"
    return _writable(folder) and (not processed.exists() or _writable(processed))


def _cached_copy(folder: Path, cache_dir: Path) -> Path:
    """Copy ``folder``'s release files (no processed caches) into the cache once; return the
    cache's root.

    The copy is keyed by ``folder``'s absolute path and refreshed when its files change. It is
    written to a temporary folder and renamed into place, so concurrent loaders (one per DDP
    rank) and interrupted copies never see half a dataset.
    """
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DatasetError(f"cache_dir {cache_dir} is a file, not a folder")
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    root = cache_dir / "ogb" / key
    target = root / folder.name
    stamp = root / f"{folder.name}.source"
    fingerprint = _fingerprint(folder)
    if target.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    except OSError as error:
        raise DatasetError(
            f"cannot write the dataset cache in cache_dir {cache_dir} ({error.strerror}); "
            "pass a writable cache_dir or set $PYG_MUP_CACHE"
        ) from error
    try:
        shutil.copytree(folder, tmp / folder.name, ignore=_skip_caches(folder))
        for path in (tmp / folder.name).rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / folder.name, target)
        stamp.write_text(fingerprint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# --- raw-file verification -------------------------------------------------------------------


def _fail(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path} {problem}; restore it from the OGB release")


def _read_table(
    folder: Path,
    rel: str,
    columns: int | None = None,
    integral: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """``folder/rel`` read as ``ogb`` reads it (a headerless gzip CSV), as a float or int
    array ``[rows, columns]``; :class:`DatasetError` naming the file and line if it is not a
    complete, rectangular table of numbers (NaN allowed only where ``allow_nan``: missing
    labels)."""
    path = folder / rel
    try:
        frame = pd.read_csv(path, compression="gzip", header=None)
    except EOFError as error:
        raise _fail(path, "is truncated (its gzip stream ends early)") from error
    except pd.errors.EmptyDataError as error:
        raise _fail(path, "is empty") from error
    except pd.errors.ParserError as error:
        reason = str(error).strip().splitlines()[0].removeprefix("Error tokenizing data. C error: ")
        raise _fail(path, f"cannot be parsed as CSV ({reason})") from error
    except (OSError, zlib.error, UnicodeDecodeError) as error:
        raise _fail(path, f"is not a readable gzip file ({error})") from error
    if columns is not None and frame.shape[1] != columns:
        raise _fail(path, f"has {frame.shape[1]} columns, expected {columns}")
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        numbers = frame.apply(pd.to_numeric, errors="coerce")
        row, col = np.argwhere((numbers.isna() & frame.notna()).to_numpy())[0]
        raise _fail(
            path, f"line {row + 1}, column {col + 1}: {frame.iat[row, col]!r} is not a number"
        )
    values = frame.to_numpy()
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise _fail(path, f"line {row + 1} has a missing or infinite value (or too few columns)")
    if integral and values.dtype.kind == "f":
        whole = values == np.round(values)
        if not whole.all():
            row, col = np.argwhere(~whole)[0]
            raise _fail(
                path, f"line {row + 1}, column {col + 1}: {values[row, col]} is not an integer"
            )
        values = values.astype(np.int64)
    return values


def _expect_rows(path: Path, rows: int, expected: int, source: str) -> None:
    if rows != expected:
        raise _fail(path, f"has {rows:,} rows, but {source} is {expected:,}")


def _verify_csv(name: str, folder: Path) -> int:
    """Check the CSV release of ``name`` in ``folder``; return how many items (graphs, or nodes
    for node-level data) the split indices may address."""
    meta = _meta(name)
    counts = {}
    for kind in ("node", "edge"):
        rel = f"raw/num-{kind}-list.csv.gz"
        counts[kind] = _read_table(folder, rel, columns=1, integral=True)[:, 0]
        if (counts[kind] < 0).any():
            row = int(np.flatnonzero(counts[kind] < 0)[0])
            raise _fail(folder / rel, f"line {row + 1} is a negative count")
    num_nodes, num_edges = counts["node"], counts["edge"]
    if len(num_nodes) != len(num_edges):
        raise _fail(
            folder / "raw/num-node-list.csv.gz",
            f"lists {len(num_nodes):,} graphs, but raw/num-edge-list.csv.gz lists "
            f"{len(num_edges):,}",
        )
    total = {"node": int(num_nodes.sum()), "edge": int(num_edges.sum())}
    sums = {kind: f"the sum of raw/num-{kind}-list.csv.gz" for kind in total}

    edge = _read_table(folder, "raw/edge.csv.gz", columns=2, integral=True)
    _expect_rows(folder / "raw/edge.csv.gz", len(edge), total["edge"], sums["edge"])
    # Node indices are local to their graph: each edge's ends lie in [0, n_graph).
    limit = np.repeat(num_nodes, num_edges)[:, None]
    outside = ((edge < 0) | (edge >= limit)).any(1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        graph = int(np.searchsorted(np.cumsum(num_edges), row, side="right"))
        raise _fail(
            folder / "raw/edge.csv.gz",
            f"line {row + 1}: edge {edge[row, 0]},{edge[row, 1]} leaves graph {graph}, "
            f"whose nodes are 0..{limit[row, 0] - 1}",
        )

    files = {"node": [], "edge": []}
    for kind in ("node", "edge"):
        if meta[f"has_{kind}_attr"] == "True":
            files[kind].append(f"raw/{kind}-feat.csv.gz")
        extra = meta[f"additional {kind} files"]
        files[kind] += [f"raw/{f}.csv.gz" for f in extra.split(",") if f and f != "None"]
    for kind, rels in files.items():
        for rel in rels:
            rows = len(_read_table(folder, rel))
            _expect_rows(folder / rel, rows, total[kind], sums[kind])

    level = _level(name)
    items = len(num_nodes) if level == "graph" else total["node"]
    rel = f"raw/{level}-label.csv.gz"
    labels = _read_table(folder, rel, columns=int(meta["num tasks"]), allow_nan=True)
    graphs = "the number of graphs (rows of raw/num-node-list.csv.gz)"
    _expect_rows(folder / rel, len(labels), items, graphs if level == "graph" else sums["node"])
    return items


def _verify_binary(name: str, folder: Path) -> int:
    """Check that a binary (``data.npz``) release opens; return how many items the split
    indices may address. Only ``num_nodes_list`` is read: these releases are the large ones."""
    path = folder / "raw/data.npz"
    try:
        with np.load(path) as arrays:
            num_nodes = arrays["num_nodes_list"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise _fail(path, f"cannot be read as OGB's data.npz ({error})") from error
    return len(num_nodes) if _level(name) == "graph" else int(num_nodes.sum())


def _verify_splits(name: str, folder: Path, items: int) -> None:
    what = "graphs" if _level(name) == "graph" else "nodes"
    for rel in required_files(name):
        if rel.startswith("split/"):
            index = _read_table(folder, rel, columns=1, integral=True)[:, 0]
            outside = (index < 0) | (index >= items)
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                raise _fail(
                    folder / rel,
                    f"line {row + 1}: index {index[row]} is outside [0, {items}) "
                    f"(the dataset has {items:,} {what})",
                )


def _md5_listings(folder: Path, beside: Path | None) -> list[tuple[Path, str]]:
    """MD5SUMS files that cover ``folder``, each with the prefix its paths carry: the folder's
    own (paths relative to it) and one in the folder above (``beside``; paths start with the
    folder's name, like ``shared/data/MD5SUMS``)."""
    listings = [(folder / "MD5SUMS", ""), (beside, f"{folder.name}/") if beside else None]
    return [(path, prefix) for path, prefix in filter(None, listings) if path.is_file()]


def _verify_checksums(name: str, folder: Path, listings: list[tuple[Path, str]]) -> None:
    read_by_ogb = {*required_files(name), marker(name)}
    for listing, prefix in listings:
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            digest, _, rel = line.partition(" ")
            rel = rel.lstrip(" ").removeprefix("*")
            if len(digest) != 32 or not rel or set(digest.lower()) - set("0123456789abcdef"):
                raise DatasetError(f"{listing} line {number} is not '<md5>  <path>': {line!r}")
            rel = rel.removeprefix(prefix) if rel.startswith(prefix) else None
            if rel in read_by_ogb and (folder / rel).is_file():
                actual = hashlib.md5((folder / rel).read_bytes()).hexdigest()
                if actual != digest.lower():
                    raise DatasetError(
                        f"{folder / rel} does not match its MD5 in {listing} ({actual}, listed "
                        f"{digest}); restore it from the OGB release, or remove its line from "
                        "that file if the change is yours"
                    )


def verify_files(name: str, folder: str | Path, md5sums: str | Path | None = None) -> None:
    """Raise :class:`DatasetError` naming the first file in ``folder`` that ``ogb`` would misread.

    Checks, in this order: the release marker and every file ``ogb`` reads are present; each
    gzip reads to its end; each table is rectangular and numeric (labels may be NaN); the rows
    of ``edge.csv.gz`` (and ``edge-feat``, extra edge files) equal the sum of
    ``num-edge-list.csv.gz``, those of ``node-feat`` (and extra node files) the sum of
    ``num-node-list.csv.gz``, those of the label file the number of graphs (nodes for node-level
    data); every edge stays inside its graph; split indices lie in range; and files listed in
    an ``MD5SUMS`` match it — ``folder/MD5SUMS`` (paths relative to ``folder``) and
    ``md5sums`` (paths starting with ``folder``'s name, like ``shared/data/MD5SUMS``). Counts
    come first so that a short file is reported as short, not only as changed.

    Cost: every CSV is parsed once with pandas, about as long as ``ogb``'s own read of them;
    :func:`load_dataset` runs it only when the files changed since they last passed.
    Binary (``data.npz``) releases get the marker, split and MD5 checks only.
    """
    folder = Path(folder)
    _check_folder(name, folder, folder.parent)
    binary = _meta(name)["binary"] == "True"
    items = _verify_binary(name, folder) if binary else _verify_csv(name, folder)
    _verify_splits(name, folder, items)
    _verify_checksums(name, folder, _md5_listings(folder, Path(md5sums) if md5sums else None))


def _verify_once(name: str, folder: Path, md5sums: Path | None) -> None:
    """:func:`verify_files`, skipped when the files (and MD5 listings) are unchanged since they
    last passed: a stamp in the folder holds their fingerprint."""
    listings = _md5_listings(folder, md5sums)
    parts = [_fingerprint(folder), *(f"{p}\0{p.stat().st_mtime_ns}" for p, _ in listings)]
    key = "\n".join(parts)
    stamp = folder / _VERIFIED
    if stamp.is_file() and stamp.read_text() == key:
        return
    verify_files(name, folder, md5sums)
    _write_atomic(stamp, key)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- pre_transform keys ----------------------------------------------------------------------


def describe_transform(transform: Callable[..., Any] | None) -> str:
    """A stable text for ``transform`` that changes whenever its settings or code do.

    It keys the processed cache, so it must not be ``repr``: PyG transforms print without their
    arguments (``AddRandomWalkPE(walk_length=4)`` and ``(walk_length=8)`` both print
    ``AddRandomWalkPE()``). Objects are described by their class and, recursively, their
    attributes; functions (and a transform class's ``forward``) by their qualified name and a
    digest of their byte code and constants; tensors by dtype, shape and a digest of their bytes.
    No memory address enters it, so it is the same in every process.
    """
    return _describe(transform, frozenset())


def _describe(obj: Any, seen: frozenset[int]) -> str:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return repr(obj)
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_describe(item, seen) for item in obj]
        items = sorted(items) if isinstance(obj, (set, frozenset)) else items
        return f"{type(obj).__name__}[{', '.join(items)}]"
    if isinstance(obj, dict):
        items = sorted(f"{_describe(k, seen)}: {_describe(v, seen)}" for k, v in obj.items())
        return f"dict{{{', '.join(items)}}}"
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        return f"tensor({obj.dtype}, {tuple(obj.shape)}, {hashlib.sha256(data).hexdigest()[:16]})"
    if isinstance(obj, np.ndarray):
        return _describe(torch.from_numpy(np.ascontiguousarray(obj)), seen)
    if isinstance(obj, functools.partial):
        return f"partial({_describe([obj.func, obj.args, obj.keywords], seen)})"
    if isinstance(obj, types.MethodType):
        return f"{_describe(obj.__self__, seen)}.{_describe(obj.__func__, seen)}"
    if isinstance(obj, types.FunctionType):
        cells = [cell.cell_contents for cell in obj.__closure__ or ()]
        extras = _describe([obj.__defaults__, obj.__kwdefaults__, cells], seen)
        return f"{obj.__module__}.{obj.__qualname__}#{_code_digest(obj.__code__)}{extras}"
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    methods = [getattr(cls, attr, None) for attr in ("forward", "__call__")]
    method = next((m for m in methods if isinstance(m, types.FunctionType)), None)
    if method is not None:
        name += f"#{_code_digest(method.__code__)}"
    state = getattr(obj, "__dict__", None)
    if state is None:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))
    return f"{name}({', '.join(f'{k}={_describe(v, seen)}' for k, v in sorted(state.items()))})"


def _code_digest(code: types.CodeType) -> str:
    """Byte code, names and constants (nested functions included). Not ``marshal``: its output
    depends on reference counts, so it differs between processes."""
    digest = hashlib.sha256(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames)).encode())
    for const in code.co_consts:
        digest.update(
            _code_digest(const).encode()
            if isinstance(const, types.CodeType)
            else repr(const).encode()
        )
    return digest.hexdigest()[:16]


def processed_name(pre_transform: Callable[..., Any] | None) -> str:
    """The processed folder for ``pre_transform``: ``processed`` without one (as plain ``ogb``),
    else ``processed_<digest of describe_transform(pre_transform)>``."""
    if pre_transform is None:
        return "processed"
    digest = hashlib.sha256(describe_transform(pre_transform).encode()).hexdigest()[:16]
    return f"processed_{digest}"


# --- ogb's dataset classes, keyed and checked ------------------------------------------------


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
    so that datasets pickle (DataLoader workers under ``spawn``)."""
    module, name = _BASES[level]
    base = getattr(importlib.import_module(module), name)
    qualname = f"Keyed{name}"
    return type(
        qualname, (_KeyedProcessing, base), {"__module__": __name__, "__qualname__": qualname}
    )


def __getattr__(attr: str) -> type[InMemoryDataset]:
    for level, (_, name) in _BASES.items():
        if attr == f"Keyed{name}":
            return _dataset_class(level)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


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


def _dataset_folder(name: str, root: Path) -> Path:
    """The folder ``ogb`` uses under ``root``: ``<name with _>_pyg`` if present, as ``ogb``."""
    pyg = root / f"{folder_name(name)}_pyg"
    return pyg if pyg.exists() else root / folder_name(name)


def _resolve(name: str, root: str | Path | None, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """(the writable root ``ogb`` loads from, the root the dataset was found in)."""
    check_name(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if root is None:
        if name == EMBEDDED_DATASET:
            return _cached_copy(EMBEDDED_ROOT / folder_name(name), cache), EMBEDDED_ROOT
        root = default_root()
        root.mkdir(parents=True, exist_ok=True)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(
            f"dataset root {root} is a file; pass the folder that holds {folder_name(name)}/"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; {_download_help(name, root)}")
    if root.name == folder_name(name) and (root / marker(name)).is_file():
        root = root.parent  # the dataset folder itself was given; ogb wants the one above
    folder = _dataset_folder(name, root)
    if folder.exists():
        _check_folder(name, folder, root)
        writable = root if _loadable_in_place(folder) else _cached_copy(folder, cache)
        return writable, root
    if not _writable(root):
        raise DatasetError(
            f"{name} is not in {root}, which is read-only; {_download_help(name, root)}"
        )
    return root, root


def resolve_root(name: str, root: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """The writable root ``ogb`` should load ``name`` from, after checking what is there.

    - ``root=None`` and the embedded dataset: a cache copy of the package's copy.
    - ``root=None`` otherwise: :func:`default_root`, where ``ogb`` downloads if needed.
    - a root holding the dataset folder: checked complete; copied to the cache if read-only.
    - a root without it: returned as is, for ``ogb`` to download into (it must be writable).
    """
    return _resolve(name, root, cache_dir)[0]


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
            dataset = _dataset_class(_level(name))(
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
