"""``pyg-mup sweep`` / :mod:`pyg_mup.sweep`: grids run once over workers, killed trials re-run,
diverged trials recorded, the recipe round-trips into ``train``.

Tiny trials (width 16–32, one layer, 64 graphs, one epoch) on the embedded ogbg-molesol.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyg_mup.cli import main
from pyg_mup.sweep import SweepError, SweepSpec, run_sweep, runner
from pyg_mup.sweep.study import OWNER, SPEC, open_study

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "layers": 1,
    "heads": 2,
    "epochs": 1,
    "batch_size": 32,
    "max_samples": 64,
    "warmup_steps": 1,
}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MUP_CACHE", str(tmp_path / "cache"))


def points(report: dict, state: str = "COMPLETE") -> list[tuple]:
    return sorted(tuple(t["params"].values()) for t in report["trials"] if t["state"] == state)


def test_two_workers_run_each_grid_point_exactly_once(tmp_path):
    grid = {"width": [16], "log2_lr": [-8, -6], "seed": [0, 1]}
    spec = SweepSpec(out=str(tmp_path / "sweep"), settings=TINY, grid=grid, workers=2)
    report = run_sweep(spec)
    expected = sorted((16, lr, s) for lr in (-8, -6) for s in (0, 1))
    assert points(report) == expected  # each point once, nothing else
    assert len(report["trials"]) == 4
    study = open_study(spec)
    owners = {tuple(t.system_attrs[OWNER]) for t in study.trials}
    assert os.getpid() not in {pid for _, pid in owners}  # the workers ran them
    for trial in report["trials"]:
        assert trial["steps"] == 2 and trial["train_samples"] == 64  # 64 graphs / batch 32
        assert math.isfinite(trial["train_loss"]) and trial["value"] == trial["valid"]
    # μP's base width is the smallest width: there the recipe is chosen, on validation only.
    recipe = json.loads((tmp_path / "sweep" / "recipe.json").read_text())
    trials = report["trials"]
    by_lr = {
        lr: sum(t["valid"] for t in trials if t["params"]["log2_lr"] == lr) / 2 for lr in (-8, -6)
    }
    assert recipe["settings"]["lr"] == 2.0 ** min(by_lr, key=by_lr.get)
    assert recipe["valid"] == pytest.approx(min(by_lr.values()))
    assert recipe["base_shapes"] == {"base_width": 16, "base_layers": 1}
    assert recipe["seeds"] == [0, 1] and recipe["dataset"] == "ogbg-molesol"
    # Running the same sweep again resumes it: nothing is left to run.
    assert len(run_sweep(SweepSpec(**{**spec.to_dict(), "workers": 1}))["trials"]) == 4


KILL_A_WORKER = """
import os, signal, socket, sys, time
from pyg_mup.sweep import SweepSpec
from pyg_mup.sweep.claims import claim_waiting
from pyg_mup.sweep.study import HEARTBEAT, OWNER, open_study
spec = SweepSpec(**__import__("json").loads(sys.argv[1]))
study = open_study(spec)
trial = claim_waiting(study)
study._storage.set_trial_system_attr(trial._trial_id, OWNER, [socket.gethostname(), os.getpid()])
study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time())
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_two_workers_of_a_seeded_sampler_suggest_different_settings(tmp_path):
    # Sharing one seed, both workers' TPE samplers made the same first suggestions: the budget
    # ran every setting twice.
    spec = SweepSpec(
        out=str(tmp_path / "sweep"),
        settings={**TINY, "width": 16},
        ranges={"log2_lr": [-10.0, -4.0, False]},
        sampler="tpe",
        trials=4,
        workers=2,
        plot=False,
    )
    report = run_sweep(spec)
    lrs = [t["params"]["log2_lr"] for t in report["trials"] if t["state"] == "COMPLETE"]
    assert len(lrs) >= 4 and len(set(lrs)) == len(lrs), lrs


def test_a_killed_workers_trial_is_run_again_on_resume(tmp_path):
    spec = SweepSpec(
        out=str(tmp_path / "sweep"), settings=TINY, grid={"width": [16], "log2_lr": [-8, -6]}
    )
    spec.validate()
    open_study(spec, create=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_A_WORKER, json.dumps(spec.to_dict())], env=env, timeout=120
    )
    assert killed.returncode == -9
    assert [t.state.name for t in open_study(spec).trials] == ["RUNNING", "WAITING"]

    report = run_sweep(spec)
    first, second, retry = report["trials"]
    assert first["state"] == "FAIL" and first["stale"]
    assert second["state"] == "COMPLETE"
    assert retry["state"] == "COMPLETE" and retry["retry_of"] == first["number"]
    assert retry["params"] == first["params"]
    assert points(report) == [(16, -8), (16, -6)]
    started = [t.datetime_start for t in open_study(spec).trials]
    assert started[2] < started[1]  # the retry ran before the point never started


