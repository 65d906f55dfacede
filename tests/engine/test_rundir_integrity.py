"""A run directory is a small database: one writer, a marker, checksums, a status in results.json,
divergence as an outcome, one-line OS errors, temporary files cleared (fault injection throughout)."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import standin
from convattn import cli
from convattn.engine import TrainConfig, load_checkpoint, trainer
from convattn.engine import checkpoint as C
from convattn.exceptions import ConfigError

# the stand-in's 96 training images, batch 32: 3 steps per epoch
ARGS = ["train", "--epochs", "1", "--batch-size", "32", "--no-progress", "--recipe", "none", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _standin(monkeypatch):
    standin.install(monkeypatch)


def _train(*args):
    return cli.main([*ARGS, *args])


def _strict(path):
    def refuse(name):
        raise AssertionError(f"{path.name} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _fail_at_step(monkeypatch, step, exc):
    """Raise ``exc`` right after optimiser step ``step`` (1-based)."""
    real = trainer.WarmupSchedule.step

    def step_then_fail(self, *a, **k):
        real(self, *a, **k)
        if self.last_epoch == step:
            raise exc

    monkeypatch.setattr(trainer.WarmupSchedule, "step", step_then_fail)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = trainer.F.cross_entropy
    calls = []

    def nan_from_step_5(*a, **k):  # the training loss of step 5 (evaluation runs without gradients)
        calls.extend([1] if torch.is_grad_enabled() else [])
        loss = real(*a, **k)
        return loss * float("nan") if torch.is_grad_enabled() and len(calls) == 5 else loss

    monkeypatch.setattr(trainer.F, "cross_entropy", nan_from_step_5)
    assert _train("--epochs", "3", "--lr", "0.05", "--out", str(run)) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the epoch lines: one line
    assert err.startswith("convattn train: error: training diverged at step 5 (epoch 2, lr 0.0") and "the loss is nan" in err
    res = _strict(run / "results.json")
    assert res["status"] == "diverged" and res["epochs"] == 1 and res["steps"] == 5
    assert not {"test_acc", "val_acc", "best_val_acc", "train_acc"} & set(res)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the epoch-1 checkpoints stay as they were
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_huge_learning_rate_never_writes_non_finite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--epochs", "3", "--lr", "1e6", "--out", str(run)) == 3
    assert "training diverged at step" in capsys.readouterr().err
    assert _strict(run / "results.json")["status"] == "diverged"
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            assert all(torch.isfinite(t).all() for t in load_checkpoint(run / name)["model"].values()
                       if t.is_floating_point())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_a_non_finite_gradient_norm_stops_a_clipped_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("inf")))
    assert _train("--clip-grad", "1.0", "--out", str(tmp_path / "run")) == 3
    assert "step 1 (epoch 1" in capsys.readouterr().err
    assert _strict(tmp_path / "run" / "results.json")["reason"].count("the gradient norm is inf") == 1


def test_metrics_files_are_strict_json():
    from convattn.engine.metrics import strict_json

    assert strict_json({"val_loss": float("nan"), "lr": float("inf"), "rows": [float("-inf"), 1.5]}) == \
        '{"val_loss": null, "lr": null, "rows": [null, 1.5]}'


def test_interrupted_run_says_so_and_resumes_exactly_with_the_whole_epoch_timed(tmp_path, monkeypatch, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    more = ["--epochs", "2", "--batch-size", "16", "--save-every", "2"]  # 6 steps per epoch
    assert _train(*more, "--out", str(ref)) == 0
    real = trainer.WarmupSchedule.step

    def slow_step(self, *a, **k):  # the first part of epoch 2 takes >= 0.4 s
        real(self, *a, **k)
        if self.last_epoch > 6:
            time.sleep(0.1)
        if self.last_epoch == 11:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.WarmupSchedule, "step", slow_step)
    assert _train(*more, "--out", str(run)) == 130
    res = _strict(run / "results.json")
    assert res["status"] == "interrupted" and res["epochs"] == 1 and "test_acc" not in res
    saved = load_checkpoint(run / "last.pt")
    assert saved["step"] == 10 and saved["epoch_elapsed"] >= 0.4
    monkeypatch.setattr(trainer.WarmupSchedule, "step", real)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _strict(run / "results.json")["status"] == "finished"
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["epoch_time"] >= 0.4  # the part before the stop counts


def _hold_lock(run):
    """Another process that holds ``run``'s lock until its stdin closes."""
    code = ("import sys; from convattn.engine.rundir import claim_run_dir; "
            f"lock = claim_run_dir({str(run)!r}, resume=False); print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "conc"
    holder = _hold_lock(run)
    try:
        assert _train("--out", str(run)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"is in use by pid {holder.pid} on host " in err
        assert cli.main(["train", "--resume", str(run)]) == 2  # nothing to resume yet, and never alongside
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (run / "metrics.jsonl").exists()  # the refused run wrote nothing
    assert _train("--out", str(tmp_path / "free")) == 0
    assert json.loads((tmp_path / "free" / "run.json").read_text())["format"] == "convattn.run/1"


def test_out_refuses_what_is_not_a_fresh_run(tmp_path, capsys):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "results.json").write_text("mine\n")
    assert _train("--out", str(user)) == 2
    assert "is not empty and is not a convattn run (found results.json)" in capsys.readouterr().err
    assert (user / "results.json").read_text() == "mine\n" and sorted(os.listdir(user)) == ["results.json"]
    run = tmp_path / "run"
    assert _train("--out", str(run)) == 0
    capsys.readouterr()
    assert _train("--out", str(run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    (run / "last.pt").unlink()  # best.pt kept, last.pt deleted
    assert _train("--out", str(run)) == 2
    assert "holds another run that has no last.pt" in capsys.readouterr().err and (run / "best.pt").exists()


def test_a_run_that_failed_before_writing_anything_leaves_its_directory_usable(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--lr-mult", "nosuchgroup=0.1", "--out", str(run)) == 2
    assert sorted(os.listdir(run)) == ["run.json", "run.lock"]
    assert _train("--out", str(run)) == 0


def test_resume_continues_in_its_own_directory(tmp_path, capsys):
    run = tmp_path / "a"
    assert _train("--epochs", "2", "--out", str(run)) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--out", str(tmp_path / "b")]) == 2
    assert "--resume continues the run in" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and "/b" not in (run / "config.yaml").read_text()


def test_os_errors_are_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    assert _train("--out", str(tmp_path / "afile")) == 2
    assert "'afile' is a file, not a directory" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")
    assert _train("--out", str(tmp_path / "afile" / "sub")) == 2
    assert "is a file" in capsys.readouterr().err
    for code, words in ((errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")):
        def refuse(self, *a, _code=code, _words=words, **k):
            raise OSError(_code, _words, str(self))

        monkeypatch.setattr(Path, "mkdir", refuse)
        assert _train("--out", str(tmp_path / "ro" / "run")) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cannot write run directory" in err and words in err
        monkeypatch.undo()
        standin.install(monkeypatch)


def test_a_full_disk_during_a_checkpoint_keeps_the_older_ones_and_resume_is_exact(tmp_path, monkeypatch, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _train("--epochs", "2", "--out", str(ref)) == 0
    real = C.atomic_open
    writes = []

    def fills_up(path, mode="w", **kw):  # the disk fills up at epoch 2's checkpoint
        writes.append(path)
        if Path(path).name == "last.pt" and len([p for p in writes if Path(p).name == "last.pt"]) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mode, **kw)

    monkeypatch.setattr(C, "atomic_open", fills_up)
    assert _train("--epochs", "2", "--out", str(run)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("convattn train: error: cannot write checkpoint") and "last.pt" in err and "disk full" in err and "are intact" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    monkeypatch.setattr(C, "atomic_open", real)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_refuses_a_bit_flipped_or_foreign_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--epochs", "2", "--out", str(run)) == 0
    data = bytearray((run / "last.pt").read_bytes())
    data[-200] ^= 0x10
    (run / "last.pt").write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "last.pt' is truncated or corrupt: its sha256 does not match" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("this is text, not a checkpoint\n")
    assert cli.main(["train", "--resume", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt' is truncated or corrupt" in capsys.readouterr().err


def test_interrupted_writes_leave_no_temporary_files_at_the_next_start(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    assert _train("--epochs", "2", "--save-every", "1", "--out", str(run)) == 130
    stale = [run / ".last.pt.k3j_9x0a.tmp", run / ".metrics.jsonl.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    kept = [run / "notes.tmp", run / "tb" / ".last.pt.k3j_9x0a.tmp"]  # not _io's pattern / not this folder
    kept[1].parent.mkdir(exist_ok=True)
    for p in kept:
        p.write_text("mine")
    monkeypatch.undo()
    standin.install(monkeypatch)
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_config_edits_before_resume(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _fail_at_step(monkeypatch, 4, KeyboardInterrupt())
    assert _train("--epochs", "2", "--out", str(run)) == 130
    monkeypatch.undo()
    standin.install(monkeypatch)
    path = run / "config.yaml"
    original = path.read_text()
    path.write_text(original.replace("lr: 0.05", "lr: 0.5"))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml' was edited after the run started (lr: 0.05 -> 0.5)" in err
    path.write_text(original.replace("save_every: null", "save_every: 50"))  # result-free: applied
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["config"]["save_every"] == 50


def test_integer_fields_refuse_non_integers(tmp_path, capsys):
    for value in (10.5, 10.0, True, "10"):
        with pytest.raises(ConfigError, match=rf"TrainConfig.train_size must be an integer >= 1 or None, got {value!r}"):
            TrainConfig(train_size=value)
    (tmp_path / "c.yaml").write_text("train_size: 10.5\n")
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 2
    assert "train_size must be an integer >= 1 or None, got 10.5" in capsys.readouterr().err
