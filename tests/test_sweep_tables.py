"""``benchmarks/sweep_tables.py``: the README's sweep tables, computed from trials.json — the
best lr per width, and each step to the next width judged against the seeds' noise."""

from __future__ import annotations

import json
import sys

import pytest


def trial(width: int, log2_lr: int, seed: int, loss: float, valid: float) -> dict:
    return {
        "state": "COMPLETE",
        "diverged": False,
        "params": {"log2_lr": log2_lr, "seed": seed, "parametrization": "mup"},
        "config": {"width": width, "mup": True},
        "train_loss": loss,
        "valid": valid,
    }


def report(trials: list[dict], dataset: str = "ogbg-molesol") -> dict:
    grid = {"width": sorted({t["config"]["width"] for t in trials})}
    return {"dataset": dataset, "metric": "rmse", "higher_is_better": False, "grid": grid,
            "trials": trials}  # fmt: skip


def test_steps_are_called_better_or_worse_only_outside_two_standard_errors(benchmark_script):
    tables = benchmark_script("sweep_tables")
    trials = [
        # width 32: best lr -8 by loss (mean 0.50), valid best at -9 (mean 1.0)
        trial(32, -9, 0, 0.70, 0.9), trial(32, -9, 1, 0.70, 1.1),
        trial(32, -8, 0, 0.49, 1.3), trial(32, -8, 1, 0.51, 1.3),
        # width 64: loss 0.40 ± 0.01 — clearly lower; valid 1.05 vs 1.0, seeds far apart
        trial(64, -8, 0, 0.39, 0.8), trial(64, -8, 1, 0.41, 1.3),
        # width 128: loss 0.45 — higher by 0.05, outside its noise
        trial(128, -8, 0, 0.44, 1.0), trial(128, -8, 1, 0.46, 1.0),
    ]  # fmt: skip
    rows = tables.table(report(trials), "width").splitlines()[2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[1:4] for c in cells] == [["32", "-8", "0.5000"], ["64", "-8", "0.4000"],
                                       ["128", "-8", "0.4500"]]  # fmt: skip
    assert cells[0][4] == "" and cells[0][5:7] == ["-9", "1.0000"]
    # 2 SE of the loss step 32 -> 64: 2 * sqrt(0.0002/2 + 0.0002/2) = 0.0283
    assert cells[1][4] == "-0.1000 (±0.0283, better)"
    assert cells[1][7] == "+0.0500 (±0.5385, within noise)"
    assert cells[2][4] == "+0.0500 (±0.0283, **worse**)"


def test_together_merges_sweeps_of_one_dataset_only(benchmark_script):
    tables = benchmark_script("sweep_tables")
    narrow = report([trial(32, -8, 0, 0.5, 1.0)])
    wide = report([trial(256, -8, 0, 0.4, 1.0)])
    merged = tables.merged([narrow, wide])
    assert merged["grid"] == {"width": [32, 256]}  # the union of the axes' values
    assert len(merged["trials"]) == 2
    # one seed on a side: the step has no noise estimate, and says so by giving none
    assert "| -0.1000 |" in tables.table(merged, "width")
    with pytest.raises(SystemExit, match="share one dataset"):
        tables.merged([narrow, report([], dataset="ogbg-molbace")])
    with pytest.raises(SystemExit, match="judge trials alike"):
        tables.merged([narrow, {**wide, "objective": "best"}])


def test_a_sweep_judged_at_the_best_epoch_is_tabled_on_it(benchmark_script):
    tables = benchmark_script("sweep_tables")
    trials = [trial(32, -9, 0, 0.5, 1.2), trial(32, -8, 0, 0.6, 1.0)]
    trials[0]["best_valid"], trials[1]["best_valid"] = 0.7, 0.9  # lr -9 is best at its best epoch
    final = tables.table(report(trials), "width").splitlines()
    best = tables.table({**report(trials), "objective": "best"}, "width").splitlines()
    assert "valid rmse" in final[0] and "best valid rmse" in best[0]
    assert "| -8 | 1.0000 |" in final[2] and "| -9 | 0.7000 |" in best[2]


def test_objective_best_tables_a_final_sweep_on_its_best_epochs(
    benchmark_script, tmp_path, monkeypatch, capsys
):
    tables = benchmark_script("sweep_tables")
    trials = [trial(32, -9, 0, 0.5, 1.2), trial(32, -8, 0, 0.6, 1.0)]
    trials[0]["best_valid"], trials[1]["best_valid"] = 0.7, 0.9
    path = tmp_path / "sweep" / "trials.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**report(trials), "objective": "final"}))
    monkeypatch.setattr(sys, "argv", ["sweep_tables.py", str(path), "--objective", "best"])
    tables.main()
    lines = capsys.readouterr().out.splitlines()
    assert "best valid rmse" in lines[2] and "| -9 | 0.7000 |" in lines[4]
