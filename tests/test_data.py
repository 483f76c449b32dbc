"""OGB loading offline: the shared datasets, the embedded one, and every way a root can be wrong."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyg_mup import data
from pyg_mup.data import DatasetError, load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# OGB's published split sizes (train, valid, test) and task counts.
PUBLISHED = {
    "ogbg-molbace": (1513, (1210, 151, 152), 1, "rocauc"),
    "ogbg-molbbbp": (2039, (1631, 204, 204), 1, "rocauc"),
    "ogbg-molesol": (1128, (902, 113, 113), 1, "rmse"),
    "ogbg-molfreesolv": (642, (513, 64, 65), 1, "rmse"),
    "ogbg-molhiv": (41127, (32901, 4113, 4113), 1, "rocauc"),
    "ogbg-molclintox": (1477, (1181, 148, 148), 2, "rocauc"),
    "ogbg-molsider": (1427, (1141, 143, 143), 27, "rocauc"),
}

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared OGB data at {SHARED}")


def copy_dataset(name: str, root: Path) -> Path:
    """Copy one shared dataset folder into ``root`` (writable) and return ``root``."""
    folder = data.folder_name(name)
    shutil.copytree(SHARED / folder, root / folder, ignore=shutil.ignore_patterns("processed"))
    for path in (root / folder).rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    (root / folder).chmod((root / folder).stat().st_mode | stat.S_IWUSR)
    return root


@needs_shared
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shared_dataset_loads_offline_with_published_counts(name, tmp_path):
    graphs, split_sizes, num_tasks, metric = PUBLISHED[name]
    loaded = load_dataset(name, copy_dataset(name, tmp_path), cache_dir=tmp_path / "cache")
    assert len(loaded.dataset) == graphs
    sizes = tuple(loaded.split_idx[k].numel() for k in ("train", "valid", "test"))
    assert sizes == split_sizes
    assert loaded.task.num_tasks == num_tasks and loaded.task.metric == metric
    assert loaded.dataset[0].x.dtype == torch.long and loaded.dataset[0].x.size(1) == 9
    assert not (tmp_path / "cache").exists()  # a writable root is loaded in place


def test_embedded_dataset_loads_from_a_cache_copy(tmp_path):
    loaded = load_dataset(cache_dir=tmp_path)
    assert loaded.task.name == data.EMBEDDED_DATASET == "ogbg-molesol"
    assert len(loaded.dataset) == 1128
    assert [loaded.split_idx[k].numel() for k in ("train", "valid", "test")] == [902, 113, 113]
    assert loaded.path.is_relative_to(tmp_path)
    assert not (data.EMBEDDED_ROOT / "ogbg_molesol" / "processed").exists()
    again = load_dataset(cache_dir=tmp_path)  # reuses the processed copy
    assert again.path == loaded.path
    assert torch.equal(again.dataset.y, loaded.dataset.y)


def test_embedded_files_match_their_checksums():
    folder = data.EMBEDDED_ROOT / "ogbg_molesol"
    result = subprocess.run(
        ["md5sum", "--quiet", "-c", "MD5SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / "LICENSE").read_text().startswith("MIT License")
    assert not any(p.is_symlink() for p in folder.rglob("*"))


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` and everything in it without write bits, as a shared read-only mount."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        yield
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


@needs_shared
def test_read_only_root_is_copied_not_written(tmp_path):
    root = copy_dataset("ogbg-molfreesolv", tmp_path / "ro")
    folder = root / "ogbg_molfreesolv"
    with read_only(folder):
        loaded = load_dataset("ogbg-molfreesolv", root, cache_dir=tmp_path / "cache")
        assert len(loaded.dataset) == 642
        assert loaded.path.is_relative_to(tmp_path / "cache")
        assert not (folder / "processed").exists()


@needs_shared
def test_a_cache_copy_in_use_is_never_replaced_by_a_concurrent_loader(tmp_path, monkeypatch):
    """Two loaders that both find no copy: the one that copies second keeps the first's copy,
    which the first may be processing in, instead of deleting and replacing it."""
    root = copy_dataset("ogbg-molfreesolv", tmp_path / "ro")
    cache = tmp_path / "cache"
    copytree = shutil.copytree
    first = []

    def another_loader_finishes_first(*args, **kwargs):
        monkeypatch.setattr(shutil, "copytree", copytree)
        first.append(load_dataset("ogbg-molfreesolv", root, cache_dir=cache).path)
        (first[0] / ".in_use").touch()  # stands for files the first loader is still writing
        return copytree(*args, **kwargs)

    with read_only(root / "ogbg_molfreesolv"):
        monkeypatch.setattr(shutil, "copytree", another_loader_finishes_first)
        loaded = load_dataset("ogbg-molfreesolv", root, cache_dir=cache)
    assert first == [loaded.path]
    assert len(loaded.dataset) == 642
    assert (loaded.path / ".in_use").is_file()
    assert not list(loaded.path.parent.glob(".*"))  # the second copy was discarded


@needs_shared
def test_a_changed_read_only_root_gets_a_new_cache_copy_and_the_old_one_goes(tmp_path):
    root = copy_dataset("ogbg-molfreesolv", tmp_path / "ro")
    folder = root / "ogbg_molfreesolv"
    cache = tmp_path / "cache"
    with read_only(folder):
        old = load_dataset("ogbg-molfreesolv", root, cache_dir=cache).path
        split = folder / "split" / "scaffold" / "valid.csv.gz"
        os.utime(split, ns=(split.stat().st_atime_ns, split.stat().st_mtime_ns + 10**9))
        new = load_dataset("ogbg-molfreesolv", root, cache_dir=cache).path
    assert new != old and new.is_dir()
    assert not old.exists()
    assert [p.name for p in new.parents[1].iterdir()] == [new.parent.name]


@needs_shared
def test_root_may_name_the_dataset_folder_itself(tmp_path):
    root = copy_dataset("ogbg-molfreesolv", tmp_path)
    loaded = load_dataset("ogbg-molfreesolv", root / "ogbg_molfreesolv")
    assert loaded.path == root / "ogbg_molfreesolv"


def test_unknown_name_lists_known_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset 'ogbg-nope'.*ogbg-molhiv.*ogbn-arxiv"):
        load_dataset("ogbg-nope")


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*download http"):
        load_dataset("ogbg-molbace", tmp_path / "absent")


@needs_shared
def test_folder_without_release_marker_errors_instead_of_prompting(tmp_path):
    root = copy_dataset("ogbg-molbace", tmp_path)
    (root / "ogbg_molbace" / "RELEASE_v1.txt").unlink()
    with pytest.raises(DatasetError, match=r"RELEASE_v1\.txt"):
        load_dataset("ogbg-molbace", root)


@needs_shared
def test_incomplete_folder_names_the_missing_files(tmp_path):
    root = copy_dataset("ogbg-molbace", tmp_path)
    (root / "ogbg_molbace" / "raw" / "edge-feat.csv.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing raw/edge-feat\.csv\.gz"):
        load_dataset("ogbg-molbace", root)


def test_absent_dataset_offline_says_what_to_download(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match=r"could not download.*bace\.zip.*ogbg_molbace"):
        load_dataset("ogbg-molbace", tmp_path)
    assert list(tmp_path.iterdir()) == []  # ogb's half-made folder is cleaned up


def test_prompt_never_waits_on_stdin():
    """Inside the guard ogb's ``input()`` prompts read an empty stdin: EOF, never a wait."""
    with data._ogb_guard(), pytest.raises(EOFError):
        input("Will you update the dataset now? (y/N)")


