"""What a multi-run does with a run folder it finds (``convattn.experiments.runs.run_state``)."""

import pathlib

import pytest

from convattn.engine import resolve_config
from convattn.engine.rundir import MARKER, RunLock
from convattn.exceptions import ConfigError, RunDirectoryError
from convattn.experiments import runs

TINY = {"model": "simple_cnn", "dataset": "digits", "train_size": 64, "val_size": 32, "test_size": 32, "epochs": 1,
        "image_size": 16, "batch_size": 32, "progress": False, "tensorboard": False}


def _stopped_before_first_checkpoint(tmp_path):
    """A run of ``TINY`` killed in its first epoch: marker, lock, config and metrics header, no checkpoint."""
    cfg, _ = resolve_config({**TINY, "out": str(tmp_path / "run")})
    run = pathlib.Path(cfg.out)
    run.mkdir()
    (run / MARKER).write_text('{"format": "convattn.run/1"}\n')
    (run / "run.lock").write_text("pid 1 on host gone\n")
    cfg.to_yaml(run / "config.yaml")
    (run / "metrics.csv").write_text("epoch,train_loss\n")
    return cfg, run


def test_a_run_stopped_before_its_first_checkpoint_trains_again(tmp_path):
    cfg, run = _stopped_before_first_checkpoint(tmp_path)
    assert runs.run_state(cfg) == "restart"
    res, how = runs.train_or_reuse(cfg)
    assert how == "trained" and res["status"] == "finished" and (run / "last.pt").is_file()
    assert runs.run_state(cfg) == "finished"


def test_a_run_still_writing_its_folder_is_not_cleared(tmp_path):
    cfg, run = _stopped_before_first_checkpoint(tmp_path)
    lock = RunLock(run)  # the run is alive (another process's lock in real use)
    try:
        with pytest.raises(RunDirectoryError, match="in use by pid"):
            runs.train_or_reuse(cfg)
    finally:
        lock.release()
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()


def test_a_best_checkpoint_without_last_is_refused_not_overwritten(tmp_path):
    cfg, run = _stopped_before_first_checkpoint(tmp_path)
    (run / "best.pt").write_bytes(b"weights")
    assert runs.run_state(cfg) == "no last.pt"
    with pytest.raises(ConfigError, match="best.pt but no last.pt; pass --force"):
        runs.train_or_reuse(cfg)
    assert (run / "best.pt").read_bytes() == b"weights"


def test_the_dry_run_says_a_stopped_run_must_be_removed_to_run_its_line_by_hand(tmp_path, capsys):
    from convattn.cli import main
    from convattn.experiments import compare_configs

    cfg = compare_configs({"none": {"attention": None}}, [0], out=tmp_path, **TINY)[("none", 0)][0]
    _, run = _stopped_before_first_checkpoint(tmp_path)  # moved to where compare keeps that run, with its config
    target = pathlib.Path(cfg.out)
    target.parent.mkdir(parents=True)
    run.rename(target)
    cfg.to_yaml(target / "config.yaml")
    assert runs.run_state(cfg) == "restart"
    argv = ["compare", "--model", "simple_cnn", "--dataset", "digits", "--train-size", "64", "--val-size", "32",
            "--test-size", "32", "--epochs", "1", "--image-size", "16", "--batch-size", "32", "--jobs", "1",
            "--no-progress", "--attention", "none", "--seeds", "1", "--out", str(tmp_path), "--dry-run"]
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("convattn train ") and "--resume" not in line
    assert line.endswith("none seed 0: stopped before its first checkpoint: compare empties it and trains again "
                         "(to run this line by hand, remove that folder first)")
