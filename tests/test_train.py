"""Training runs on real OGB data (tiny models, CPU): files, metrics, NaN labels, resume."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import stat
from pathlib import Path

import pytest
import torch

from pyg_mup.train import TrainConfig, read_metrics, train
from pyg_mup.train import loop as train_loop
from pyg_mup.train.checkpoint import load
from pyg_mup.train.stopping import StopRequest
from pyg_mup.train.workload import global_batches, num_global_batches

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared OGB data at {SHARED}")

SUMMARY_KEYS = {
    "dataset",
    "metric",
    "best_epoch",
    "best_valid",
    "test_at_best_valid",
    "num_params",
    "mup",
    "width",
    "seconds",
}
TINY = dict(width=16, layers=1, heads=2, batch_size=32, warmup_steps=2, progress=False)


@pytest.fixture(scope="module")
def ogb_root(tmp_path_factory) -> Path:
    """A writable copy of the shared datasets the tests train on."""
    root = tmp_path_factory.mktemp("ogb")
    for folder in ("ogbg_molbbbp", "ogbg_molfreesolv", "ogbg_molsider"):
        shutil.copytree(SHARED / folder, root / folder)
        for path in [root / folder, *(root / folder).rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return root


def config(tmp_path: Path, **overrides) -> TrainConfig:
    values = {**TINY, "out": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}
    return TrainConfig(**{**values, **overrides})


def check_run_files(out: Path, epochs: int) -> dict:
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    for r in records:
        assert {"epoch", "train_loss", "valid", "test", "seconds"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("train_loss", "valid", "test"))
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert math.isfinite(summary["best_valid"]) and math.isfinite(summary["test_at_best_valid"])
    assert summary["status"] == "complete"
    state = load(out / "checkpoint.pt")
    assert state["progress"]["epoch"] == epochs and state["progress"]["step"] == 0
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    return summary


@needs_shared
def test_one_epoch_classification(ogb_root, tmp_path):
    summary = train(
        config(tmp_path, dataset="ogbg-molbbbp", root=str(ogb_root), epochs=1, max_samples=256)
    )
    on_disk = check_run_files(tmp_path / "run", 1)
    assert summary == {**on_disk, "signal": None}
    assert summary["metric"] == "rocauc" and summary["mup"] is True and summary["width"] == 16


@needs_shared
def test_one_epoch_regression_sp_twin(ogb_root, tmp_path):
    summary = train(
        config(
            tmp_path,
            dataset="ogbg-molfreesolv",
            root=str(ogb_root),
            epochs=1,
            max_samples=200,
            mup=False,
            attention="both",
        )
    )
    check_run_files(tmp_path / "run", 1)
    assert summary["metric"] == "rmse" and summary["mup"] is False


@needs_shared
def test_multitask_with_missing_labels_trains(ogb_root, tmp_path):
    """ogbg-molsider (27 tasks) with a third of its labels made NaN, as in molpcba/tox21."""
    root = tmp_path / "nan"
    shutil.copytree(ogb_root / "ogbg_molsider", root / "ogbg_molsider")
    labels = root / "ogbg_molsider" / "raw" / "graph-label.csv.gz"
    rows = [line.split(",") for line in gzip.decompress(labels.read_bytes()).decode().split()]
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if (i + j) % 3 == 0:
                row[j] = "nan"
    labels.write_bytes(gzip.compress("".join(",".join(r) + "\n" for r in rows).encode()))
    summary = train(
        config(tmp_path, dataset="ogbg-molsider", root=str(root), epochs=1, max_samples=200)
    )
    check_run_files(tmp_path / "run", 1)
    assert summary["metric"] == "rocauc"


def test_embedded_default_dataset(tmp_path):
    summary = train(config(tmp_path, epochs=1, max_samples=64))
    assert summary["dataset"] == "ogbg-molesol" and summary["metric"] == "rmse"
    check_run_files(tmp_path / "run", 1)


def metrics_without_time(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(out)]


def test_resume_gives_the_same_metrics(tmp_path):
    common = dict(max_samples=160, dropout=0.1)
    train(config(tmp_path / "straight", epochs=3, **common))
    train(config(tmp_path / "resumed", epochs=1, **common))
    train(config(tmp_path / "resumed", epochs=3, resume=True))
    straight = metrics_without_time(tmp_path / "straight" / "run" / "metrics.jsonl")
    resumed = metrics_without_time(tmp_path / "resumed" / "run" / "metrics.jsonl")
    assert resumed == straight
    a = load(tmp_path / "straight" / "run" / "checkpoint.pt")["model"]
    b = load(tmp_path / "resumed" / "run" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class StopAfter(StopRequest):
    """A stop request that fires after ``n`` step-boundary checks (a deterministic Ctrl-C)."""

    n = 3

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_stop_mid_epoch_then_resume_is_exact(tmp_path, monkeypatch):
    common = dict(max_samples=160, dropout=0.1, batch_size=16)
    train(config(tmp_path / "straight", epochs=2, **common))

    monkeypatch.setattr(train_loop, "StopRequest", StopAfter)
    stopped = train(config(tmp_path / "stopped", epochs=2, **common))
    state = load(tmp_path / "stopped" / "run" / "checkpoint.pt")
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (0, 3)
    assert stopped["epochs_completed"] == 0 and stopped["status"].startswith("stopped")
    assert not (tmp_path / "stopped" / "run" / "metrics.jsonl").exists()

    monkeypatch.setattr(train_loop, "StopRequest", StopRequest)
    train(config(tmp_path / "stopped", epochs=2, resume=True, batch_size=16))
    straight = metrics_without_time(tmp_path / "straight" / "run" / "metrics.jsonl")
    resumed = metrics_without_time(tmp_path / "stopped" / "run" / "metrics.jsonl")
    assert resumed == straight


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    train(config(tmp_path, epochs=1, max_samples=64))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    summary = train(config(tmp_path, epochs=1, resume=True))
    assert summary["status"] == "complete" and summary["epochs_completed"] == 1
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_time_budget_stops_cleanly(tmp_path):
    summary = train(config(tmp_path, epochs=50, max_minutes=1e-4, max_samples=64))
    assert summary["status"] == "stopped at the --max-minutes budget"
    assert summary["signal"] is None
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_cosine_schedule_decays_to_zero_over_the_run(tmp_path):
    summary = train(config(tmp_path, epochs=2, max_samples=64, lr_schedule="cosine"))
    assert summary["status"] == "complete"
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    # 64 graphs, batch 32: 2 steps an epoch, warm-up 2; after epoch 1 the cosine has not begun
    assert lrs[0] == pytest.approx(TrainConfig().lr)
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_schedule_refuses_to_change_epochs_on_resume(tmp_path):
    train(config(tmp_path, epochs=1, max_samples=64, lr_schedule="cosine"))
    with pytest.raises(ValueError, match="--lr-schedule cosine decays over exactly those"):
        train(config(tmp_path, epochs=2, resume=True))


def test_eval_every_skips_evaluation_but_not_the_last_epoch(tmp_path):
    train(config(tmp_path / "every", epochs=3, max_samples=64))
    summary = train(config(tmp_path / "sparse", epochs=3, max_samples=64, eval_every=2))
    every = read_metrics(tmp_path / "every" / "run" / "metrics.jsonl")
    sparse = read_metrics(tmp_path / "sparse" / "run" / "metrics.jsonl")
    assert [r["valid"] is None for r in sparse] == [True, False, False]
    assert [r["train_loss"] for r in sparse] == [r["train_loss"] for r in every]
    assert [r["valid"] for r in sparse[1:]] == [r["valid"] for r in every[1:]]
    assert summary["final_valid"] == every[-1]["valid"]
    assert summary["best_epoch"] in (2, 3)


def test_a_run_checks_whether_to_trim_the_heap_between_steps_and_after_each_epoch(
    tmp_path, monkeypatch
):
    checks = []
    monkeypatch.setattr(train_loop.HeapTrimmer, "__call__", lambda self: checks.append(True))
    monkeypatch.setattr(train_loop, "TRIM_CHECK_STEPS", 2)
    summary = train(config(tmp_path, epochs=2, max_samples=160))
    steps = summary["steps_per_epoch"]
    assert steps >= 4
    assert len(checks) == 2 * (steps // 2 + 1)  # every second step, and after each epoch


@pytest.mark.parametrize("batch_size", [1, 2, 7, 32])
def test_global_batches_cover_every_item_once_and_never_leave_one_alone(batch_size):
    for n in range(1, 100):
        batches = global_batches(torch.arange(n), batch_size)
        assert torch.equal(torch.cat(batches), torch.arange(n))
        assert len(batches) == num_global_batches(n, batch_size)
        if batch_size > 1 and len(batches) > 1:
            assert min(b.numel() for b in batches) > 1


def test_gine_trains_when_the_split_leaves_one_graph_over(tmp_path):
    # 65 = 2 · 32 + 1: a last batch of one graph stopped the baseline's BatchNorm (found on
    # ogbg-molfreesolv, 513 training graphs at batch size 64)
    summary = train(config(tmp_path, model="gine", epochs=1, max_samples=65))
    assert summary["steps_per_epoch"] == 2
    check_run_files(tmp_path / "run", 1)
