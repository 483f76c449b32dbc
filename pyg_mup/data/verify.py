"""Checks of a dataset folder before ``ogb`` reads it.

``ogb`` trusts its files: a truncated or short raw file either fails deep inside pandas or
processes "successfully" into graphs whose features no longer line up, and the ``processed/``
cache it leaves is reused even after the raw files are fixed. :func:`verify_files` names the
first file ``ogb`` would misread; :func:`load_dataset <pyg_mup.data.load_dataset>` runs it once
per version of the files.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from pyg_mup.data.files import _VERIFIED, _fingerprint, _write_atomic
from pyg_mup.data.tasks import (
    DatasetError,
    _meta,
    dataset_level,
    folder_name,
    marker,
    required_files,
)


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

    level = dataset_level(name)
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
    return len(num_nodes) if dataset_level(name) == "graph" else int(num_nodes.sum())


def _verify_splits(name: str, folder: Path, items: int) -> None:
    what = "graphs" if dataset_level(name) == "graph" else "nodes"
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