def test_tasks_come_from_ogb_metadata():
    assert data.task_of("ogbg-molpcba").num_tasks == 128
    assert data.task_of("ogbg-molpcba").metric == "ap"
    arxiv = data.task_of("ogbn-arxiv")
    assert (arxiv.level, arxiv.is_multiclass, arxiv.out_channels) == ("node", True, 40)
    assert data.task_of("ogbg-molesol").is_regression
    assert not data.task_of("ogbg-molesol").higher_is_better
    assert "ogbg-code2" not in data.known_datasets()  # F1 on token sequences: not supported
    assert "ogbn-mag" not in data.known_datasets()  # heterogeneous


def test_required_files_follow_ogb_layout():
    assert "raw/node_year.csv.gz" in data.required_files("ogbn-arxiv")
    assert "split/time/train.csv.gz" in data.required_files("ogbn-arxiv")
    assert "raw/graph-label.csv.gz" in data.required_files("ogbg-molhiv")


@needs_shared
def test_nan_labels_survive_loading(tmp_path):
    root = copy_dataset("ogbg-molsider", tmp_path)
    labels = root / "ogbg_molsider" / "raw" / "graph-label.csv.gz"
    lines = gzip.decompress(labels.read_bytes()).decode().splitlines()
    lines[0] = ",".join(["nan", *lines[0].split(",")[1:]])
    labels.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    loaded = load_dataset("ogbg-molsider", root)
    assert loaded.dataset.y.dtype == torch.float32
    assert torch.isnan(loaded.dataset[0].y[0, 0])


