"""``benchmarks/bench_conv.py --smoke`` runs on CPU and writes well-formed JSON, so it never rots.

The molecular workloads read ``ogbg_molesol`` shipped with the package: the same OGB raw layout as
the ``ogbg-molhiv`` folder the GPU run reads. ``ogb`` is made unimportable, as on the GPU machine.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_conv.py"
MOLECULES = ROOT / "pyg_mup" / "datasets" / "ogbg_molesol"
LAYERS = {
    "TransformerConv", "TransformerConv+edge", "GATv2Conv", "naive-flex-local", "ours-local",
    "ours-local+edge", "ours-local+rcm", "ours-local+mp", "ours-local+edge+mp", "dense-MHA",
    "naive-flex-global", "ours-global", "ours-global+edge", "ours-global+pack", "ours-global+auto",
}  # fmt: skip
WITHOUT_OGB = (
    "import runpy, sys; sys.modules['ogb'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
WORKLOADS = {"molhiv-16", "molhiv-8", "molhiv-batches", "synthetic-16", "arxiv-community"}


def test_smoke_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "results" / "conv.json"
    command = [sys.executable, "-c", WITHOUT_OGB, str(SCRIPT), "--smoke", "--out", str(out)]
    result = subprocess.run(
        [*command, "--molhiv-root", str(MOLECULES)],
        cwd=tmp_path,  # the script must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check: speed is what benchmarks measure
    )
    assert result.returncode == 0, result.stderr[-4000:]

    data = json.loads(out.read_text())
    env, records = data["environment"], data["records"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["smoke"]
    assert env["copy_bytes_per_s"] > 0 and env["matmul_flop_per_s"]["float32"] > 0
    assert not [r for r in records if r["status"] != "ok"], [r for r in records if "error" in r]
    assert {r["layer"] for r in records} >= LAYERS | {"recompiles"}
    assert {r["workload"] for r in records} >= WORKLOADS | {"arxiv-random"}

    for record in records:
        if record["layer"] == "recompiles":
            assert record["batches"] == 3 and record["compiles"] >= 0
            continue
        assert record["ms"] > 0 and record["iters"] >= 1 and record["x_floor"] > 0
        assert record["pairs"] >= record["edges"] > 0 and record["nodes"] > 0
        layer = record["layer"]
        is_flex = layer.startswith(("ours", "naive")) and not layer.endswith(("+mp", "+auto"))
        assert record["pass"] == ("fwd" if is_flex else "fwd+bwd")
        if layer.startswith(("ours", "naive")):  # checked against ours on message passing
            assert record["rel_err_out"] < 1e-4 and record["build_ms"] > 0
        if layer.endswith("+auto"):  # on the CPU, global attention over small graphs: dense
            assert record["backend"] == "dense" and record["block_density"] == 1.0
            assert record["block_size"] < 128 and "blocks" not in record  # no block mask
    ours = next(r for r in records if (r["workload"], r["layer"]) == ("molhiv-16", "ours-local"))
    assert set(ours["ratio"]) == {"TransformerConv", "TransformerConv+edge", "GATv2Conv",
                                  "naive-flex-local"}  # fmt: skip
    assert ours["build_ratio_vs_create_block_mask"] > 0

    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(records) + 1  # header + one line per case


def test_profile_records_each_case_top_kernels(tmp_path):
    out = tmp_path / "conv.json"
    command = [sys.executable, "-c", WITHOUT_OGB, str(SCRIPT), "--smoke", "--out", str(out)]
    cases = ["molhiv-8/ours-global+pack/*", "molhiv-8/TransformerConv/*"]
    result = subprocess.run(
        [*command, "--molhiv-root", str(MOLECULES), "--profile", "2", "--cases", *cases],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = json.loads(out.read_text())["records"]
    assert {r["layer"] for r in records} == {"ours-global+pack", "TransformerConv"}
    for record in records:
        kernels = record["kernels"]
        assert 0 < len(kernels) <= 12
        assert all(k["name"] and k["ms_per_step"] > 0 and 0 < k["share"] <= 1 for k in kernels)
        assert sum(k["share"] for k in kernels) <= 1 + 1e-9
        assert kernels == sorted(kernels, key=lambda k: -k["ms_per_step"])


def test_report_prints_the_table_of_a_json(tmp_path, capsys, benchmark_script):
    bench_conv = benchmark_script("bench_conv")
    record = {
        "workload": "w", "layer": "ours-local", "dtype": "bfloat16", "scope": "local",
        "kind": "ours", "status": "ok", "ms": 1.5, "ratio": {"TransformerConv": 0.5},
    }  # fmt: skip
    peer = {**record, "layer": "TransformerConv", "kind": "peer", "ms": 3.0, "ratio": {}}
    path, png = tmp_path / "conv.json", tmp_path / "conv.png"
    path.write_text(json.dumps({"environment": {}, "records": [record, peer]}))
    bench_conv.main(["--report", str(path), "--plot", str(png)])
    printed = capsys.readouterr().out
    assert "| w | ours-local | bfloat16 | 1.500 |" in printed
    assert "TransformerConv 0.50×" in printed
    assert png.stat().st_size > 5_000
