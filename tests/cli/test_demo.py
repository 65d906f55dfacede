"""``convattn demo``: configs, the comparison table, reuse / resume of runs (training is faked)."""

import functools
import json
import os

import pytest
import yaml

from convattn.cli import demo, main
from convattn.exceptions import ConfigError


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(config, *, resume=None):
        calls.append((config, resume))
        out = config.out
        import pathlib

        d = pathlib.Path(out)
        d.mkdir(parents=True, exist_ok=True)
        config.to_yaml(d / "config.yaml")
        acc = {"simple_cnn": 0.5, "stn_cnn": 0.7, "aacn": 0.8}[config.model] + (0.1 if config.attention else 0.0)
        res = {"run_dir": str(d), "test_acc": acc, "params": 1234, "epoch_time": 1.5}
        (d / "results.json").write_text(json.dumps(res))
        return res

    import convattn.engine

    monkeypatch.setattr(convattn.engine, "train", train)
    monkeypatch.setattr(demo, "usable_cores", lambda: 1)  # one run at a time, in this process (the fake stays in place)
    return calls


def test_configs_share_the_recipe(tmp_path):
    chains = {v: demo.make_configs(v, out=tmp_path / v, epochs=6, train_size=100) for v in demo.VARIANTS}
    cfgs = {v: chain[-1] for v, chain in chains.items()}
    assert {v: (c.model, c.attention) for v, c in cfgs.items()} == {
        "plain": ("simple_cnn", None), "cbam": ("simple_cnn", "cbam"), "stn": ("stn_cnn", None), "aacn": ("aacn", None)}
    for c in cfgs.values():
        assert c.dataset == "cluttered-digits" and c.train_size == 100
        assert (c.optimizer, c.lr, c.schedule, c.batch_size) == ("adamw", 5e-3, "cosine", 32)  # the models' recipe
    assert [c.epochs for v, c in cfgs.items() if v != "aacn"] == [6, 6, 6]
    # AACN in the same budget: the plain backbone for 4 epochs (a run of its own), then the staged recipe
    # from it, attention / decision alternating, for 2
    plain, aacn = chains["aacn"]
    assert (plain.model, plain.attention, plain.epochs, plain.out) == ("simple_cnn", None, 4, str(tmp_path / "aacn-plain"))
    assert plain.to_dict() == {**chains["plain"][0].to_dict(), "epochs": 4, "out": plain.out}
    assert (aacn.recipe, aacn.stage_mode, aacn.epochs, aacn.init_from) == ("staged", "alternate", 2, plain.out)
    assert [(s["name"], s["epochs"]) for s in aacn.stages] == [("attention", 1), ("decision", 1)]
    with pytest.raises(ConfigError, match="unknown demo variant"):
        demo.make_configs("se", out=tmp_path)
    with pytest.raises(ConfigError, match="aacn starts from a plain run: it needs epochs >= 2"):
        demo.make_configs("aacn", out=tmp_path, epochs=1)
    from convattn.engine.recipes import aacn_feature_epochs

    assert [aacn_feature_epochs(e) for e in (2, 3, 6, 12)] == [1, 2, 4, 8]


def test_variant_models_build_with_their_options(tmp_path):
    """CBAM starts as the identity; the STN's localisation group exists for its lr multiplier."""
    import torch

    from convattn.models import create_model

    (cbam,) = demo.make_configs("cbam", out=tmp_path / "c")
    net = create_model(cbam.model, num_classes=10, in_chans=1, attention=cbam.attention, **cbam.model_kwargs)
    plain = create_model("simple_cnn", num_classes=10, in_chans=1)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if ".attn." not in k})
    x = torch.randn(2, 1, 20, 18)
    net.eval(), plain.eval()
    torch.testing.assert_close(net(x), plain(x))

    (stn,) = demo.make_configs("stn", out=tmp_path / "s")
    net = create_model(stn.model, num_classes=10, in_chans=1, **stn.model_kwargs)
    assert set(stn.lr_mult) <= set(net.param_groups())
    assert net.transformed(torch.randn(1, 1, 60, 60)).shape[-2:] == tuple(stn.model_kwargs["out_size"])