# --- bad raw files and arguments: each gives one line naming the file or argument ------------

EMBEDDED = data.EMBEDDED_ROOT / "ogbg_molesol"


def embedded_copy(root: Path) -> Path:
    """A writable copy of the shipped ogbg-molesol (with its MD5SUMS) at ``root/ogbg_molesol``."""
    shutil.copytree(EMBEDDED, root / "ogbg_molesol")
    return root / "ogbg_molesol"


def edit_lines(path: Path, edit) -> None:
    """Rewrite the gzip CSV ``path`` as a valid gzip holding ``edit(lines)``."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))


def set_line(index: int, text: str):
    return lambda lines: [*lines[:index], text, *lines[index + 1 :]]


def on(rel: str, edit):
    """A case that edits the lines of ``folder/rel``."""
    return lambda folder: edit_lines(folder / rel, edit)


def truncate(rel: str):
    def apply(folder: Path) -> None:
        raw = (folder / rel).read_bytes()
        (folder / rel).write_bytes(raw[: len(raw) // 2])

    return apply


def flip_byte(rel: str):
    def apply(folder: Path) -> None:
        raw = bytearray((folder / rel).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (folder / rel).write_bytes(bytes(raw))

    return apply


def write(rel: str, content: bytes):
    return lambda folder: (folder / rel).write_bytes(content)


def unlink(rel: str):
    return lambda folder: (folder / rel).unlink()


def change_first_edge_feature(lines):
    first = lines[0].split(",")
    first[0] = str(1 - int(first[0]))
    return [",".join(first), *lines[1:]]


# (case, how the shipped ogbg-molesol copy is damaged, what the one-line error must say).
# Counts are ogbg-molesol's: 1,128 graphs, 14,991 nodes, 15,428 edges; graph 0 has 32 nodes.
BAD_FILES = {
    "truncated gzip": (truncate("raw/edge.csv.gz"), r"raw/edge\.csv\.gz is truncated"),
    "missing last rows": (
        on("raw/edge.csv.gz", lambda lines: lines[:-4]),
        r"raw/edge\.csv\.gz has 15,424 rows, but the sum of raw/num-edge-list\.csv\.gz is 15,428",
    ),
    "extra rows": (
        on("raw/edge-feat.csv.gz", lambda lines: [*lines, *lines[:2]]),
        r"raw/edge-feat\.csv\.gz has 15,430 rows, but the sum of raw/num-edge-list",
    ),
    "missing node rows": (
        on("raw/node-feat.csv.gz", lambda lines: lines[:-3]),
        r"raw/node-feat\.csv\.gz has 14,988 rows, but the sum of raw/num-node-list\.csv\.gz is",
    ),
    "missing label row": (
        on("raw/graph-label.csv.gz", lambda lines: lines[:-1]),
        r"raw/graph-label\.csv\.gz has 1,127 rows, but the number of graphs .* is 1,128",
    ),
    "graph count mismatch": (
        on("raw/num-node-list.csv.gz", lambda lines: lines[:-1]),
        r"raw/num-node-list\.csv\.gz lists 1,127 graphs, but raw/num-edge-list\.csv\.gz lists",
    ),
    "wrong column count": (
        on("raw/edge.csv.gz", lambda lines: [f"{line},0" for line in lines]),
        r"raw/edge\.csv\.gz has 3 columns, expected 2",
    ),
    "label columns": (
        on("raw/graph-label.csv.gz", lambda lines: [f"{line},1" for line in lines]),
        r"raw/graph-label\.csv\.gz has 2 columns, expected 1",
    ),
    "ragged row (extra field)": (
        on("raw/node-feat.csv.gz", lambda lines: [*lines[:4], lines[4] + ",0", *lines[5:]]),
        r"raw/node-feat\.csv\.gz cannot be parsed as CSV \(Expected 9 fields in line 5, saw 10\)",
    ),
    "short row": (
        on("raw/node-feat.csv.gz", lambda lines: [*lines[:4], lines[4][:-2], *lines[5:]]),
        r"raw/node-feat\.csv\.gz line 5 has a missing or infinite value",
    ),
    "non-numeric entry": (
        on("raw/node-feat.csv.gz", set_line(2, "C,0,4,5,3,0,2,0,0")),
        r"raw/node-feat\.csv\.gz line 3, column 1: 'C' is not a number",
    ),
    "non-integer index": (
        on("raw/edge.csv.gz", set_line(1, "1.5,2")),
        r"raw/edge\.csv\.gz line 2, column 1: 1\.5 is not an integer",
    ),
    "edge leaves its graph": (
        on("raw/edge.csv.gz", set_line(0, "0,40")),
        r"raw/edge\.csv\.gz line 1: edge 0,40 leaves graph 0, whose nodes are 0\.\.31",
    ),
    "negative node index": (
        on("raw/edge.csv.gz", set_line(0, "-1,1")),
        r"raw/edge\.csv\.gz line 1: edge -1,1 leaves graph 0",
    ),
    "negative count": (
        on("raw/num-edge-list.csv.gz", set_line(0, "-34")),
        r"raw/num-edge-list\.csv\.gz line 1 is a negative count",
    ),
    "missing split file": (
        unlink("split/scaffold/valid.csv.gz"),
        r"missing split/scaffold/valid\.csv\.gz",
    ),
    "split index out of range": (
        on("split/scaffold/test.csv.gz", set_line(0, "1128")),
        r"split/scaffold/test\.csv\.gz line 1: index 1128 is outside \[0, 1128\)",
    ),
    "negative split index": (
        on("split/scaffold/train.csv.gz", set_line(0, "-1")),
        r"split/scaffold/train\.csv\.gz line 1: index -1 is outside \[0, 1128\)",
    ),
    "truncated split file": (
        truncate("split/scaffold/train.csv.gz"),
        r"split/scaffold/train\.csv\.gz is truncated",
    ),
    "empty file (empty gzip)": (
        write("raw/graph-label.csv.gz", gzip.compress(b"")),
        r"raw/graph-label\.csv\.gz is empty",
    ),
    "empty file (0 bytes)": (
        write("raw/num-edge-list.csv.gz", b""),
        r"raw/num-edge-list\.csv\.gz is empty",
    ),
    "not gzip": (
        write("raw/node-feat.csv.gz", b"7,0,2,5,1,0,2,0,0\n"),
        r"raw/node-feat\.csv\.gz is not a readable gzip file \(Not a gzipped file",
    ),
    "corrupt gzip bytes": (
        flip_byte("raw/edge-feat.csv.gz"),
        r"raw/edge-feat\.csv\.gz is (not a readable gzip file|truncated)",
    ),
    "content changed, counts intact (MD5SUMS)": (
        on("raw/edge-feat.csv.gz", change_first_edge_feature),
        r"raw/edge-feat\.csv\.gz does not match its MD5 in .*ogbg_molesol/MD5SUMS",
    ),
    "malformed MD5SUMS": (
        lambda folder: (folder / "MD5SUMS").write_text("not a checksum line\n"),
        r"ogbg_molesol/MD5SUMS line 1 is not '<md5>  <path>'",
    ),
    "missing release marker": (unlink("RELEASE_v1.txt"), r"has no RELEASE_v1\.txt"),
    "missing raw file": (unlink("raw/edge-feat.csv.gz"), r"missing raw/edge-feat\.csv\.gz"),
}


def leftovers(folder: Path) -> list[str]:
    """Processed caches and temporary folders in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("processed", ".")))


