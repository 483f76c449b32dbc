"""``benchmarks/compare_models.py --smoke``: both models tuned with the same budget, each recipe
trained unchanged at the wide width over the seeds, the baseline at the transformer's size."""

import json

import pytest


@pytest.fixture(scope="module")
def compare(benchmark_script):
    return benchmark_script("compare_models")


def test_smoke_protocol_tunes_both_models_and_trains_the_recipes_wide(compare, tmp_path, capsys):
    rows = compare.main(["--smoke", "--out", str(tmp_path), "--workers", "1"])
    assert [r["model"] for r in rows] == ["transformer", "gine"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    transformer, gine = rows
    assert abs(gine["params"] / transformer["params"] - 1) < 0.1  # --match-parameters
    assert transformer["model_width"] == 32 and gine["model_width"] > 32
    for r in rows:
        out = tmp_path / "ogbg-molesol" / r["model"]
        tuned = json.loads((out / "tune" / "trials.json").read_text())["trials"]
        assert len(tuned) == 2 and {t["config"]["width"] for t in tuned} == {16}
        recipe = json.loads((out / "tune" / "recipe.json").read_text())
        final = json.loads((out / "final" / "trials.json").read_text())["trials"]
        assert sorted(t["config"]["seed"] for t in final) == [0, 1] == r["seeds"]
        for t in final:  # the recipe unchanged, at the wide width, against its base width
            assert t["config"]["width"] == 32 and t["config"]["base_width"] == 16
            assert t["config"]["lr"] == recipe["settings"]["lr"]
            assert t["config"]["weight_decay"] == recipe["settings"]["weight_decay"]
        runs = [out / "final" / t["run_dir"] for t in final]  # relative to the sweep folder
        summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
        tests = [s["test_at_best_valid"] for s in summaries]  # OGB's number, per seed
        assert r["test_mean"] == pytest.approx(sum(tests) / 2)
    assert "| ogbg-molesol | gine |" in capsys.readouterr().out


def test_tune_attention_makes_attention_an_axis_of_our_model_only(compare, tmp_path):
    argv = ["--smoke", "--out", str(tmp_path), "--workers", "1", "--tune-attention"]
    ours, gine = compare.main(argv)
    out = tmp_path / "ogbg-molesol" / "transformer"
    study = json.loads((out / "tune" / "trials.json").read_text())
    assert study["grid"] == {"attention": ["local", "both"]}
    assert "attention" not in study["settings"]
    assert all(t["params"]["attention"] in ("local", "both") for t in study["trials"])
    chosen = json.loads((out / "tune" / "recipe.json").read_text())["settings"]["attention"]
    final = json.loads((out / "final" / "trials.json").read_text())["trials"]
    assert {t["config"]["attention"] for t in final} == {chosen} == {ours["settings"]["attention"]}
    baseline = tmp_path / "ogbg-molesol" / "gine" / "tune" / "trials.json"
    baseline_study = json.loads(baseline.read_text())  # attention only sizes GINE: kept fixed
    assert baseline_study["grid"] == {} and baseline_study["settings"]["attention"] == "both"
    assert gine["settings"]["attention"] == "both"