@pytest.mark.parametrize("workers", [1, 2])
def test_a_signal_to_the_sweep_alone_stops_its_workers_resumably(tmp_path, workers):
    out = tmp_path / "sweep"
    flags = ["sweep", "--out", str(out), "--layers", "1", "--heads", "2", "--epochs", "400"]
    flags += ["--batch-size", "32", "--max-samples", "64", "--warmup-steps", "1", "--no-plot"]
    flags += ["--grid", "log2_lr=-8,-6", "--workers", str(workers)]  # 400 epochs: stopped mid-way
    code = "import json, sys; from pyg_mup.cli import main; sys.exit(main(json.loads(sys.argv[1])))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep = subprocess.Popen([sys.executable, "-c", code, json.dumps(flags)], env=env)
    started = [out / "trials" / f"{n:05d}" / "metrics.jsonl" for n in range(workers)]
    deadline = time.monotonic() + 120
    while not all(m.is_file() for m in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(m.is_file() for m in started), "the workers did not start their trials"
    sweep.send_signal(signal.SIGTERM)  # the sweep's process only, as `kill PID` does
    assert sweep.wait(timeout=120) == 128 + signal.SIGTERM  # after its workers stopped
    report = json.loads((out / "trials.json").read_text())
    stopped = [t for t in report["trials"] if t["stale"]]
    assert len(stopped) == workers and all(t["state"] == "FAIL" for t in stopped)
    queued = [t["retry_of"] for t in report["trials"] if t["state"] == "WAITING"]
    assert sorted(q for q in queued if q is not None) == list(range(workers))
    assert all((m.parent / "checkpoint.pt").is_file() for m in started)  # retries resume there


def test_a_one_point_grid_runs(tmp_path):
    # Optuna's GridSampler stops a study when its last unvisited point finishes, reading a grid
    # id that only trials it was asked for carry; ours are enqueued (a one-point grid raised
    # KeyError: 'grid_id' as its only trial finished).
    spec = SweepSpec(out=str(tmp_path / "sweep"), settings=TINY, grid={"log2_lr": [-8]})
    (trial,) = run_sweep(spec)["trials"]
    assert trial["state"] == "COMPLETE" and math.isfinite(trial["value"])


def test_each_trial_hands_its_freed_memory_back(tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(runner, "release_freed_memory", lambda: released.append(True))
    spec = SweepSpec(out=str(tmp_path / "sweep"), settings=TINY, grid={"log2_lr": [-8, -6]})
    assert len(run_sweep(spec)["trials"]) == 2
    assert len(released) == 2


def test_diverged_trials_are_recorded_not_dropped(tmp_path):
    settings = {**TINY, "batch_size": 8, "clip_grad": 0.0}
    spec = SweepSpec(out=str(tmp_path / "sweep"), settings=settings, grid={"log2_lr": [-8, 40]})
    report = run_sweep(spec)
    good, bad = report["trials"]
    assert good["state"] == bad["state"] == "COMPLETE"
    assert not good["diverged"] and math.isfinite(good["value"])
    assert bad["diverged"] and bad["status"] == "diverged"
    assert bad["value"] is None and bad["train_loss"] is None and bad["valid"] is None
    assert open_study(spec).trials[1].value == math.inf  # the worst value for a minimised rmse
    recipe = json.loads((tmp_path / "sweep" / "recipe.json").read_text())
    assert recipe["settings"]["lr"] == 2.0**-8


def test_smoke_sweep_via_the_cli_and_its_recipe_into_train(tmp_path, capsys):
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit):  # the sweep sets --out, --resume, --progress per trial
        main(["sweep", "--smoke", "--out", str(out), "--no-progress"])
    capsys.readouterr()
    assert main(["sweep", "--smoke", "--out", str(out)]) == 0
    assert "4 trials complete (0 diverged), 0 failed" in capsys.readouterr().out
    report = json.loads((out / "trials.json").read_text())
    assert points(report) == [(16, -8), (16, -4), (32, -8), (32, -4)]
    assert (out / "transfer_width.png").stat().st_size > 10_000
    assert not (out / "transfer_depth.png").exists()  # the depth did not vary
    recipe = json.loads((out / "recipe.json").read_text())
    # --out was absolute; the records hold no machine's path, only places inside the folder
    assert report["storage"] == "study.journal" and recipe["sweep"] == "sweep"
    for t in report["trials"]:
        assert t["run_dir"] == t["config"]["out"] == f"trials/{t['number']:05d}"
        assert (out / t["run_dir"] / "metrics.jsonl").is_file()

    # Without shapes on the command line, the recipe trains the model it was chosen at.
    base = tmp_path / "base"
    args = ["train", "--recipe", str(out / "recipe.json"), "--max-samples", "64"]
    assert main([*args, "--out", str(base), "--no-progress"]) == 0
    summary = json.loads((base / "summary.json").read_text())
    assert (summary["width"], summary["layers"]) == (16, 1)

    run = tmp_path / "run"
    args = ["train", "--recipe", str(out / "recipe.json"), "--width", "32", "--layers", "2"]
    assert main([*args, "--max-samples", "64", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["lr"] == recipe["settings"]["lr"]
    assert summary["base_width"] == 16 and summary["base_layers"] == 1
    assert (summary["width"], summary["layers"], summary["heads"]) == (32, 2, 2)
    # Resuming the finished run with the same recipe: its JSON lists equal the stored settings.
    assert main([*args, "--max-samples", "64", "--out", str(run), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().out
    # A flag given on the command line wins over the recipe.
    args += ["--lr", "0.5", "--max-samples", "64", "--out", str(tmp_path / "run2")]
    assert main([*args, "--no-progress"]) == 0
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["lr"] == 0.5


def test_outputs_follow_each_trial_and_report_writes_them_without_running(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "sweep"
    flags = ["--out", str(out), "--layers", "1", "--heads", "2", "--epochs", "1"]
    flags += ["--batch-size", "32", "--max-samples", "64", "--warmup-steps", "1", "--no-plot"]
    flags += ["--grid", "log2_lr=-8,-6"]
    finished_before = []
    real_run_trial = runner.run_trial

    def run_trial(study, trial, spec):
        if (out / "trials.json").exists():
            report = json.loads((out / "trials.json").read_text())
            finished_before.append([t["state"] for t in report["trials"]])
        return real_run_trial(study, trial, spec)

    monkeypatch.setattr(runner, "run_trial", run_trial)
    assert main(["sweep", *flags]) == 0
    # A sweep killed while its second trial ran would have left the first one's results.
    assert finished_before == [["COMPLETE", "WAITING"]]

    (out / "trials.json").unlink()
    (out / "recipe.json").unlink()
    capsys.readouterr()
    assert main(["sweep", "--report", "--out", str(out), "--layers", "2"]) == 2
    assert "not --layers" in capsys.readouterr().err  # its settings are the stored ones
    assert main(["sweep", "--report", "--out", str(out)]) == 0
    assert "2 trials complete (0 diverged), 0 failed, 0 not finished" in capsys.readouterr().out
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == 2  # none ran again
    assert (out / "recipe.json").exists()

    # A sweep that has not run a trial yet: reported as such, and no recipe to hand on.
    waiting = tmp_path / "waiting"
    spec = SweepSpec(out=str(waiting), settings=TINY, grid={"log2_lr": [-8, -6]})
    spec.validate()
    open_study(spec, create=True)
    report = runner.report_sweep(str(waiting), plot=False)
    assert [t["state"] for t in report["trials"]] == ["WAITING", "WAITING"]
    assert report["grid"] == {"log2_lr": [-8, -6]} and report["settings"] == TINY
    assert not (waiting / "recipe.json").exists()

    assert main(["sweep", "--report", "--out", str(tmp_path / "none")]) == 2
    assert "--report: no sweep in" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_objective_best_judges_trials_and_the_recipe_on_the_best_epoch(tmp_path, capsys):
    out = tmp_path / "sweep"
    flags = ["--out", str(out), "--layers", "1", "--heads", "2", "--epochs", "3"]
    flags += ["--batch-size", "32", "--max-samples", "64", "--warmup-steps", "1", "--no-plot"]
    flags += ["--eval-every", "1", "--grid", "log2_lr=-8,-4", "--objective", "best"]
    assert main(["sweep", *flags]) == 0
    assert "best valid rmse" in capsys.readouterr().out
    report = json.loads((out / "trials.json").read_text())
    assert report["objective"] == "best"
    for t in report["trials"]:
        history = [json.loads(line) for line in (out / t["run_dir"] / "metrics.jsonl").open()]
        best = min(history, key=lambda m: m["valid"])
        assert len(history) == 3 and t["value"] == t["best_valid"] == best["valid"]
        assert t["test_at_best_valid"] == best["test"] and t["valid"] == history[-1]["valid"]
    assert any(t["best_valid"] != t["valid"] for t in report["trials"])  # the objectives differ
    recipe = json.loads((out / "recipe.json").read_text())
    chosen = min(report["trials"], key=lambda t: t["best_valid"])
    assert recipe["selected_on"] == "best_valid" and recipe["valid"] == chosen["best_valid"]
    assert recipe["settings"]["lr"] == chosen["config"]["lr"]
    # The objective is part of the sweep: resuming under the other one is refused.
    assert main(["sweep", *flags[:-2]]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_a_study_from_before_the_objective_setting_resumes_as_final(tmp_path):
    spec = SweepSpec(out=str(tmp_path / "sweep"), settings=TINY, grid={"log2_lr": [-8]})
    spec.validate()
    study = open_study(spec, create=True)
    older = {k: v for k, v in study.user_attrs[SPEC].items() if k != "objective"}
    study.set_user_attr(SPEC, older)
    assert run_sweep(spec)["objective"] == "final"
    with pytest.raises(SweepError, match="holds a different sweep"):
        open_study(SweepSpec(**{**spec.to_dict(), "objective": "best"}))


def test_bad_sweeps_fail_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    assert main(["sweep", "--out", out, "--grid", "widht=16,32"]) == 2
    assert "unknown sweep axis 'widht'" in capsys.readouterr().err
    assert main(["sweep", "--out", out, "--range", "dropout=0:0.5"]) == 2
    assert "--sampler tpe needs --trials N" in capsys.readouterr().err
    with pytest.raises(SweepError, match="both a fixed setting and a sweep axis"):
        SweepSpec(out=out, settings={"width": 16}, grid={"width": [16, 32]}).validate()
    spec = SweepSpec(out=out, settings=TINY, grid={"log2_lr": [-8]})
    spec.validate()
    open_study(spec, create=True)
    with pytest.raises(SweepError, match="holds a different sweep"):
        open_study(SweepSpec(out=out, settings=TINY, grid={"log2_lr": [-6]}))


def test_a_larger_budget_extends_a_finished_tuning_study(tmp_path):
    def spec(trials: int) -> SweepSpec:
        return SweepSpec(
            out=str(tmp_path / "sweep"),
            settings={**TINY, "width": 16},
            ranges={"log2_lr": [-10.0, -4.0, False]},
            sampler="random",
            trials=trials,
            plot=False,
        )

    first = run_sweep(spec(2))
    extended = run_sweep(spec(3))
    assert len(points(first)) == 2 and len(points(extended)) == 3
    assert set(points(first)) < set(points(extended))
    with pytest.raises(SweepError, match="holds a different sweep"):
        open_study(SweepSpec(**{**spec(3).to_dict(), "sampler": "tpe"}))


def _plotted_trial(width: int, layers: int, log2_lr: int, loss: float) -> dict:
    config = {"mup": True, "width": width, "layers": layers, "lr": 2.0**log2_lr}
    config |= {"base_width": 64, "base_layers": 2}
    return {
        "state": "COMPLETE",
        "config": config,
        "diverged": False,
        "train_loss": loss,
        "valid": 1.0 + loss,
        "steps": 10,
        "steps_per_epoch": 5,
        "train_samples": 40,
    }


@pytest.mark.parametrize(
    ("shapes", "figures"),
    [
        ([(64, 2), (64, 4)], ["transfer_depth.png"]),  # a depth sweep: no one-width figure
        ([(32, 2), (64, 2)], ["transfer_width.png"]),
        ([(64, 2)], ["transfer_width.png"]),  # a plain lr sweep still gets its curve
        ([(32, 2), (64, 2), (64, 4)], ["transfer_depth.png", "transfer_width.png"]),
    ],
)
def test_transfer_figures_are_drawn_for_the_axes_that_vary(tmp_path, shapes, figures):
    from pyg_mup.sweep.report import plot_transfer

    trials = [_plotted_trial(w, layers, lr, -0.01 * lr) for w, layers in shapes for lr in (-9, -8)]
    report = {"trials": trials, "dataset": "ogbg-molesol", "metric": "rmse"}
    written = plot_transfer(report, tmp_path)
    assert sorted(path.name for path in written) == figures
    assert sorted(path.name for path in tmp_path.iterdir()) == figures


def test_records_of_older_studies_are_made_relative_to_the_sweep_folder(tmp_path):
    from pyg_mup.sweep.report import in_sweep

    out = tmp_path / "sweep"
    assert in_sweep(str(out / "trials" / "00003"), out) == "trials/00003"
    assert in_sweep(str(out / "study.journal"), out) == "study.journal"
    assert in_sweep(str(tmp_path / "data"), out) == str(tmp_path / "data")  # outside: as given
    assert in_sweep("sqlite:///sweeps.db", out) == "sqlite:///sweeps.db"
    assert in_sweep(None, out) is None
