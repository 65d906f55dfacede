"""``compare(..., launcher="ray")`` / ``convattn compare --launcher ray`` on one local Ray instance: the same table
as the local launcher, failed runs in the table, a killed worker's run retried, Ctrl-C cancelling, and the
CLI's answers with and without ray installed."""

import importlib
import importlib.util
import json
import os
import sys
import time
import uuid

import pytest
import yaml

from convattn.cli import main
from convattn.engine import TrainConfig
from convattn.experiments import compare, train_runs
from convattn.models.registry import MODELS

# one xdist worker runs this module, so that its tests share one Ray instance
pytestmark = pytest.mark.xdist_group("ray")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'convattn[ray]')")

TINY = {"model": "simple_cnn", "dataset": "digits", "train_size": 64, "val_size": 32, "test_size": 32, "epochs": 1,
        "image_size": 16, "batch_size": 32, "progress": False}
TINY_FLAGS = ["--model", "simple_cnn", "--dataset", "digits", "--train-size", "64", "--val-size", "32",
              "--test-size", "32", "--epochs", "1", "--image-size", "16", "--batch-size", "32", "--no-progress"]

# Models that misbehave in a Ray worker only (never in the test's own process, which also builds them to count
# FLOPs): one kills its worker process the first time it is built, one raises every time (and counts its tries).
PLUGIN = '''
import functools
import os
import signal
from pathlib import Path

import convattn
from convattn.models.simple_cnn import simple_cnn

DRIVER, MARKER, TRIES = {driver}, Path({marker!r}), Path({tries!r})


@convattn.register_model("{dies}")
@functools.wraps(simple_cnn)
def dies_once(**kwargs):
    if os.getpid() != DRIVER and not MARKER.exists():
        MARKER.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return simple_cnn(**kwargs)


@convattn.register_model("{flaky}")
@functools.wraps(simple_cnn)
def always_fails(**kwargs):
    if os.getpid() != DRIVER:
        with TRIES.open("a") as f:
            f.write("try\\n")
        raise RuntimeError("this model fails on every try")
    return simple_cnn(**kwargs)
'''

