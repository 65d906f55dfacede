"""``convattn demo``: the comparison table, reuse of runs, its options (training is faked).

The library it calls is tested in tests/experiments.
"""

import json

import pytest

from convattn.cli import demo, main
from convattn.experiments import demo as variants
from convattn.experiments import runs


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
    monkeypatch.setattr(runs, "usable_cores", lambda: 1)  # one run at a time, in this process (the fake stays in place)
    return calls


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
    argv = ["demo", "--out", str(tmp_path), "--epochs", "2", "--train-size", "10", "--num-images", "7", "--no-viz",
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
    capsys.readouterr()
    # another sample: scored again; --loc-size, the old spelling, still works with a one-line warning
    assert main(argv[:7] + ["--loc-size", "9", "--no-viz", "--no-progress"]) == 0
    assert len(scored) == 8
    assert capsys.readouterr().err.count("--loc-size is deprecated; use --num-images") == 1
    assert main(argv[:7] + ["--num-images", "0"]) == 2
    assert "--num-images must be >= 1, got 0" in capsys.readouterr().err


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
    assert build.func is variants.build_kernels and build.args == (("convattn_cbam",),)
    assert main(argv + ["--jobs", "2", "--variants", "cbam,aacn"]) == 0
    assert seen["order"] == ["cbam", "aacn"] and seen["prepare"] == {}
    assert main(argv + ["--jobs", "1"]) == 0
    assert seen["prepare"] == {}


def test_threads_are_set_per_run_and_restored(tmp_path, fake_train, capsys):
    import torch

    before = torch.get_num_threads()
    seen = []
    real = runs.train_or_reuse

    def spy(cfg, *, force=False):
        seen.append(torch.get_num_threads())
        return real(cfg, force=force)

    runs.train_or_reuse, saved = spy, runs.train_or_reuse
    try:
        argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--train-size", "10", "--no-localization",
                "--no-viz", "--no-progress", "--variants", "plain,stn", "--jobs", "1", "--threads", "3"]
        assert main(argv) == 0
    finally:
        runs.train_or_reuse = saved
    assert seen == [3, 3] and torch.get_num_threads() == before
    assert "1 run(s) at a time, 3 thread(s) each" in capsys.readouterr().out
    assert main(argv[:-1] + ["-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err


def test_demo_out_onto_a_file_is_refused_before_training(tmp_path, fake_train, capsys):
    (tmp_path / "taken").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "taken"), "--no-viz"]) == 2
    err = capsys.readouterr().err
    assert err == f"convattn demo: error: --out {tmp_path / 'taken'} is a file, expected a directory\n"
    assert fake_train == [] and (tmp_path / "taken").read_text() == "mine"
