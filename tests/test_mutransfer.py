"""``benchmarks/mutransfer.py --smoke`` runs on CPU through ``pyg-mup sweep``, so it never rots.

The smoke grid trains the embedded ``ogbg-molesol`` at 2 widths x 3 learning rates, SP and μP;
at the base width the two parametrizations are the same model.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mutransfer.py"


def test_smoke_sweep_writes_trials_figure_and_recipe(tmp_path):
    env = {**os.environ, "PYG_MUP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--workers", "1", "--out", str(tmp_path)],
        cwd=tmp_path,  # the script must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check: speed is what benchmarks measure
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "mutransfer_smoke"
    report = json.loads((sweep / "trials.json").read_text())
    assert (sweep / "transfer_width.png").stat().st_size > 10_000
    trials = report["trials"]
    assert sorted((t["params"]["parametrization"], t["params"]["width"]) for t in trials) == sorted(
        (p, w) for p in ("sp", "mup") for w in (16, 32) for _ in range(3)
    )
    for trial in trials:
        assert trial["state"] == "COMPLETE"
        # 32 train graphs in batches of 16 for 2 epochs: the steps that ran, not the split's.
        assert trial["train_samples"] == 32 and trial["steps"] == 4
        if not trial["diverged"]:
            assert math.isfinite(trial["train_loss"]) and math.isfinite(trial["valid"])
    # μP's base width is the smallest one: there SP and μP train the same model.
    at_base = {
        (t["params"]["parametrization"], t["params"]["log2_lr"]): t["train_loss"]
        for t in trials
        if t["params"]["width"] == 16
    }
    assert all(at_base["sp", lr] == at_base["mup", lr] for lr in (-10, -7, -4))
    assert json.loads((sweep / "recipe.json").read_text())["base_shapes"]["base_width"] == 16