# A model of one's own imported in the test's process only (as `convattn --import MODULE` does): the runs tell
# their workers to import it.
OWN = '''
import convattn
from convattn.models.simple_cnn import simple_cnn


@convattn.register_model("{own}")
def own(*, num_classes, in_chans=3, attention=None, attn_kwargs=None):
    return simple_cnn(num_classes=num_classes, in_chans=in_chans, attention=attention, attn_kwargs=attn_kwargs)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The misbehaving models' module, importable here and (through the environment Ray starts with) in workers."""
    tag = uuid.uuid4().hex[:8]
    folder = tmp_path_factory.mktemp("plugin")
    names = {"module": f"ray_models_{tag}", "dies": f"dies_once_{tag}", "flaky": f"always_fails_{tag}",
             "marker": str(folder / "killed"), "tries": str(folder / "tries"), "own_module": f"own_models_{tag}",
             "own": f"own_{tag}"}
    (folder / f"{names['module']}.py").write_text(PLUGIN.format(driver=os.getpid(), **names))
    (folder / f"{names['own_module']}.py").write_text(OWN.format(**names))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
        mp.setenv("CONVATTN_IMPORT", names["module"])
        importlib.import_module(names["own_module"])
        yield names
    for module in (names["module"], names["own_module"]):
        sys.modules.pop(module, None)
    for model in (names["dies"], names["flaky"], names["own"]):
        if model in MODELS:
            MODELS.remove(model)


@pytest.fixture(scope="module")
def ray_cluster(plugin):
    """One local Ray instance (2 CPUs) for the module; its workers see the plugin's environment."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'convattn[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new instance, whatever RAY_ADDRESS says
    yield ray
    ray.shutdown()


def _runs(table):
    return {(r["variant"], r["seed"]): r for row in table["rows"] for r in row["runs"]}


@needs_ray
def test_ray_gives_the_local_table_and_reuses_its_runs(ray_cluster, tmp_path, capsys):
    local = compare(["none", "se"], seeds=2, out=tmp_path / "local", jobs=1, threads=1, **TINY)
    seen = []
    on_ray = compare(["none", "se"], seeds=2, out=tmp_path / "ray", launcher="ray",
                     on_done=lambda v, s, res, how, secs: seen.append((v, s, how)), **TINY)
    err = capsys.readouterr().err
    assert "[ray] cluster: 2 CPU(s), 0 GPU(s); each run takes 1 CPU(s), 0 GPU(s)" in err
    assert sorted(seen) == [("none", 0, "trained"), ("none", 1, "trained"), ("se", 0, "trained"), ("se", 1, "trained")]
    assert all(f"[compare] {v} seed {s}: trained in" in err for v, s, _ in seen)
    a, b = _runs(local), _runs(on_ray)
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:  # the same seeds give the same runs: one thread each, here and in the Ray workers
        assert (b[key]["status"], b[key]["test_acc"], b[key]["best_val_acc"]) == (
            "finished", a[key]["test_acc"], a[key]["best_val_acc"]), key
        assert b[key]["run_dir"] == str(tmp_path / "ray" / key[0] / f"seed{key[1]}")
        saved = yaml.safe_load((tmp_path / "ray" / key[0] / f"seed{key[1]}" / "config.yaml").read_text())
        assert (saved["device"], saved["progress"]) == ("cpu", False)  # a task that asks for no GPU trains on the CPU
    for x, y in zip(local["rows"], on_ray["rows"]):
        assert (x["variant"], x["test_acc"], x["diff"], x["params"], x["flops"]) == (
            y["variant"], y["test_acc"], y["diff"], y["params"], y["flops"])
    again = compare(["none", "se"], seeds=2, out=tmp_path / "ray", launcher="ray", **TINY)
    assert {r["how"] for r in _runs(again).values()} == {"reused"}
    assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in on_ray["rows"]]


@pytest.fixture(scope="module")
def troubled(ray_cluster, plugin, tmp_path_factory):
    """One compare on Ray: a plain run, a bad option, a model that always raises, one that kills its worker once
    and one known here only."""
    out = tmp_path_factory.mktemp("troubled")
    variants = {"plain": {}, "bad": {"attention": "nosuchlayer"}, "flaky": {"model": plugin["flaky"]},
                "dies": {"model": plugin["dies"]}, "own": {"model": plugin["own"]}}
    return compare(variants, seeds=[0], out=out, launcher="ray", recipe="none", **TINY)  # no recipe: plain = dies


@needs_ray
def test_failed_runs_are_rows_and_the_others_finish(troubled, plugin):
    runs = _runs(troubled)
    assert runs[("plain", 0)]["status"] == runs[("dies", 0)]["status"] == "finished"
    assert runs[("bad", 0)]["status"] == "failed" and "nosuchlayer" in runs[("bad", 0)]["reason"]
    # an exception is retried once, then the run is failed with its reason (a bad option is not retried)
    assert runs[("flaky", 0)]["status"] == "failed"
    assert runs[("flaky", 0)]["reason"] == "RuntimeError: this model fails on every try"
    with open(plugin["tries"]) as f:
        assert f.read().count("try") == 2
    assert [row["finished"] for row in troubled["rows"]] == [1, 0, 0, 1, 1]
    assert runs[("own", 0)]["test_acc"] == runs[("plain", 0)]["test_acc"]  # imported in the worker: the same network


@needs_ray
def test_a_killed_worker_is_retried_and_its_run_completes(troubled, plugin):
    assert os.path.isfile(plugin["marker"])  # the first try's worker killed itself
    runs = _runs(troubled)
    dies, plain = runs[("dies", 0)], runs[("plain", 0)]
    assert dies["status"] == "finished" and dies["how"] == "trained"
    # the same network, seed and data as plain: the retried run is a whole, ordinary run
    assert dies["test_acc"] == plain["test_acc"] and dies["best_val_acc"] == plain["best_val_acc"]
    with open(os.path.join(dies["run_dir"], "results.json")) as f:
        assert {k: v for k, v in json.load(f).items() if k in ("status", "model", "seed")} == {
            "status": "finished", "model": plugin["dies"], "seed": 0}


@needs_ray
def test_stopping_early_cancels_the_tasks_still_running(ray_cluster, tmp_path):
    from convattn.experiments.ray_launcher import run_tasks

    started, stopped = tmp_path / "started", tmp_path / "stopped"

    def work(seconds):
        try:
            if seconds:  # the slow task only: the quick one must not say that the slow one runs
                started.touch()
            for _ in range(10 * seconds):  # short sleeps: the interrupt lands between them, as between steps
                time.sleep(0.1)
        except KeyboardInterrupt:  # what a cancelled run gets: the trainer then writes that it was interrupted
            stopped.write_text("interrupted")
            raise
        return seconds

    ended = run_tasks(work, {"slow": (60,), "quick": (0,)})
    assert next(ended)[:2] == ("quick", 0)
    start = time.perf_counter()
    while not started.exists() and time.perf_counter() - start < 60:  # a worker may take a while to start
        time.sleep(0.1)
    assert started.exists(), "the slow task did not start within 60 s"
    start = time.perf_counter()
    ended.close()  # what Ctrl-C (or an error) in the caller does
    assert stopped.read_text() == "interrupted" and time.perf_counter() - start < 30


def test_cli_launcher_options_and_a_dry_run_without_ray(tmp_path, monkeypatch, capsys):
    base = ["compare", *TINY_FLAGS, "--attention", "none,se", "--seeds", "2", "--out", str(tmp_path)]
    assert main([*base, "--dry-run"]) == 0
    local = capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    # a dry run trains nothing and needs no Ray: the same commands, for any scheduler
    assert main([*base, "--launcher", "ray", "--dry-run"]) == 0
    assert capsys.readouterr().out == local and len(local.splitlines()) == 4
    assert main([*base, "--launcher", "ray"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "the Ray launcher needs the ray package, which is not installed here: pip install 'convattn[ray]'")
    assert not (tmp_path / "none").exists()
    for extra, expected in ((["--address", "auto"], "--address: expected with --launcher ray, got the local launcher"),
                            (["--gpus-per-run", "1"], "--gpus-per-run: expected with --launcher ray"),
                            (["--launcher", "ray", "--jobs", "2"], "expected --cpus-per-run / --gpus-per-run, got --jobs")):
        assert main([*base, *extra]) == 2
        assert expected in capsys.readouterr().err
    assert main(["compare", "--collect", str(tmp_path), "--launcher", "ray"]) == 2
    assert "expected no variants or train flags, got --launcher" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cpus_per_run=0"):
        compare(["none"], seeds=1, out=tmp_path, launcher="ray", cpus_per_run=0, **TINY)
    with pytest.raises(ValueError, match="cpus_per_run=0"):  # a dry run refuses what the launch would
        compare(["none"], seeds=1, out=tmp_path, launcher="ray", cpus_per_run=0, dry_run=True, **TINY)
    assert main([*base, "--launcher", "ray", "--gpus-per-run", "-1", "--dry-run"]) == 2
    assert "got cpus_per_run=None, gpus_per_run=-1.0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device 'cuda' needs gpus_per_run > 0, got 0"):
        train_runs({"a": [TrainConfig(device="cuda", out=str(tmp_path / "a"))]}, launcher="ray")
    with pytest.raises(ValueError, match="launcher must be 'local' or 'ray', got 'slurm'"):
        compare(["none"], seeds=1, out=tmp_path, launcher="slurm", **TINY)
