"""Many runs (``convattn.experiments.runs``): parallel workers, reuse of finished runs, resuming."""

import functools
import json
import os
import pathlib

import pytest
import yaml

from convattn.engine import TrainConfig
from convattn.engine.rundir import check_resume_config
from convattn.exceptions import ConfigError, RunDivergedError
from convattn.experiments import demo, runs


@pytest.fixture
def fake_train(monkeypatch):
    """``convattn.engine.train`` that writes config.yaml and results.json at once."""
    calls = []

    def train(config, *, resume=None):
        calls.append((config, resume))
        d = pathlib.Path(config.out)
        d.mkdir(parents=True, exist_ok=True)
        config.to_yaml(d / "config.yaml")
        res = {"run_dir": str(d), "test_acc": 0.5, "params": 1234, "epoch_time": 1.5}
        (d / "results.json").write_text(json.dumps(res))
        return res

    import convattn.engine

    monkeypatch.setattr(convattn.engine, "train", train)
    return calls


def test_unfinished_run_is_resumed(tmp_path, fake_train):
    (cfg,) = demo.make_configs("plain", out=tmp_path, epochs=1, train_size=10)
    run = pathlib.Path(cfg.out)
    run.mkdir(parents=True)
    cfg.to_yaml(run / "config.yaml")
    (run / "last.pt").write_bytes(b"")
    res, how = runs.train_or_reuse(cfg)
    assert how == "resumed" and fake_train[-1][1] == run
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 1


def test_a_diverged_run_is_never_reused_as_a_result_and_an_interrupted_one_resumes(tmp_path, fake_train):
    (cfg,) = demo.make_configs("plain", out=tmp_path, epochs=1, train_size=10)
    run = pathlib.Path(cfg.out)
    run.mkdir(parents=True)
    cfg.to_yaml(run / "config.yaml")
    (run / "results.json").write_text(json.dumps({"status": "diverged", "run_dir": str(run), "epochs": 0,
                                                  "steps": 3, "reason": "training diverged at step 3"}))
    with pytest.raises(RunDivergedError, match="diverged .*step 3.*--force"):
        runs.train_or_reuse(cfg)
    assert fake_train == []
    (run / "results.json").write_text(json.dumps({"status": "interrupted", "run_dir": str(run), "epochs": 0}))
    (run / "last.pt").write_bytes(b"")
    assert runs.train_or_reuse(cfg)[1] == "resumed"


def test_reuse_and_resume_share_the_result_free_fields(tmp_path, fake_train):
    """A finished run is reused under any change of TrainConfig.RESULT_FREE_FIELDS (the list resuming
    allows too), and refused under a change of a field that decides the result."""
    cfg = TrainConfig(epochs=2, lr=0.1, out=str(tmp_path / "run"))
    assert runs.train_or_reuse(cfg)[1] == "trained"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    free = {"data_dir": str(tmp_path), "download": True, "compile": True, "device": "cpu", "workers": 2,
            "progress": False, "tensorboard": False, "save_every": 5}
    assert set(free) | {"out"} == TrainConfig.RESULT_FREE_FIELDS
    moved = cfg.replace(**free)
    assert moved.result_changes(saved) == {} and moved.result_dict() == cfg.result_dict()
    check_resume_config(moved, saved)  # resuming allows the same changes
    assert runs.train_or_reuse(moved)[1] == "reused" and len(fake_train) == 1
    other = cfg.replace(lr=0.2)
    assert other.result_changes(saved) == {"lr": (0.1, 0.2)}
    with pytest.raises(ConfigError, match="holds a run with other settings"):
        runs.train_or_reuse(other)
    with pytest.raises(ConfigError, match=r"cannot resume with a different configuration \(lr: 0.1 -> 0.2\)"):
        check_resume_config(other, saved)
    # a field the saved config predates counts with its default
    assert cfg.result_changes({k: v for k, v in saved.items() if k != "alpha"}) == {}
    assert cfg.replace(alpha=0.5).result_changes({k: v for k, v in saved.items() if k != "alpha"}) == {"alpha": (0.0, 0.5)}
    assert runs.train_or_reuse(other, force=True)[1] == "trained" and len(fake_train) == 2


def test_jobs_and_threads_share_the_cores(monkeypatch):
    monkeypatch.setattr(runs, "usable_cores", lambda: 2)
    assert runs.jobs_and_threads(0, 0, runs=4) == (2, 1)  # two runs at a time, one thread each
    assert runs.jobs_and_threads(0, 0, runs=1) == (1, 2)
    assert runs.jobs_and_threads(1, 0, runs=4) == (1, 2)
    assert runs.jobs_and_threads(3, 5, runs=4) == (3, 5)
    monkeypatch.setattr(runs, "usable_cores", lambda: 16)
    assert runs.jobs_and_threads(0, 0, runs=4) == (4, 4)
    with pytest.raises(ConfigError, match="must be >= 0"):
        runs.jobs_and_threads(-1, 0, runs=4)


def test_runs_train_in_parallel_processes(tmp_path, capfd):
    """Two real (tiny) runs in two worker processes: each writes its run, lines are prefixed by its name."""
    chains = {v: [TrainConfig(model="simple_cnn", dataset="cluttered-digits", train_size=16, val_size=8, test_size=8,
                              image_size=28, epochs=1, batch_size=8, seed=i, progress=False, tensorboard=False,
                              out=str(tmp_path / v))]
              for i, v in enumerate(("a", "b", "c"))}  # three chains: one worker trains two, one prefix each
    ended = []
    # `prepare` runs before its chain, `after` (here: draw the run's figures) after each run, in the workers
    prepare = {"b": functools.partial(os.makedirs, str(tmp_path / "prepared"))}
    after = functools.partial(demo.draw_figures, count=8)
    res = runs.train_runs(chains, jobs=2, threads=1, on_done=lambda k, r, how, s: ended.append((k, how)),
                          prepare=prepare, after=after)
    assert sorted(ended) == [("a", "trained"), ("b", "trained"), ("c", "trained")]
    assert (tmp_path / "prepared").is_dir()
    for v in ("a", "b", "c"):
        assert res[v][0]["run_dir"] == str(tmp_path / v) and (tmp_path / v / "results.json").is_file()
        assert res[v][0]["figures"].endswith(f"figures in {tmp_path / v / 'figures'}")
        assert any((tmp_path / v / "figures").glob("*.png"))
    err = capfd.readouterr().err
    epochs = [line.split(" epoch 1")[0] for line in err.splitlines() if " epoch 1 " in line]
    assert sorted(epochs) == ["[a]", "[b]", "[c]"], err
    again = runs.train_runs(chains, jobs=1)  # finished runs are reused
    assert {k: how for k, (_, how, _) in again.items()} == {"a": "reused", "b": "reused", "c": "reused"}
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        runs.train_runs(chains, jobs=0)
    other = {"a": [TrainConfig.from_dict({**chains["a"][0].to_dict(), "epochs": 2})], "b": chains["b"]}
    with pytest.raises(ConfigError, match="holds a run with other settings"):  # a worker's error stops the pool
        runs.train_runs(other, jobs=2)
