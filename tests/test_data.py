"""OGB loading offline: the shared datasets, the embedded one, and every way a root can be wrong."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

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


@needs_shared
def test_read_only_root_is_copied_not_written(tmp_path):
    root = copy_dataset("ogbg-molfreesolv", tmp_path / "ro")
    folder = root / "ogbg_molfreesolv"
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        loaded = load_dataset("ogbg-molfreesolv", root, cache_dir=tmp_path / "cache")
        assert len(loaded.dataset) == 642
        assert loaded.path.is_relative_to(tmp_path / "cache")
        assert not (folder / "processed").exists()
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


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