def test_demo_prints_table_and_reuses_runs(tmp_path, fake_train, capsys):
    argv = ["demo", "--out", str(tmp_path), "--epochs", "2", "--train-size", "10", "--no-localization", "--no-viz",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(fake_train) == 5  # AACN's plain run, then AACN from it
    (plain_run, _), (aacn_run, _) = [c for c in fake_train if "aacn" in c[0].out]
    assert (plain_run.out, aacn_run.init_from) == (str(tmp_path / "aacn-plain"),) * 2
    for v, acc in (("plain", "50.0"), ("cbam", "60.0"), ("stn", "70.0"), ("aacn", "80.0")):
        line = next(l for l in out.splitlines() if l.startswith(v))
        assert acc in line and str(tmp_path / v) in line and "1,234" in line
    assert f"aacn: simple_cnn for the first 1 of the 2 epochs ({tmp_path / 'aacn-plain'}), then aacn from it" in out
    # a second run reuses the finished runs
    assert main(argv) == 0
    assert len(fake_train) == 5
    assert "reused finished runs: plain, cbam, stn, aacn" in capsys.readouterr().out
    # other settings in an existing run directory: an error, unless --force
    assert main(argv[:-2] + ["--epochs", "3", "--no-progress", "--variants", "plain"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(argv + ["--epochs", "3", "--variants", "plain", "--force"]) == 0
    assert len(fake_train) == 6 and fake_train[-1][0].epochs == 3


def test_unfinished_run_is_resumed(tmp_path, fake_train):
    (cfg,) = demo.make_configs("plain", out=tmp_path / "plain", epochs=1, train_size=10)
    (tmp_path / "plain").mkdir()
    cfg.to_yaml(tmp_path / "plain" / "config.yaml")
    (tmp_path / "plain" / "last.pt").write_bytes(b"")
    res, how = demo.train_or_reuse(cfg)
    assert how == "resumed" and fake_train[-1][1] == tmp_path / "plain"
    assert yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())["epochs"] == 1


def test_bad_variants(capsys):
    assert main(["demo", "--variants", "plain,foo", "--no-viz"]) == 2
    assert "--variants" in capsys.readouterr().err


def test_demo_scores_localisation_once(tmp_path, fake_train, monkeypatch, capsys):
    """Every run is scored against the digit boxes, the scores land in results.json and are reused."""
    import convattn.eval

    scored = []

    def localize_run(run_dir, *, split, size, device, progress):
        scored.append((run_dir, size))
        maps = {"Grad-CAM": {"kind": "grad-cam", "layer": "stages.2.conv", "images": size, "pointing": 0.9,
                             "energy": 0.5}}
        if "stn" in str(run_dir):
            maps["stn:window"] = {"kind": "window", "images": size, "pointing": 0.75, "energy": 0.25, "iou": 0.125}
        loc = {"dataset": "cluttered-digits", "split": split, "images": size, "image_size": [60, 60],
               "tolerance_px": 4.0, "box_share": 0.08, "pointing_chance": 0.17, "maps": maps}
        res = json.loads((tmp_path / pathlib.Path(run_dir).name / "results.json").read_text())
        (tmp_path / pathlib.Path(run_dir).name / "results.json").write_text(json.dumps({**res, "localization": loc}))
        return loc

    import pathlib

    monkeypatch.setattr(convattn.eval, "localize_run", localize_run)
    argv = ["demo", "--out", str(tmp_path), "--epochs", "2", "--train-size", "10", "--loc-size", "7", "--no-viz",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # each run is scored after it trains, in the order they start
    assert [(pathlib.Path(d).name, n) for d, n in scored] == [("stn", 7), ("plain", 7), ("cbam", 7), ("aacn", 7)]
    window = next(line for line in out.splitlines() if "stn:window" in line)
    assert window.split()[-3:] == ["75.0", "25.0", "12.5"] and window.startswith("stn")
    assert "Grad-CAM (stages.2.conv)" in out and "7 test images" in out and "8.0%" in out
    assert main(argv) == 0  # finished runs keep their scores
    assert len(scored) == 4
    assert main(argv[:7] + ["--loc-size", "9", "--no-viz", "--no-progress"]) == 0  # another sample: scored again
    assert len(scored) == 8
    assert main(argv[:7] + ["--loc-size", "0"]) == 2
    assert "--loc-size must be >= 1, got 0" in capsys.readouterr().err


def test_jobs_and_threads_share_the_cores(monkeypatch):
    import argparse

    monkeypatch.setattr(demo, "usable_cores", lambda: 2)
    auto = argparse.Namespace(jobs=0, threads=0, device="cpu")
    assert demo._jobs_and_threads(auto, 4) == (2, 1)  # two runs at a time, one thread each
    assert demo._jobs_and_threads(auto, 1) == (1, 2)
    assert demo._jobs_and_threads(argparse.Namespace(jobs=1, threads=0, device="cpu"), 4) == (1, 2)
    assert demo._jobs_and_threads(argparse.Namespace(jobs=3, threads=5, device="cpu"), 4) == (3, 5)
    monkeypatch.setattr(demo, "usable_cores", lambda: 16)
    assert demo._jobs_and_threads(auto, 4) == (4, 4)


def test_runs_train_in_parallel_processes(tmp_path, capfd):
    """Two real (tiny) runs in two worker processes: each writes its run, lines are prefixed by its name."""
    from convattn.engine import TrainConfig

    chains = {v: [TrainConfig(model="simple_cnn", dataset="cluttered-digits", train_size=16, val_size=8, test_size=8,
                              image_size=28, epochs=1, batch_size=8, seed=i, progress=False, tensorboard=False,
                              out=str(tmp_path / v))]
              for i, v in enumerate(("a", "b", "c"))}  # three chains: one worker trains two, one prefix each
    ended = []
    # `prepare` runs before its chain, `after` (here: draw the run's figures) after each run, in the workers
    prepare = {"b": functools.partial(os.makedirs, str(tmp_path / "prepared"))}
    after = functools.partial(demo._score_and_draw, loc_size=None, device="cpu", viz=True)
    res = demo.train_runs(chains, jobs=2, threads=1, on_done=lambda k, r, how, s: ended.append((k, how)),
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
    again = demo.train_runs(chains, jobs=1)  # finished runs are reused
    assert {k: how for k, (_, how, _) in again.items()} == {"a": "reused", "b": "reused", "c": "reused"}
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        demo.train_runs(chains, jobs=0)
    other = {"a": [TrainConfig.from_dict({**chains["a"][0].to_dict(), "epochs": 2})], "b": chains["b"]}
    with pytest.raises(ConfigError, match="holds a run with other settings"):  # a worker's error stops the pool
        demo.train_runs(other, jobs=2)


def test_kernels_are_built_beside_the_run_that_needs_them(tmp_path, monkeypatch):
    """Two at a time, plain's worker builds CBAM's kernels before it trains, while STN trains in the other;
    CBAM starts next, in STN's worker. One at a time, CBAM's run builds them itself."""
    seen = {}

    def train_runs(chains, **kw):
        seen["order"], seen["prepare"] = list(chains), kw["prepare"]
        return {v: ({"run_dir": str(tmp_path / v), "test_acc": 0.5, "params": 1, "epoch_time": 1.0}, "trained", 1.0)
                for v in chains}

    monkeypatch.setattr(demo, "train_runs", train_runs)
    argv = ["demo", "--out", str(tmp_path), "--no-localization", "--no-viz", "--no-progress", "--device", "cpu"]
    assert main(argv + ["--jobs", "2"]) == 0
    assert seen["order"] == ["stn", "plain", "cbam", "aacn"]
    assert list(seen["prepare"]) == ["plain"]
    build = seen["prepare"]["plain"]
    assert build.func is demo._build_kernels and build.args == (("convattn_cbam",),)
    assert main(argv + ["--jobs", "2", "--variants", "cbam,aacn"]) == 0
    assert seen["order"] == ["cbam", "aacn"] and seen["prepare"] == {}
    assert main(argv + ["--jobs", "1"]) == 0
    assert seen["prepare"] == {}


def test_threads_are_set_per_run_and_restored(tmp_path, fake_train, capsys):
    import torch

    before = torch.get_num_threads()
    seen = []
    real = demo.train_or_reuse

    def spy(cfg, *, force=False):
        seen.append(torch.get_num_threads())
        return real(cfg, force=force)

    demo.train_or_reuse, saved = spy, demo.train_or_reuse
    try:
        argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--train-size", "10", "--no-localization",
                "--no-viz", "--no-progress", "--variants", "plain,stn", "--jobs", "1", "--threads", "3"]
        assert main(argv) == 0
    finally:
        demo.train_or_reuse = saved
    assert seen == [3, 3] and torch.get_num_threads() == before
    assert "1 run(s) at a time, 3 thread(s) each" in capsys.readouterr().out
    assert main(argv[:-1] + ["-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
