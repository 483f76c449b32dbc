"""``benchmarks/bench_train.py --smoke`` runs on CPU and writes well-formed JSON, so it never rots.

The smoke run trains every model a few steps on ``ogbg-molesol``, shipped with the package. What
it asserts is the shape of the results, never how fast: speed is what the benchmark measures.
``--profile`` gets a smoke run of its own, and its CUDA bookkeeping (which no CPU run reaches)
a check on hand-made profiler events.
"""

import gzip
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
MODELS = {"ours-both", "gps", "ours-local", "transformerconv"}
RATIOS = {"ours-both/gps", "ours-local/transformerconv"}
PHASES = ("batch_to_device", "forward", "loss", "backward", "optimizer")  # a step, in order
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


def smoke(tmp_path: Path, *options: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the script with ``--smoke`` and ``options``; its JSON and the finished process."""
    out = tmp_path / "results" / "train.json"
    command = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *options]
    result = subprocess.run(
        [*command, "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path,  # the script must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text()), result


def test_smoke_run_writes_well_formed_json(tmp_path):
    data, result = smoke(tmp_path, "--cuda-graph-steps", "2")
    env, records = data["environment"], data["records"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["smoke"]
    assert env["dataset"] == "ogbg-molesol"
    assert env["dtype"] == "float32" and env["train_graphs"] > 0
    assert env["commit"] and isinstance(env["dirty"], bool) and env["cpu_threads"] == 1
    assert sorted(r["model"] for r in records) == sorted(MODELS)  # one record per model
    assert not [r for r in records if r["status"] != "ok"], [r.get("error") for r in records]

    for record in records:
        assert math.isfinite(record["graphs_per_s"]) and record["graphs_per_s"] > 0
        assert record["graphs_per_s_excl_loader"] >= record["graphs_per_s"]
        assert record["params"] > 0 and record["steps"] == env["max_steps"]
        assert record["graphs"] > 0 and record["median_step_ms"] > 0
        assert math.isfinite(record["final_loss"])
        assert record["compiles_warmup"] >= 0 and record["compiles_timed"] >= 0
        assert record["steps_per_s"] == pytest.approx(record["steps"] / record["epoch_s"])
        assert "profile" not in record  # profiling only on request
        # the replayed-graph ceiling is measured on CUDA only; elsewhere it says why not
        assert record["cuda_graph"] == {"error": "CUDA graphs need a CUDA device"}
        ops = record["ops"]  # one step under OpCounter (the smoke default)
        assert ops["steps"] == 1 and ops["ops_per_step"] > 0
        assert sum(ops["data_dependent_ops"].values()) == ops["data_dependent_per_step"]
        phases = ops["ops_per_step_by_phase"]
        assert set(PHASES) <= set(phases) and sum(phases[p] for p in PHASES) <= ops["ops_per_step"]
        ours = record["model"].startswith("ours")
        # the structures come from the loader: no build in the step, and none of its ops waits
        # on the host (the fused AdamW included); the loader's collate builds them instead
        assert "structures" not in phases and record["structure_share"] == 0
        assert record["structure_ms_per_step"] == 0
        assert record["collate_ms_per_batch"] > 0
        if ours:
            assert ops["data_dependent_per_step"] == 0, ops["data_dependent_ops"]
            # the build is timed on its own after the collate, so the two medians are separate
            # measurements: on a loaded machine the build's can exceed the collate's
            assert record["structure_build_ms_per_batch"] > 0
        else:
            assert record["structure_build_ms_per_batch"] == 0
    by_model = {r["model"]: r for r in records}
    assert by_model["ours-both"]["width"] == by_model["gps"]["width"] == env["width"]
    assert by_model["ours-local"]["width"] == by_model["transformerconv"]["width"]
    # on the CPU: message passing along sparse edges, the dense backend for global attention
    picked = {name: {mode: b["backend"] for mode, b in by_model[name]["backends"].items()}
              for name in ("ours-both", "ours-local")}  # fmt: skip
    assert picked == {
        "ours-both": {"local": "message_passing", "global": "dense"},
        "ours-local": {"local": "message_passing"},
    }
    assert by_model["ours-both"]["backends"]["global"]["block_density"] == 1.0
    assert env["optimizer"] == "AdamW(fused=True)" and env["collate_batches"] == 2
    assert env["cuda_graph_steps"] == 2
    assert set(data["ratios"]) == RATIOS and all(r > 0 for r in data["ratios"].values())
    for ours, peer in (("ours-both", "gps"), ("ours-local", "transformerconv")):
        assert by_model[ours]["ratio_to_peer_median_step"] == pytest.approx(
            by_model[peer]["median_step_ms"] / by_model[ours]["median_step_ms"]
        )

    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(records) + 1  # header + one line per model


def test_rounds_reverse_the_order_and_keep_medians(tmp_path):
    models = ["ours-local", "transformerconv"]
    data, result = smoke(tmp_path, "--models", *models, "--rounds", "3", "--count-steps", "0")
    order = [line.split(":")[0] for line in result.stderr.splitlines() if line.endswith("s")]
    assert [m for m in order if m in models] == [*models, *models[::-1], *models]
    assert len(data["ratios_by_round"]) == 3
    for record in data["records"]:
        rates = [r["graphs_per_s"] for r in record["rounds"]]
        assert len(rates) == 3 and record["graphs_per_s"] == sorted(rates)[1]
    by_round = [r["ours-local/transformerconv"] for r in data["ratios_by_round"]]
    ours, twin = data["records"]
    assert (
        data["ratios"]["ours-local/transformerconv"] == ours["graphs_per_s"] / twin["graphs_per_s"]
    )
    assert by_round == [
        mine["graphs_per_s"] / theirs["graphs_per_s"]
        for mine, theirs in zip(ours["rounds"], twin["rounds"], strict=True)
    ]


@pytest.mark.slow
def test_compile_trains_our_model_compiled(tmp_path):
    data, _ = smoke(tmp_path, "--compile", "--models", "ours-both", "--count-steps", "0")
    (record,) = data["records"]
    assert data["environment"]["compile"] is True
    assert record["status"] == "ok", record.get("error")
    assert record["compiles_warmup"] > 0  # the model went through dynamo
    assert math.isfinite(record["final_loss"]) and record["graphs_per_s"] > 0


def test_profile_records_ranges_and_top_ops(tmp_path):
    traces = tmp_path / "traces"
    models = ["ours-both", "transformerconv"]
    options = ["--models", *models, "--profile", "2", "--trace-dir", str(traces)]
    data, result = smoke(tmp_path, *options, "--num-workers", "1", "--count-steps", "0")
    assert data["environment"]["profile_steps"] == 2 and data["environment"]["num_workers"] == 1
    for record in data["records"]:
        assert "ops" not in record  # --count-steps 0
        profile = record["profile"]
        assert "error" not in profile, profile.get("error")
        assert profile["steps"] == 2 and profile["wall_ms_per_step"] > 0
        assert profile["compiles"] >= 0
        expected = {"loader", "batch_to_device", "forward", "loss", "backward", "optimizer"}
        # structures are built in the loader's worker: no range of theirs in this process
        expected |= {"attention_global"} if record["model"] == "ours-both" else set()
        assert expected | {"attention_local"} == set(profile["ranges"])
        for name, timing in profile["ranges"].items():
            assert timing["calls_per_step"] >= 1 and timing["cpu_ms_per_step"] > 0, name
            assert timing["device_ms_per_step"] is None  # CPU run: no device activity
        assert profile["ranges"]["optimizer"]["calls_per_step"] == 2  # zero_grad, step
        ops = profile["top_cpu_ops"]
        assert 0 < len(ops) <= 15 and all(op["self_cpu_ms_per_step"] >= 0 for op in ops)
        assert profile["top_device_kernels"] == [] and profile["device_busy_ms_per_step"] is None
        trace = json.loads(gzip.decompress((traces / f"{record['model']}.json.gz").read_bytes()))
        assert trace["traceEvents"]
    summary = result.stdout.split("per step; each range")[1].splitlines()
    rows = [line.split(" | ")[0] for line in summary if line.startswith("| ")]
    assert rows == ["| model", *(f"| {model}" for model in models)]  # header + one per model


def test_trace_dir_needs_profile(tmp_path):
    command = [sys.executable, str(SCRIPT), "--smoke", "--trace-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--trace-dir needs --profile" in result.stderr


@pytest.fixture
def train_profile(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # where the scripts put it: benchmarks.* imports
    return importlib.import_module("benchmarks.train_profile")


def test_shadowed_wraps_a_static_method_and_restores_it(train_profile):
    class Owner:
        @staticmethod
        def build(value):
            return value + 1

    names = []
    wrap = train_profile.around(lambda name: names.append(name) or train_profile.no_range(name))
    original = vars(Owner)["build"]
    with train_profile.shadowed([(Owner, "build", "structures")], wrap):
        assert Owner.build(1) == Owner().build(1) == 2  # no binding through an instance
    assert names == ["structures", "structures"]
    assert vars(Owner)["build"] is original and Owner.build(2) == 3


def event(name, start, end, thread=1, device=DeviceType.CPU, kernels=(), annotation=False):
    """A profiler event as ``prof.events()`` holds them (µs since the trace began)."""
    made = FunctionEvent(
        id=0, name=name, thread=thread, start_us=start, end_us=end, use_device="cuda",
        device_type=device, is_user_annotation=annotation,
    )  # fmt: skip
    for kernel, duration in kernels:
        made.append_kernel(kernel, 0, duration)
    return made


def test_summarize_attributes_kernels_to_the_ranges_that_launched_them(train_profile):
    cuda = DeviceType.CUDA
    events = [
        # forward: its range carries its own device annotation, which is no kernel
        event("forward", 0, 100, kernels=[("forward", 90)]),
        event("aten::mm", 10, 20, kernels=[("gemm", 5)]),
        event("backward", 100, 200),
        event("aten::mm", 120, 130, thread=2, kernels=[("gemm", 7)]),  # autograd's thread
        event("aten::_local_scalar_dense", 150, 165, kernels=[("Memcpy DtoH (Device)", 1)]),
        event("cudaStreamSynchronize", 152, 162),
        event("gemm", 30, 35, device=cuda),
        event("gemm", 140, 147, device=cuda),
        event("Memcpy DtoH (Device)", 151, 152, device=cuda),
        event("forward", 0, 100, device=cuda, annotation=True),
    ]
    summary = train_profile.summarize(events, steps=1, cuda=True)
    ranges = summary["ranges"]
    assert set(ranges) == {"forward", "backward"}
    assert ranges["forward"] == dict(calls_per_step=1, cpu_ms_per_step=0.1, device_ms_per_step=5e-3)
    assert ranges["backward"]["device_ms_per_step"] == pytest.approx(8e-3)  # gemm + copy
    assert summary["device_busy_ms_per_step"] == pytest.approx(13e-3)
    assert summary["top_device_kernels"][0] == dict(
        name="gemm", ms_per_step=pytest.approx(12e-3), calls_per_step=2
    )
    assert summary["device_ops_per_step"] == 3 and summary["dtoh_copies_per_step"] == 1
    assert summary["syncs_per_step"] == 1 and summary["sync_ms_per_step"] == pytest.approx(0.01)
    assert summary["top_cpu_ops"][0]["name"] == "forward"  # no children linked: all self time


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
