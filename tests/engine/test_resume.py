"""Resuming after SIGKILL in the middle of an epoch ends bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convattn.engine import load_checkpoint

RUNNER = Path(__file__).with_name("run_standin.py")
# 96 training images / batch 16 = 6 steps per epoch; step checkpoints at steps 4, 8, 16
ARGS = ["train", "--epochs", "3", "--batch-size", "16", "--lr", "0.2", "--warmup-epochs", "0.5",
        "--save-every", "4", "--no-progress", "--device", "cpu", "--seed", "3", "--recipe", "none"]


def _start(out, *extra, kill_at=0, kill_signal="KILL"):
    env = {**os.environ, "CONVATTN_TEST_KILL_AT": str(kill_at), "CONVATTN_TEST_KILL_SIGNAL": kill_signal,
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.Popen([sys.executable, str(RUNNER), *ARGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume_and_finish(run_dir, ref):
    """Resume ``run_dir`` in a fresh process and wait for the uninterrupted reference ``ref``."""
    resumed = subprocess.run([sys.executable, str(RUNNER), "train", "--resume", str(run_dir), "--no-progress"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    _, err = ref.communicate(timeout=120)
    assert ref.returncode == 0, err


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s")} for r in rows]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _start(ref_dir)
    killed = _start(run_dir, kill_at=10)  # epoch 2, batch 4: after the step-8 checkpoint
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, err
    ck = load_checkpoint(run_dir / "last.pt")
    assert (ck["epoch"], ck["batch_in_epoch"], ck["step"]) == (1, 2, 8)  # mid-epoch step checkpoint
    _resume_and_finish(run_dir, ref)

    a, b = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert a["step"] == b["step"] == 18
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert _metrics(ref_dir) == _metrics(run_dir)  # epochs re-run after the kill are not duplicated
    assert json.loads((ref_dir / "results.json").read_text())["test_acc"] == \
        json.loads((run_dir / "results.json").read_text())["test_acc"]


@pytest.mark.slow
def test_sigterm_stops_as_interrupted_and_resumes_exactly(tmp_path):
    """SIGTERM (a scheduler's stop) ends the run as Ctrl-C does: exit 130, results.json says
    ``interrupted`` with no accuracy, and the resumed run ends where an uninterrupted one does."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _start(ref_dir)
    stopped = _start(run_dir, kill_at=10, kill_signal="TERM")
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 130, err
    assert "interrupted" in err
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "interrupted" and "test_acc" not in res
    _resume_and_finish(run_dir, ref)
    a, b = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(run_dir / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"


def test_resume_refuses_a_changed_config_and_a_corrupt_checkpoint(tmp_path, monkeypatch, capsys):
    import standin

    from convattn import cli

    standin.install(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--batch-size", "32", "--no-progress", "--out", str(run)]) == 0
    assert cli.main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "cannot resume with a different configuration (lr" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "1", "--out", str(run)]) == 2  # never overwrite a run
    assert "already holds a run" in capsys.readouterr().err
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 3])
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
