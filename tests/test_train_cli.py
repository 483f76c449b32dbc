"""``pyg-mup train`` from the command line: flags, bad input, Ctrl-C/SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyg_mup.cli import _explicit, main
from pyg_mup.train import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = ["--width", "16", "--layers", "1", "--heads", "2", "--max-samples", "64", "--no-progress"]


def run_cli(args: list[str], tmp_path: Path, capsys) -> tuple[int, str, str]:
    code = main(["train", "--cache-dir", str(tmp_path / "cache"), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2
    assert err.startswith("pyg-mup: error: ") and err.count("\n") == 1, err
    assert pattern in err, err


def test_cli_trains_and_prints_the_test_metric(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli([*TINY, "--epochs", "1", "--out", str(out)], tmp_path, capsys)
    assert code == 0
    assert "epoch   1/1" in stdout and "test rmse" in stdout.splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["width"] == 16 and summary["epochs_completed"] == 1


def test_unknown_dataset_lists_known_ones(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["--dataset", "ogbg-nope", "--out", str(out)], tmp_path, capsys)
    assert_one_line_error(code, err, "unknown dataset 'ogbg-nope'; known: ogbg-molbace")
    assert not out.exists()


def test_missing_root(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dataset", "ogbg-molbace", "--root", str(tmp_path / "nowhere"), "--out", str(out)]
    code, _, err = run_cli(args, tmp_path, capsys)
    assert_one_line_error(code, err, "does not exist")
    assert not out.exists()


def test_width_not_divisible_by_heads(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["--width", "30", "--heads", "4", "--out", str(out)], tmp_path, capsys)
    assert_one_line_error(code, err, "--width 30 is not divisible by --heads 4")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_output_mult_must_be_positive(tmp_path, capsys, value):
    out = tmp_path / "run"
    code, _, err = run_cli(["--output-mult", value, "--out", str(out)], tmp_path, capsys)
    assert_one_line_error(code, err, "--output-mult must be positive")
    assert not out.exists()


def test_corrupt_checkpoint_on_resume_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "1", "--out", str(out)], tmp_path, capsys)[0] == 0
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = snapshot(out)
    code, _, err = run_cli(["--resume", "--epochs", "2", "--out", str(out)], tmp_path, capsys)
    assert_one_line_error(code, err, f"cannot read checkpoint {checkpoint}")
    assert snapshot(out) == before


def test_resume_without_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(["--resume", "--out", str(tmp_path / "run")], tmp_path, capsys)
    assert_one_line_error(code, err, "no checkpoint at")


def test_existing_run_is_not_overwritten_without_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "1", "--out", str(out)], tmp_path, capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli([*TINY, "--epochs", "1", "--out", str(out)], tmp_path, capsys)
    assert_one_line_error(code, err, "already holds a run; pass --resume")
    assert snapshot(out) == before
    args = [*TINY, "--epochs", "1", "--out", str(out), "--overwrite", "--seed", "1"]
    assert run_cli(args, tmp_path, capsys)[0] == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def test_resume_refuses_to_change_the_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "1", "--out", str(out)], tmp_path, capsys)[0] == 0
    before = snapshot(out)
    args = ["--resume", "--epochs", "2", "--width", "32", "--out", str(out)]
    code, _, err = run_cli(args, tmp_path, capsys)
    assert_one_line_error(code, err, "--width 32 differs from the run being resumed (16)")
    assert snapshot(out) == before
    # Repeating the run's own settings is fine; they are only checked.
    code, _, _ = run_cli([*TINY, "--resume", "--epochs", "2", "--out", str(out)], tmp_path, capsys)
    assert code == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_explicit_flags_are_detected():
    assert _explicit(["--width", "8", "--no-mup", "--resume"]) == {"width", "mup", "resume"}
    assert _explicit([]) == set()


def test_datasets_command_lists_the_embedded_one(capsys):
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("ogbg-molesol") and "(embedded)" in line for line in lines)


def wait_for_first_epoch(out: Path, alive, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert alive(), "the run ended before its first epoch"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.1)


def check_stopped_and_resume(out: Path, sig: signal.Signals, tmp_path: Path, capsys) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == f"stopped by {sig.name}" and summary["signal"] == sig
    done = summary["epochs_completed"] + 1
    code, _, err = run_cli(["--resume", "--out", str(out), "--epochs", str(done)], tmp_path, capsys)
    assert code == 0, err
    assert read_metrics(out / "metrics.jsonl")[-1]["epoch"] == done


LONG_RUN = [*TINY, "--batch-size", "8", "--epochs", "1000"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYG_MUP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyg_mup.train", *LONG_RUN, "--out", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_first_epoch(out, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM" in stdout and "--resume" in stdout
    check_stopped_and_resume(out, signal.SIGTERM, tmp_path, capsys)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    main_thread = threading.main_thread()

    def interrupt() -> None:
        wait_for_first_epoch(out, main_thread.is_alive)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt, daemon=True)
    sender.start()
    code, stdout, _ = run_cli([*LONG_RUN, "--out", str(out)], tmp_path, capsys)
    sender.join()
    assert code == 128 + signal.SIGINT
    assert "stopped by SIGINT" in stdout
    check_stopped_and_resume(out, signal.SIGINT, tmp_path, capsys)


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    base = [*TINY, "--batch-size", "8", "--clip-grad", "0", "--out", str(out)]
    assert run_cli([*base, "--epochs", "1"], tmp_path, capsys)[0] == 0
    good = (out / "checkpoint.pt").read_bytes()
    code, stdout, err = run_cli(
        [*base, "--overwrite", "--lr", "1e12", "--epochs", "2"], tmp_path, capsys
    )
    assert code == 3
    assert err.startswith("pyg-mup: diverged: training loss is nan at epoch 1, step ")
    assert err.count("\n") == 1 and "try a smaller --lr" in err and "no checkpoint" in err
    assert "Traceback" not in stdout + err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 0
    assert not (out / "checkpoint.pt").exists()
    assert good  # --overwrite removed the earlier run's; a later epoch's divergence keeps it:


def test_divergence_after_an_epoch_keeps_that_epochs_checkpoint(tmp_path, capsys, monkeypatch):
    from pyg_mup.train import loop

    out = tmp_path / "run"
    real_step = loop._Run._step

    def poisoned(self, batch):  # epoch 2 produces a nan loss, as a diverging lr does
        if self.progress.epoch == 1 and not hasattr(self, "poisoned"):
            self.poisoned = terms = self.objective.loss_terms
            self.objective.loss_terms = lambda pred, y: (
                terms(pred, y)[0] * float("nan"),
                terms(pred, y)[1],
            )
        return real_step(self, batch)

    monkeypatch.setattr(loop._Run, "_step", poisoned)
    code, _, err = run_cli([*TINY, "--epochs", "3", "--out", str(out)], tmp_path, capsys)
    assert code == 3
    assert "training loss is nan at epoch 2, step 1" in err
    assert "the checkpoint of epoch 1 (the last good one)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    from pyg_mup.train import checkpoint

    assert checkpoint.load(out / "checkpoint.pt")["progress"]["epoch"] == 1


def test_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run_cli([*TINY, "--out", str(tmp_path / "file" / "sub")], tmp_path, capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'file'} is a file, not a folder")


def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(
        [*TINY, "--device", "cuda", "--out", str(tmp_path / "r")], tmp_path, capsys
    )
    assert_one_line_error(code, err, "--device cuda: no CUDA device is available here")
    assert not (tmp_path / "r").exists()
