"""``benchmarks/bench_train.py --smoke`` runs on CPU and writes well-formed JSON, so it never rots.

The smoke run trains every model a few steps on ``ogbg-molesol``, shipped with the package. What
it asserts is the shape of the results, never how fast: speed is what the benchmark measures.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
MODELS = {"ours-both", "gps", "ours-local", "transformerconv"}
RATIOS = {"ours-both/gps", "ours-local/transformerconv"}
GPS_OUT_OF_MEMORY = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("bench_train", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

def fake(name, data, args):
    if name == "gps":
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    return dict(params=1, width=args.width, graphs_per_s=100.0 if "ours" in name else 50.0)

bench.benchmark_model = fake
bench.main(sys.argv[2:])
"""


def test_smoke_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "results" / "train.json"
    command = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)]
    result = subprocess.run(
        [*command, "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path,  # the script must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check
    )
    assert result.returncode == 0, result.stderr[-4000:]

    data = json.loads(out.read_text())
    env, records = data["environment"], data["records"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["smoke"]
    assert env["dataset"] == "ogbg-molesol"
    assert env["dtype"] == "float32" and env["train_graphs"] > 0
    assert sorted(r["model"] for r in records) == sorted(MODELS)  # one record per model
    assert not [r for r in records if r["status"] != "ok"], [r.get("error") for r in records]

    for record in records:
        assert math.isfinite(record["graphs_per_s"]) and record["graphs_per_s"] > 0
        assert record["graphs_per_s_excl_loader"] >= record["graphs_per_s"]
        assert record["params"] > 0 and record["steps"] == env["max_steps"]
        assert record["graphs"] > 0 and record["median_step_ms"] > 0
        assert math.isfinite(record["final_loss"])
        assert record["compiles_warmup"] >= 0 and record["compiles_timed"] >= 0
    by_model = {r["model"]: r for r in records}
    assert by_model["ours-both"]["width"] == by_model["gps"]["width"] == env["width"]
    assert by_model["ours-local"]["width"] == by_model["transformerconv"]["width"]
    for name in ("ours-both", "ours-local"):  # the CPU path of ours is message passing
        backends = by_model[name]["backends"].values()
        assert {b["backend"] for b in backends} == {"message_passing"}
    assert set(data["ratios"]) == RATIOS and all(r > 0 for r in data["ratios"].values())

    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(records) + 1  # header + one line per model


def test_a_failing_model_is_recorded_and_the_others_run(tmp_path):
    # in a subprocess: main() sets process-wide torch state (threads, dynamo limits)
    out = tmp_path / "train.json"
    argv = ["--smoke", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(
        [sys.executable, "-c", GPS_OUT_OF_MEMORY, str(SCRIPT), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    data = json.loads(out.read_text())
    status = {r["model"]: r["status"] for r in data["records"]}
    assert status == {
        "ours-both": "ok",
        "gps": "error",
        "ours-local": "ok",
        "transformerconv": "ok",
    }
    gps = next(r for r in data["records"] if r["model"] == "gps")
    assert gps["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert data["ratios"] == {"ours-local/transformerconv": 2.0}
    assert "| gps |" in result.stdout and "error: OutOfMemoryError" in result.stdout
