"""``convattn demo``: a preset of compare; its table, reuse of runs, its options (training is faked).

The library it calls is tested in tests/experiments.
"""

import importlib
import json
import pathlib

import pytest

from convattn.cli import main
from convattn.experiments import demo as variants
from convattn.experiments import runs


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(config, *, resume=None):
        calls.append((config, resume))
        d = pathlib.Path(config.out)
        d.mkdir(parents=True, exist_ok=True)
        config.to_yaml(d / "config.yaml")
        acc = {"simple_cnn": 0.5, "stn_cnn": 0.7, "aacn": 0.8}[config.model] + (0.1 if config.attention else 0.0)
        res = {"status": "finished", "run_dir": str(d), "test_acc": acc, "params": 1234, "epoch_time": 1.5}
        (d / "results.json").write_text(json.dumps(res))
        return res

    import convattn.engine

    monkeypatch.setattr(convattn.engine, "train", train)
    monkeypatch.setattr(runs, "usable_cores", lambda: 1)  # one run at a time, in this process (the fake stays in place)
    return calls


def _row(out: str, variant: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {variant} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_demo_writes_compares_table_and_reuses_runs(tmp_path, fake_train, capsys):
    argv = ["demo", "--out", str(tmp_path), "--epochs", "2", "--train-size", "10", "--no-localization", "--no-viz",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(fake_train) == 5  # AACN's plain run, then AACN from it
    (plain_run, _), (aacn_run, _) = [c for c in fake_train if c[0].model in ("simple_cnn", "aacn") and c[0].epochs == 1]
    assert (plain_run.out, aacn_run.init_from) == (str(tmp_path / "_plain" / "e1-seed0"),) * 2
    assert aacn_run.out == str(tmp_path / "aacn" / "seed0")
    for v, acc, diff in (("plain", "50.00", "baseline"), ("cbam", "60.00", "+10.00"), ("stn", "70.00", "+20.00"),
                         ("aacn", "80.00", "+30.00")):
        row = _row(out, v)
        assert row[1:4] == ["1/1", acc, f"s0: {acc}"] and row[5] == diff and row[7] == "1.23k"
    assert (f"aacn seed 0: simple_cnn for the first 1 of the 2 epochs ({tmp_path / '_plain' / 'e1-seed0'}), "
            "then aacn from it (s/epoch: the last 1)") in out
    # compare's files: the same format as convattn compare
    table = json.loads((tmp_path / "compare.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["plain", "cbam", "stn", "aacn"] and table["seeds"] == [0]
    assert (tmp_path / "compare.md").read_text().startswith("| variant") and (tmp_path / "compare.csv").is_file()
    assert not (tmp_path / "compare.html").exists()  # --no-viz
    # a second run reuses the finished runs
    assert main(argv) == 0
    assert len(fake_train) == 5
    assert "reused finished runs: plain seed 0, cbam seed 0, stn seed 0, aacn seed 0" in capsys.readouterr().out
    # other settings in an existing run directory: that run fails (exit 1), unless --force
    assert main(argv[:-2] + ["--epochs", "3", "--no-progress", "--variants", "plain"]) == 1
    captured = capsys.readouterr()
    assert "other settings" in captured.err and "plain seed 0: failed" in captured.out
    assert main(argv + ["--epochs", "3", "--variants", "plain", "--force"]) == 0
    assert len(fake_train) == 6 and fake_train[-1][0].epochs == 3


def test_demo_seeds_and_bad_variants(tmp_path, fake_train, capsys):
    assert main(["demo", "--variants", "plain,foo", "--no-viz"]) == 2
    assert "--variants" in capsys.readouterr().err
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--train-size", "10", "--no-localization", "--no-viz",
            "--no-progress", "--variants", "stn,plain"]
    assert main(argv + ["--seeds", "2"]) == 0
    assert sorted((c.out.split("/")[-2], c.seed) for c, _ in fake_train) == [
        ("plain", 0), ("plain", 1), ("stn", 0), ("stn", 1)]
    out = capsys.readouterr().out
    assert _row(out, "plain")[3] == "s0: 50.00, s1: 50.00" and _row(out, "plain")[5].startswith("-20.00")  # stn: the baseline
    with pytest.raises(SystemExit) as exc:  # argparse's own refusal
        main(argv + ["--seeds", "2", "--seed", "3"])
    assert exc.value.code == 2 and "argument --seed: not allowed with argument --seeds" in capsys.readouterr().err


def test_demo_scores_localisation_once(tmp_path, fake_train, monkeypatch, capsys):
    """Every run is scored against the digit boxes, the scores land in results.json and are reused."""
    import convattn.eval

    scored = []

    def localize_run(run_dir, *, split, size, device, progress):
        run_dir = pathlib.Path(run_dir)
        scored.append((run_dir.parent.name, size))
        maps = {"Grad-CAM": {"kind": "grad-cam", "layer": "stages.2.conv", "images": size, "pointing": 0.9,
                             "energy": 0.5}}
        if run_dir.parent.name == "stn":
            maps["stn:window"] = {"kind": "window", "images": size, "pointing": 0.75, "energy": 0.25, "iou": 0.125}
        loc = {"dataset": "cluttered-digits", "split": split, "images": size, "image_size": [60, 60],
               "tolerance_px": 4.0, "box_share": 0.08, "pointing_chance": 0.17, "maps": maps}
        res = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**res, "localization": loc}))
        return loc

    monkeypatch.setattr(convattn.eval, "localize_run", localize_run)
    argv = ["demo", "--out", str(tmp_path), "--epochs", "2", "--train-size", "10", "--num-images", "7", "--no-viz",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # each run is scored after it trains, in the order they start
    assert scored == [("stn", 7), ("plain", 7), ("cbam", 7), ("aacn", 7)]
    window = next(line for line in out.splitlines() if "stn:window" in line)
    assert window.split()[-3:] == ["75.0", "25.0", "12.5"] and window.startswith("stn")
    assert "Grad-CAM (stages.2.conv)" in out and "7 test images" in out and "8.0%" in out
    # compare's table: the localisation columns (stn's window, the others' Grad-CAM)
    assert _row(out, "stn")[-2:] == ["75.00", "25.00"] and _row(out, "plain")[-2:] == ["90.00", "50.00"]
    assert main(argv) == 0  # finished runs keep their scores
    assert len(scored) == 4
    capsys.readouterr()
    # another sample: scored again; --loc-size, the old spelling, still works with a one-line warning
    assert main(argv[:7] + ["--loc-size", "9", "--no-viz", "--no-progress"]) == 0
    assert len(scored) == 8
    assert capsys.readouterr().err.count("--loc-size is deprecated; use --num-images") == 1
    assert main(argv[:7] + ["--num-images", "0"]) == 2
    assert "--num-images must be >= 1, got 0" in capsys.readouterr().err


def test_demo_draws_figures_and_writes_the_comparison_page(tmp_path, fake_train, monkeypatch, capsys):
    """Figures are drawn after each run where it trained; compare.html is written even where a run's pictures
    cannot be made (the fake runs have no checkpoint)."""
    drawn = []

    def draw_figures(res, *, count):
        drawn.append((pathlib.Path(res["run_dir"]).parent.name, count))
        return {**res, "figures": f"{count} figures"}

    monkeypatch.setattr(variants, "draw_figures", draw_figures)
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--train-size", "10", "--no-localization", "--no-progress",
            "--variants", "plain,stn"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert drawn == [("stn", 8), ("plain", 8)] and "stn seed 0: 8 figures" in out
    page = (tmp_path / "compare.html").read_text()
    assert "<title>convattn demo</title>" in page and page.count("<tr class='variant'>") == 2
    assert "plain: not drawn (CheckpointError" in page and f"{tmp_path / 'compare.html'}" in out


def test_kernels_are_built_beside_the_run_that_needs_them(tmp_path, monkeypatch):
    """Two at a time, plain's worker builds CBAM's kernels before it trains, while STN trains in the other;
    CBAM starts next, in STN's worker. One at a time, CBAM's run builds them itself."""
    seen = {}

    def train_runs(chains, **kw):
        seen["order"], seen["prepare"] = list(chains), kw["prepare"]
        return {k: ({"run_dir": str(tmp_path / k[0]), "test_acc": 0.5, "params": 1, "epoch_time": 1.0}, "trained", 1.0)
                for k in chains}

    monkeypatch.setattr(importlib.import_module("convattn.experiments.compare"), "train_runs", train_runs)
    argv = ["demo", "--out", str(tmp_path), "--no-localization", "--no-viz", "--no-progress", "--device", "cpu"]
    assert main(argv + ["--jobs", "2"]) == 0
    assert seen["order"] == [("stn", 0), ("plain", 0), ("cbam", 0), ("aacn", 0)]
    assert list(seen["prepare"]) == [("plain", 0)]
    build = seen["prepare"][("plain", 0)]
    assert build.func is variants.build_kernels and build.args == (("convattn_cbam",),)
    assert main(argv + ["--jobs", "2", "--variants", "cbam,aacn"]) == 0
    assert seen["order"] == [("cbam", 0), ("aacn", 0)] and seen["prepare"] == {}
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
