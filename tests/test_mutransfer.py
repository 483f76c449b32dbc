"""``benchmarks/mutransfer.py --smoke`` runs on CPU and writes a complete sweep, so it never rots.

The smoke grid trains the embedded ``ogbg-molesol`` through ``pyg-mup train`` at 2 widths x 3
learning rates, SP and μP; at the base width the two parametrizations are the same model.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mutransfer.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("mutransfer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_sweep_writes_json_and_png(tmp_path):
    env = {**os.environ, "PYG_MUP_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "results")],
        cwd=tmp_path,  # the script must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check: speed is what benchmarks measure
    )
    assert result.returncode == 0, result.stderr[-3000:]

    out = json.loads((tmp_path / "results" / "mutransfer_smoke.json").read_text())
    assert (tmp_path / "results" / "mutransfer_smoke.png").stat().st_size > 10_000
    runs = out["runs"]
    assert len(runs) == 2 * 2 * 3
    assert {(r["param"], r["width"]) for r in runs} == {
        (p, w) for p in ("sp", "mup") for w in (16, 32)
    }
    for run in runs:
        assert run["status"] in ("ok", "diverged")
        if run["status"] == "ok":
            assert math.isfinite(run["train_loss"]) and math.isfinite(run["valid"])
            assert len(run["epoch_train_losses"]) == out["config"]["epochs"]
    assert out["config"]["metric"] == "rmse"
    assert out["config"]["steps"] == out["config"]["epochs"] * out["config"]["last_k_steps"]
    for param in ("sp", "mup"):
        for width in ("16", "32"):
            entry = out["summary"][param][width]
            assert set(entry["curve"]) == {"-10.0", "-7.0", "-4.0"}
            assert entry["best_log2_lr"] in (-10.0, -7.0, -4.0)
    # μP's base width is the smallest one: there SP and μP train the same model.
    sp = [r["train_loss"] for r in runs if r["param"] == "sp" and r["width"] == 16]
    mup = [r["train_loss"] for r in runs if r["param"] == "mup" and r["width"] == 16]
    assert sp == mup

    # A sweep run in pieces (here: one width per piece) combines into the same result.
    mutransfer = _load_script()
    pieces = []
    for width in (16, 32):
        piece = {
            "config": {**out["config"], "widths": [width]},
            "runs": [r for r in runs if r["width"] == width],
        }
        pieces.append(tmp_path / f"piece{width}.json")
        pieces[-1].write_text(json.dumps(piece))
    combined = mutransfer.combine(pieces, tmp_path / "combined", "both")
    assert combined["runs"] == runs
    assert json.dumps(combined["summary"]) == json.dumps(out["summary"])
    assert (tmp_path / "combined" / "mutransfer_both.png").is_file()

    # Pieces must agree on what a run means; a setting recorded only by later sweeps counts at
    # the value the earlier ones ran with.
    older = json.loads(pieces[0].read_text())
    del older["config"]["dropout"]
    pieces[0].write_text(json.dumps(older))
    assert mutransfer.combine(pieces, tmp_path / "combined", "both")["runs"] == runs
    other = json.loads(pieces[1].read_text())
    other["config"]["dropout"] = 0.1
    pieces[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"differs .* in dropout"):
        mutransfer.combine(pieces, tmp_path / "combined", "both")