def one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(**kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(match, message), message
    return message


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_raw_file_gives_one_line_naming_it(case, tmp_path):
    damage, match = BAD_FILES[case]
    folder = embedded_copy(tmp_path)
    damage(folder)
    one_line_error(match, name="ogbg-molesol", root=tmp_path)
    assert leftovers(folder) == []  # nothing processed, nothing half-written


def test_bad_file_in_a_read_only_root_is_named_where_it_lies(tmp_path):
    """A read-only root is verified in its cache copy, against the MD5SUMS beside the source
    folder (``shared/data``'s format: paths start with the folder's name)."""
    root = tmp_path / "ro"
    folder = embedded_copy(root)
    (folder / "MD5SUMS").unlink()
    listing = [
        f"{line.split()[0]}  ogbg_molesol/{line.split()[1]}"
        for line in (EMBEDDED / "MD5SUMS").read_text().splitlines()
    ]
    (root / "MD5SUMS").write_text("\n".join(listing) + "\n")
    on("raw/edge-feat.csv.gz", change_first_edge_feature)(folder)
    with read_only(root):
        one_line_error(
            rf"cache/ogb/\w+/\w+/ogbg_molesol/raw/edge-feat\.csv\.gz does not match its MD5 in "
            rf"{re.escape(str(root / 'MD5SUMS'))}",
            name="ogbg-molesol",
            root=root,
            cache_dir=tmp_path / "cache",
        )


# (case, load_dataset arguments relative to tmp_path, what the one-line error must say).
BAD_ARGUMENTS = {
    "unknown name": (lambda tmp: {"name": "ogbg-nope"}, r"unknown dataset 'ogbg-nope'"),
    "name not a string": (lambda tmp: {"name": None}, r"unknown dataset None"),
    "root is a file": (
        lambda tmp: {"name": "ogbg-molesol", "root": touch(tmp / "afile")},
        r"dataset root .*afile is a file; pass the folder that holds ogbg_molesol/",
    ),
    "root missing": (
        lambda tmp: {"name": "ogbg-molesol", "root": tmp / "absent"},
        r"dataset root .*absent does not exist",
    ),
    "cache_dir is a file": (
        lambda tmp: {"name": "ogbg-molesol", "cache_dir": touch(tmp / "afile")},
        r"cache_dir .*afile is a file, not a folder",
    ),
    "cache_dir below a file": (
        lambda tmp: {"name": "ogbg-molesol", "cache_dir": touch(tmp / "afile") / "sub"},
        r"cannot write the dataset cache in cache_dir .*afile/sub \(Not a directory\)",
    ),
    "pre_transform not callable": (
        lambda tmp: {"name": "ogbg-molesol", "cache_dir": tmp, "pre_transform": "rwse"},
        r"pre_transform must be a callable PyG transform, got str",
    ),
}


def touch(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_argument_gives_one_line_naming_it(case, tmp_path):
    arguments, match = BAD_ARGUMENTS[case]
    one_line_error(match, **arguments(tmp_path))


# --- the processed cache: atomic, rebuilt when stale, keyed by pre_transform -----------------


def count_processing(monkeypatch) -> list[str]:
    """Record each ``ogb`` processing run (the folder it writes) without changing it."""
    from ogb.graphproppred import PygGraphPropPredDataset

    runs = []
    process = PygGraphPropPredDataset.process

    def counted(self):
        runs.append(Path(self.processed_dir).name)
        process(self)

    monkeypatch.setattr(PygGraphPropPredDataset, "process", counted)
    return runs


def test_restored_raw_file_rebuilds_instead_of_failing_again(tmp_path, monkeypatch):
    """The issue's sequence: a good load, a raw file damaged (a clear error), the file restored
    (the next load is good, rebuilt from the restored file)."""
    runs = count_processing(monkeypatch)
    folder = embedded_copy(tmp_path)
    good = load_dataset("ogbg-molesol", tmp_path)
    original = (folder / "raw/edge.csv.gz").read_bytes()
    on("raw/edge.csv.gz", lambda lines: lines[:-4])(folder)
    one_line_error(r"raw/edge\.csv\.gz has 15,424 rows", name="ogbg-molesol", root=tmp_path)
    (folder / "raw/edge.csv.gz").write_bytes(original)
    again = load_dataset("ogbg-molesol", tmp_path)
    assert len(runs) == 2  # the first load and the rebuild; the damaged files never processed
    assert torch.equal(again.dataset.edge_index, good.dataset.edge_index)
    assert again.dataset.edge_attr.size(0) == again.dataset.edge_index.size(1) == 2 * 15428
    assert leftovers(folder) == [".pyg_mup_verified", "processed"]


def test_raw_change_after_processing_rebuilds(tmp_path):
    folder = embedded_copy(tmp_path)
    (folder / "MD5SUMS").unlink()  # the change below is the user's own
    assert load_dataset("ogbg-molesol", tmp_path).dataset[0].y.item() == pytest.approx(-0.77)
    on("raw/graph-label.csv.gz", set_line(0, "1.25"))(folder)
    assert load_dataset("ogbg-molesol", tmp_path).dataset[0].y.item() == 1.25


def test_unstamped_processed_cache_is_rebuilt_not_trusted(tmp_path):
    """A ``processed/`` without this module's stamps (left by plain ogb, an older pyg_mup or an
    interrupted write) is rebuilt."""
    folder = embedded_copy(tmp_path)
    (folder / "processed").mkdir()
    (folder / "processed" / "geometric_data_processed.pt").write_bytes(b"half a pickle")
    assert len(load_dataset("ogbg-molesol", tmp_path).dataset) == 1128


def test_failed_processing_leaves_no_cache(tmp_path):
    folder = embedded_copy(tmp_path)

    def fails(graph):
        raise ValueError("pre_transform failed on purpose")

    with pytest.raises(ValueError, match="on purpose"):
        load_dataset("ogbg-molesol", tmp_path, pre_transform=fails)
    assert leftovers(folder) == [".pyg_mup_verified"]  # the raw files did pass


def test_verification_runs_once_per_version_of_the_files(tmp_path, monkeypatch):
    checks = []
    verify = data.verify_files
    # _verify_once looks verify_files up in its own module
    monkeypatch.setattr(data.verify, "verify_files", lambda *a: checks.append(a) or verify(*a))
    folder = embedded_copy(tmp_path)
    for _ in range(2):
        load_dataset("ogbg-molesol", tmp_path)
    assert len(checks) == 1
    on("split/scaffold/test.csv.gz", set_line(0, "1128"))(folder)  # splits are not in processed/
    one_line_error(r"test\.csv\.gz line 1: index 1128", name="ogbg-molesol", root=tmp_path)
    assert len(checks) == 2


def test_pre_transform_is_cached_per_transform(tmp_path, monkeypatch):
    from torch_geometric.transforms import AddRandomWalkPE

    runs = count_processing(monkeypatch)
    embedded_copy(tmp_path)
    rwse4 = AddRandomWalkPE(walk_length=4, attr_name="rwse")
    first = load_dataset("ogbg-molesol", tmp_path, pre_transform=rwse4)
    graph = first.dataset[0]
    assert graph.rwse.shape == (graph.num_nodes, 4)
    assert torch.allclose(graph.rwse, AddRandomWalkPE(4, "rwse")(graph.clone()).rwse)
    name4 = data.processed_name(rwse4)
    assert re.fullmatch(r"processed_[0-9a-f]{16}", name4) and len(runs) == 1

    again = load_dataset("ogbg-molesol", tmp_path, pre_transform=AddRandomWalkPE(4, "rwse"))
    assert len(runs) == 1  # same settings: read from disk
    assert torch.equal(again.dataset[0].rwse, graph.rwse)

    rwse8 = AddRandomWalkPE(walk_length=8, attr_name="rwse")  # same repr, other settings
    assert repr(rwse8) == repr(rwse4) and data.processed_name(rwse8) != name4
    assert load_dataset("ogbg-molesol", tmp_path, pre_transform=rwse8).dataset[0].rwse.size(1) == 8
    assert len(runs) == 2

    plain = load_dataset("ogbg-molesol", tmp_path)
    assert "rwse" not in plain.dataset[0] and len(runs) == 3
    assert torch.equal(load_dataset("ogbg-molesol", tmp_path).dataset.x, plain.dataset.x)
    assert len(runs) == 3  # the plain cache is reused too
    # every run processed into a temporary folder beside the cache it became
    assert all(r.startswith(".ogbg_molesol.processed") for r in runs)
    folder = tmp_path / "ogbg_molesol"
    assert leftovers(folder) == sorted(
        [".pyg_mup_verified", "processed", name4, data.processed_name(rwse8)]
    )
    assert (folder / name4 / "pre_transform.txt").read_text() == data.describe_transform(rwse4)


def test_transform_description_is_stable_and_complete():
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE, Compose

    def describe(t):
        return data.describe_transform(t)

    assert describe(None) == "None"
    assert describe(AddRandomWalkPE(4, "rwse")) == describe(AddRandomWalkPE(4, "rwse"))
    assert describe(AddRandomWalkPE(4, "rwse")) != describe(AddRandomWalkPE(4, "pe"))
    both = Compose([AddRandomWalkPE(4), AddLaplacianEigenvectorPE(3)])
    assert describe(both) != describe(Compose([AddRandomWalkPE(4), AddLaplacianEigenvectorPE(4)]))
    assert "0x" not in describe(both) + describe(lambda g: g)

    def scale(graph, factor=2.0):
        return graph

    def scale_other(graph, factor=3.0):
        return graph

    assert describe(scale) != describe(scale_other)  # defaults count


def test_loaded_dataset_pickles(tmp_path):
    """DataLoader workers started by ``spawn`` receive the dataset pickled."""
    import pickle

    loaded = load_dataset(cache_dir=tmp_path)
    copy = pickle.loads(pickle.dumps(loaded.dataset))
    assert type(copy) is type(loaded.dataset) and torch.equal(copy.y, loaded.dataset.y)
    assert copy.processed_dir == str(loaded.path / "processed")


def fake_download(monkeypatch, damage=None) -> list[str]:
    """Make ``ogb``'s download produce the shipped ogbg-molesol (optionally damaged) as if it
    came from OGB's server; return the URLs asked for."""
    import ogb.graphproppred.dataset_pyg as module

    urls = []

    def download_url(url: str, folder: str) -> str:
        urls.append(url)
        staged = Path(folder) / "esol"  # what extract_zip makes of OGB's esol.zip
        shutil.copytree(EMBEDDED, staged)
        if damage:
            damage(staged)
        return str(touch(Path(folder) / "esol.zip"))

    monkeypatch.setattr(module, "decide_download", lambda url: True)
    monkeypatch.setattr(module, "download_url", download_url)
    monkeypatch.setattr(module, "extract_zip", lambda path, folder: None)
    return urls


def test_downloaded_files_are_verified_then_processed_atomically(tmp_path, monkeypatch):
    urls = fake_download(monkeypatch)
    loaded = load_dataset("ogbg-molesol", tmp_path)
    assert urls == [data._meta("ogbg-molesol")["url"]] and len(loaded.dataset) == 1128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ogbg_molesol"]  # no temporaries
    assert leftovers(tmp_path / "ogbg_molesol") == [".pyg_mup_verified", "processed"]


def test_damaged_download_is_named_and_leaves_no_cache(tmp_path, monkeypatch):
    fake_download(monkeypatch, on("raw/edge.csv.gz", lambda lines: lines[:-4]))
    one_line_error(
        r"ogbg_molesol/raw/edge\.csv\.gz has 15,424 rows", name="ogbg-molesol", root=tmp_path
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ogbg_molesol"]
    assert leftovers(tmp_path / "ogbg_molesol") == []


@needs_shared
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shared_datasets_pass_verification_with_their_md5sums(name):
    data.verify_files(name, SHARED / data.folder_name(name), SHARED / "MD5SUMS")


def tiny_node_dataset(root: Path) -> Path:
    """``root/ogbn_arxiv`` in OGB's raw layout: 20 nodes, 40 edges, a time split."""
    rng = np.random.default_rng(0)
    folder = root / "ogbn_arxiv"
    tables = {
        "raw/edge.csv.gz": rng.integers(0, 20, (40, 2)),
        "raw/node-feat.csv.gz": rng.normal(size=(20, 4)),
        "raw/node-label.csv.gz": rng.integers(0, 40, (20, 1)),
        "raw/node_year.csv.gz": rng.integers(2000, 2020, (20, 1)),
        "raw/num-node-list.csv.gz": [[20]],
        "raw/num-edge-list.csv.gz": [[40]],
        "split/time/train.csv.gz": np.arange(12)[:, None],
        "split/time/valid.csv.gz": np.arange(12, 16)[:, None],
        "split/time/test.csv.gz": np.arange(16, 20)[:, None],
    }
    for rel, rows in tables.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(
            gzip.compress(pd.DataFrame(rows).to_csv(header=False, index=False).encode())
        )
    (folder / data.marker("ogbn-arxiv")).write_text("synthetic\n")
    return folder


def test_node_level_files_are_checked_against_the_node_count(tmp_path):
    folder = tiny_node_dataset(tmp_path)
    data.verify_files("ogbn-arxiv", folder)
    on("raw/node_year.csv.gz", lambda lines: lines[:-1])(folder)
    with pytest.raises(
        DatasetError,
        match=r"raw/node_year\.csv\.gz has 19 rows, but the sum of raw/num-node-list\.csv\.gz",
    ):
        data.verify_files("ogbn-arxiv", folder)
    folder = tiny_node_dataset(tmp_path / "b")
    on("split/time/test.csv.gz", set_line(0, "20"))(folder)
    with pytest.raises(
        DatasetError, match=r"index 20 is outside \[0, 20\) \(the dataset has 20 nodes\)"
    ):
        data.verify_files("ogbn-arxiv", folder)


def test_binary_release_is_checked_for_its_splits(tmp_path):
    folder = tmp_path / "ogbn_papers100M"
    (folder / "raw").mkdir(parents=True)
    np.savez(folder / "raw/data.npz", num_nodes_list=np.array([30]), edge_index=np.zeros((2, 0)))
    np.savez(folder / "raw/node-label.npz", node_label=np.zeros((30, 1)))
    for part, index in (("train", "0\n1\n"), ("valid", "2\n"), ("test", "30\n")):
        path = folder / "split/time" / f"{part}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(index.encode()))
    (folder / data.marker("ogbn-papers100M")).write_text("synthetic\n")
    with pytest.raises(
        DatasetError, match=r"split/time/test\.csv\.gz line 1: index 30 is outside \[0, 30\)"
    ):
        data.verify_files("ogbn-papers100M", folder)
    (folder / "raw/data.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"raw/data\.npz cannot be read as OGB's data\.npz"):
        data.verify_files("ogbn-papers100M", folder)
