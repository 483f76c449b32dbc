"""Data parallelism: a 2-process gloo run (torchrun) reproduces the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyg_mup.train import TrainConfig, read_metrics, train

REPO = Path(__file__).resolve().parents[1]
# 100 train graphs in batches of 33: the last global batch holds one graph, so rank 1's shard
# of it is empty and that rank steps on a zero-weight placeholder.
ARGS = dict(width=16, layers=1, heads=2, max_samples=100, batch_size=33, epochs=2, warmup_steps=2)


def flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def test_two_gloo_processes_match_one(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYG_MUP_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pyg_mup.train",
        *flags(ARGS),
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu × 2" in result.stdout

    train(TrainConfig(**ARGS, out=str(tmp_path / "single"), cache_dir=str(tmp_path / "cache")))

    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single, strict=True):
        assert a["epoch"] == b["epoch"]
        for key in ("train_loss", "valid", "test"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["best_epoch"] is not None
