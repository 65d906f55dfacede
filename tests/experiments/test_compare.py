"""``convattn compare`` / ``convattn.experiments.compare``: variants × seeds, reuse, failed runs, the paired
interval, the grouped table of ``convattn report``."""

import csv
import json
import math
import pathlib

import pytest
import yaml

import convattn.engine
from convattn.cli import main
from convattn.cli.compare import variant_fields
from convattn.engine import TrainConfig
from convattn.exceptions import ConfigError, RunDivergedError
from convattn.experiments import (
    compare,
    comparison_table,
    parse_seeds,
    paired_interval,
    records_from_runs,
    runs,
    t_quantile,
    table_markdown,
)
from convattn.experiments.stats import T975

TINY = ["--model", "simple_cnn", "--dataset", "digits", "--train-size", "64", "--val-size", "32", "--test-size", "32",
        "--epochs", "1", "--image-size", "16", "--batch-size", "32", "--jobs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real compare: simple_cnn plain and with SE, seeds 0 and 1, and a variant whose layer does not exist."""
    out = tmp_path_factory.mktemp("cmp")
    argv = ["compare", *TINY, "--attention", "none,se", "--variant", "bad:--attention nosuchlayer", "--seeds", "2",
            "--out", str(out)]
    status = main(argv)
    return out, argv, status


def test_tiny_compare_writes_one_table_and_reports_the_failed_run(tiny, capsys):
    out, _, status = tiny
    assert status == 1  # a run did not finish
    table = json.loads((out / "compare.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["none", "se", "bad"] and table["baseline"] == "none"
    none, se, bad = table["rows"]
    assert [r["seed"] for r in none["runs"]] == [0, 1] and none["finished"] == se["finished"] == 2
    accs = [r["test_acc"] for r in se["runs"]]
    assert se["test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert se["test_acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    diffs = [a["test_acc"] - b["test_acc"] for a, b in zip(se["runs"], none["runs"])]
    assert se["diff"]["mean"] == pytest.approx(sum(diffs) / 2) and se["diff"]["n"] == 2
    assert se["params"] > none["params"] > 0 and none["flops"] > 0 and se["epoch_time"] > 0 and se["images_per_s"] > 0
    assert none["diff"] is None and none["best_val_acc"]["mean"] is not None
    # the failed variant: in the table as failed, no accuracy, the others finished
    assert bad["finished"] == 0 and [r["status"] for r in bad["runs"]] == ["failed", "failed"]
    assert "nosuchlayer" in bad["runs"][0]["reason"] and bad["test_acc"]["mean"] is None
    md = (out / "compare.md").read_text()
    assert "s0: failed, s1: failed" in md and "baseline" in md and "within noise" in md
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["variant"] for r in rows] == ["none", "se", "bad"] and rows[1]["verdict"] == se["diff"]["verdict"]
    assert rows[2]["test_acc_per_seed"] == "0:failed;1:failed"
    page = (out / "compare.html").read_text()
    # curves, accuracy against cost and the gallery (none and se drawn; bad named: it has no finished run)
    assert page.count("<tr class='variant'>") == 3 and page.count("data:image/png;base64") == 3
    assert "Attention gallery" in page and "bad: no finished run" in page
    # each run describes itself
    res = json.loads((out / "se" / "seed1" / "results.json").read_text())
    assert {k: res[k] for k in ("model", "attention", "placement", "weights", "dataset", "seed", "status")} == {
        "model": "simple_cnn", "attention": "se", "placement": None, "weights": None, "dataset": "digits", "seed": 1,
        "status": "finished"}


def test_running_again_reuses_every_finished_run(tiny, monkeypatch, capsys):
    out, argv, _ = tiny
    first = json.loads((out / "compare.json").read_text())

    def no_training(config, *, resume=None):
        if config.attention != "nosuchlayer":
            raise AssertionError(f"{config.out} was trained again")
        raise ConfigError("unknown attention layer 'nosuchlayer'")

    monkeypatch.setattr(convattn.engine, "train", no_training)
    assert main(argv[:-2] + ["--out", str(out), "--no-html"]) == 1
    text = capsys.readouterr().out
    assert "reused 4 finished run(s)" in text and "bad seed 0: failed" in text
    again = json.loads((out / "compare.json").read_text())
    assert [r["how"] for row in again["rows"][:2] for r in row["runs"]] == ["reused"] * 4
    assert [row["test_acc"] for row in again["rows"]] == [row["test_acc"] for row in first["rows"]]


def test_report_groups_the_same_runs_into_the_same_table(tiny):
    out, _, _ = tiny
    dirs = [out / v / f"seed{s}" for v in ("none", "se") for s in (0, 1)]
    grouped = comparison_table(records_from_runs(dirs))
    made = json.loads((out / "compare.json").read_text())
    assert [r["variant"] for r in grouped["rows"]] == ["none", "se"]
    for g, m in zip(grouped["rows"], made["rows"]):
        assert g["test_acc"] == pytest.approx(m["test_acc"]) and g["flops"] == m["flops"]
        assert (g["diff"] or {}).get("low") == pytest.approx((m["diff"] or {}).get("low"))


def _fake_run(path, **fields):
    path.mkdir(parents=True)
    TrainConfig(**{k: v for k, v in fields.items() if k != "test_acc"}).to_yaml(path / "config.yaml")
    (path / "results.json").write_text(json.dumps({"status": "finished", "test_acc": fields["test_acc"]}))
    return path


def test_report_grouping_falls_back_to_config_yaml_and_names_what_differs(tmp_path):
    dirs = [_fake_run(tmp_path / f"r{i}", model=m, attention=a, seed=s, test_acc=acc)
            for i, (m, a, s, acc) in enumerate([("simple_cnn", None, 0, 0.5), ("simple_cnn", None, 1, 0.6),
                                                ("gated_cnn", "se", 0, 0.7), ("gated_cnn", "se", 1, 0.9)])]
    table = comparison_table(records_from_runs(dirs, flops=False))
    assert [r["variant"] for r in table["rows"]] == ["simple_cnn none", "gated_cnn se"]
    assert table["rows"][1]["diff"]["mean"] == pytest.approx(0.25)
    assert table["rows"][0]["test_acc"]["mean"] == pytest.approx(0.55)
    # runs that differ in another result setting are other variants, named by it
    dirs += [_fake_run(tmp_path / f"id{s}", model="gated_cnn", attention="se", seed=s, test_acc=0.8,
                       model_kwargs={"identity_init": True}) for s in (0, 1)]
    table = comparison_table(records_from_runs(dirs, flops=False), baseline="gated_cnn se model_kwargs={}")
    assert [r["variant"] for r in table["rows"]] == [
        "simple_cnn none model_kwargs={}", "gated_cnn se model_kwargs={}",
        'gated_cnn se model_kwargs={"identity_init": true}']
    assert [r["finished"] for r in table["rows"]] == [2, 2, 2] and table["rows"][2]["diff"]["mean"] == pytest.approx(0.0)


def test_paired_interval_against_a_hand_computation():
    variant, baseline = [0.71, 0.74, 0.69, 0.73], [0.70, 0.71, 0.70, 0.70]
    # differences 0.01, 0.03, -0.01, 0.03: mean 0.015, sd sqrt(0.0011 / 3), t(0.975, 3 dof) = 3.1824
    half = 3.1824 * math.sqrt(0.0011 / 3) / 2
    d = paired_interval(variant, baseline)
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.015)
    assert (d["low"], d["high"]) == pytest.approx((0.015 - half, 0.015 + half), abs=1e-5)
    assert (d["low"], d["high"]) == pytest.approx((-0.01547, 0.04547), abs=1e-5) and d["verdict"] == "within noise"
    assert paired_interval([0.8, 0.82, 0.81], [0.7, 0.71, 0.72])["verdict"] == "better"
    assert paired_interval([0.6, 0.62, 0.61], [0.7, 0.71, 0.72])["verdict"] == "worse"
    assert paired_interval([0.6], [0.7])["verdict"] == "one seed" and paired_interval([], [])["verdict"] == "no pairs"
    # the quantiles: the table up to 29 degrees of freedom, the expansion past it, both as scipy computes them
    assert [t_quantile(n) for n in range(1, 30)] == list(T975)
    stats = pytest.importorskip("scipy.stats", reason="scipy checks the quantiles")
    assert [t_quantile(n) for n in range(1, 30)] == pytest.approx([stats.t.ppf(0.975, n) for n in range(1, 30)], abs=1e-4)
    assert [t_quantile(n) for n in range(30, 300)] == pytest.approx([stats.t.ppf(0.975, n) for n in range(30, 300)], abs=1e-5)
    with pytest.raises(ValueError, match="dof >= 1, got 0"):
        t_quantile(0)


@pytest.fixture
def fake_train(monkeypatch):
    """``convattn.engine.train`` writing results at once: accuracy 0.5 + 0.1·seed (+0.05 with attention); a run
    whose lr is 0.123 raises, one whose lr is 0.321 diverges."""
    calls = []

    def train(config, *, resume=None):
        calls.append(config)
        if config.lr == 0.123:
            raise RuntimeError("boom\nsecond line")
        if config.lr == 0.321:
            raise RunDivergedError("training diverged at step 3")
        from pathlib import Path

        d = Path(config.out)
        d.mkdir(parents=True, exist_ok=True)
        config.to_yaml(d / "config.yaml")
        res = {"status": "finished", "run_dir": str(d), "test_acc": 0.5 + 0.1 * config.seed + 0.05 * bool(config.attention),
               "best_val_acc": 0.4, "params": 10, "epoch_time": 1.0, "images_per_s": 100.0}
        (d / "results.json").write_text(json.dumps(res))
        return res

    monkeypatch.setattr(convattn.engine, "train", train)
    return calls


def test_library_compare_keeps_going_past_failed_and_diverged_runs(tmp_path, fake_train, capsys):
    variants = {"plain": {}, "se": {"attention": "se"}, "boom": {"lr": 0.123}, "nan": {"lr": 0.321}}
    seen = []
    table = compare(variants, seeds=[0, 3], out=tmp_path, baseline="se", jobs=1, model="simple_cnn",
                    dataset="digits", epochs=1, on_done=lambda v, s, res, how, secs: seen.append((v, s, how)))
    assert [(c.out.split("/")[-2], c.seed) for c in fake_train] == [
        ("plain", 0), ("se", 0), ("boom", 0), ("nan", 0), ("plain", 3), ("se", 3), ("boom", 3), ("nan", 3)]
    assert ("boom", 3, "failed") in seen and len(seen) == 8
    rows = {r["variant"]: r for r in table["rows"]}
    assert table["baseline"] == "se" and rows["se"]["diff"] is None
    assert rows["plain"]["diff"]["mean"] == pytest.approx(-0.05) and rows["plain"]["diff"]["verdict"] == "worse"
    assert [r["status"] for r in rows["boom"]["runs"]] == ["failed"] * 2
    assert rows["boom"]["runs"][0]["reason"] == "RuntimeError: boom"
    assert [r["status"] for r in rows["nan"]["runs"]] == ["diverged"] * 2
    assert "s0: diverged, s3: diverged" in table_markdown(table)
    assert {p.rsplit("/", 1)[-1] for p in table["files"]} == {"compare.md", "compare.csv", "compare.json"}


def test_compare_refuses_what_it_sets_itself_and_bad_names(tmp_path, fake_train):
    with pytest.raises(ConfigError, match="compare sets seed itself"):
        compare(["none"], seeds=1, out=tmp_path, seed=3)
    with pytest.raises(ConfigError, match="variant x: compare sets out itself"):
        compare({"x": {"out": "elsewhere"}}, seeds=1, out=tmp_path)
    with pytest.raises(ConfigError, match="folder name"):
        compare({"a/b": {}}, seeds=1, out=tmp_path)
    with pytest.raises(ConfigError, match=r"--baseline must name a variant \(none, se\), got 'cbam'"):
        compare(["none", "se"], seeds=1, out=tmp_path, baseline="cbam")
    with pytest.raises(ConfigError, match="unknown"):
        compare(["none"], seeds=1, out=tmp_path, lrr=0.1)
    assert fake_train == []


def test_seeds_and_variant_flags_parse_like_train(tmp_path, capsys):
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,3,7") == [0, 3, 7] and parse_seeds("5,") == [5]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(ConfigError, match="--seeds expects"):
            parse_seeds(bad)
    assert variant_fields("cbam-id", "--attention cbam --model-kwargs identity_init=true --lr 0.01") == {
        "attention": "cbam", "model_kwargs": {"identity_init": True}, "lr": 0.01}
    with pytest.raises(ConfigError, match="--variant x: .*--lr expects float, got 'abc'"):
        variant_fields("x", "--lr abc")
    with pytest.raises(ConfigError, match="--variant x: unrecognized arguments: --nope"):
        variant_fields("x", "--nope 1")
    assert main(["compare", "--variant", "x:--lr abc", "--out", str(tmp_path)]) == 2
    assert "error: --variant x:" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path)]) == 2
    assert "expected variants" in capsys.readouterr().err


def test_variants_file_mixes_fields_and_flags(tmp_path, fake_train, capsys):
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump({"plain": None, "cbam-id": "--attention cbam --model-kwargs identity_init=true",
                                    "se": {"attention": "se", "attn_kwargs": {"rd_ratio": 0.25}}}))
    assert main(["compare", "--variants", str(path), "--seeds", "1", "--baseline", "se", "--model", "simple_cnn",
                 "--epochs", "1", "--jobs", "1", "--out", str(tmp_path / "o"), "--no-html"]) == 0
    by = {c.out.split("/")[-2]: c for c in fake_train}
    assert by["cbam-id"].attention == "cbam" and by["cbam-id"].model_kwargs == {"identity_init": True}
    assert by["se"].attn_kwargs == {"rd_ratio": 0.25} and by["plain"].attention is None
    assert {c.epochs for c in fake_train} == {1} and {c.model for c in fake_train} == {"simple_cnn"}
    assert "| se " in capsys.readouterr().out


def test_a_folder_holding_only_a_failed_runs_marker_takes_a_new_run(tmp_path, fake_train):
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text('{"format": "convattn.run/1"}\n')
    (run / "run.lock").write_text("pid 1\n")
    assert runs.train_or_reuse(TrainConfig(epochs=1, out=str(run)))[1] == "trained"


def test_an_interrupted_run_is_resumed_and_a_finished_one_reused(tmp_path, fake_train):
    compare(["none"], seeds=1, out=tmp_path, jobs=1, model="simple_cnn", epochs=1)
    run = tmp_path / "se" / "seed0"
    run.mkdir(parents=True)
    fake_train[0].replace(attention="se", out=str(run)).to_yaml(run / "config.yaml")
    (run / "last.pt").write_bytes(b"")
    (run / "results.json").write_text(json.dumps({"status": "interrupted", "run_dir": str(run)}))
    planned = compare(["none", "se"], seeds=1, out=tmp_path, jobs=1, model="simple_cnn", epochs=1, dry_run=True)
    assert [r["state"] for r in planned] == ["finished", "interrupted"] and planned[1]["argv"][-2:] == ["--resume", str(run)]
    table = compare(["none", "se"], seeds=1, out=tmp_path, jobs=1, model="simple_cnn", epochs=1)
    assert [r["runs"][0]["how"] for r in table["rows"]] == ["reused", "resumed"] and len(fake_train) == 2


def test_localisation_columns_appear_when_runs_have_scores():
    def loc(p):
        return {"maps": {"Grad-CAM": {"kind": "grad-cam", "pointing": 0.1, "energy": 0.1},
                         "1:spatial": {"kind": "spatial", "pointing": p, "energy": p / 2}}}

    records = [{"variant": v, "seed": s, "status": "finished", "test_acc": 0.5, "localization": loc(p)}
               for v, s, p in (("plain", 0, 0.2), ("plain", 1, 0.4), ("cbam", 0, 0.6), ("cbam", 1, 0.8))]
    table = comparison_table(records)
    assert table["rows"][1]["localization"] == {"map": "1:spatial", "pointing": pytest.approx(0.7),
                                                "energy": pytest.approx(0.35)}
    md = table_markdown(table)
    assert "pointing %" in md and "| 70.00 " in md and "| 35.00 " in md
    assert "pointing %" not in table_markdown(comparison_table([{**r, "localization": None} for r in records]))


def _train_config(argv):
    """The TrainConfig ``convattn train`` resolves from a dry-run line's argv (``convattn train ...``)."""
    from convattn.cli import build_parser
    from convattn.cli.train import config_and_sources

    assert argv[:2] == ["convattn", "train"]
    return config_and_sources(build_parser().parse_args(argv[1:]))[0]


def test_train_argv_round_trips_awkward_values():
    from convattn.engine.recipes import resolve_config
    from convattn.experiments import train_argv

    fields = {"model": "simple_cnn", "attention": "se", "attn_kwargs": {"rd_ratio": 0.25, "act_layer": "gelu", "x": "1"},
              "model_kwargs": {}, "freeze": ["backbone", "head"], "lr": 0.1, "clip_grad": None, "augment": False,
              "stages": [{"name": "a b", "epochs": 1, "train": ["attention"]}], "data_dir": "my data/x", "nesterov": True}
    assert _train_config(train_argv(fields)) == resolve_config(fields)[0]


def test_dry_run_lists_train_commands_that_resolve_to_the_same_configs(tiny, tmp_path, monkeypatch, capsys):
    import shlex
    import shutil

    from convattn.experiments import compare_configs

    out = tmp_path / "cmp"
    shutil.copytree(tiny[0], out)
    monkeypatch.setattr(convattn.engine, "train", lambda *a, **k: pytest.fail("a dry run trained"))
    ident = "--attention cbam --model-kwargs identity_init=true --attn-kwargs rd_ratio=0.5 --lr-mult attention=10"
    assert main(["compare", *TINY, "--attention", "none,se", "--variant", f"id:{ident}", "--seeds", "2",
                 "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr()
    lines = text.out.splitlines()
    assert len(lines) == 6 and "6 runs, 2 to train or resume; nothing trained" in text.err
    assert [ln.rsplit("# ", 1)[1] for ln in lines[:3]] == [
        "none seed 0: finished, reused (nothing to do)", "se seed 0: finished, reused (nothing to do)", "id seed 0: to train"]
    specs = {"none": {"attention": None}, "se": {"attention": "se"}, "id": variant_fields("id", ident)}
    shared = {"model": "simple_cnn", "dataset": "digits", "train_size": 64, "val_size": 32, "test_size": 32, "epochs": 1,
              "image_size": 16, "batch_size": 32, "progress": False, "tensorboard": False}
    expected = compare_configs(specs, [0, 1], out=out, **shared)
    planned = compare(specs, seeds=2, out=out, jobs=1, dry_run=True, **shared)
    assert [(r["variant"], r["seed"], r["state"]) for r in planned] == [(v, s, st) for s in (0, 1) for v, st in (
        ("none", "finished"), ("se", "finished"), ("id", "new"))]
    for line, r in zip(lines, planned):
        argv = shlex.split(line, comments=True)
        assert argv == r["argv"] and r["out"] == str(out / r["variant"] / f"seed{r['seed']}")
        assert [_train_config(argv)] == expected[(r["variant"], r["seed"])] and r["stage"] == "variant"
    assert expected[("id", 1)][0].model_kwargs == {"identity_init": True} and expected[("id", 1)][0].epochs == 1
    assert planned[0]["argv"][-2:] == ["--resume", planned[0]["out"]] and "--resume" not in planned[2]["argv"]


def test_collect_builds_the_same_table_from_the_run_folders(tiny, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "elsewhere"
    shutil.copytree(tiny[0], out)
    made = json.loads((out / "compare.json").read_text())
    printed = (out / "compare.md").read_text()
    monkeypatch.setattr(convattn.engine, "train", lambda *a, **k: pytest.fail("collect trained"))
    assert main(["compare", "--collect", str(out)]) == 1  # bad did not finish
    assert capsys.readouterr().out.startswith(printed.strip()) and (out / "compare.html").is_file()
    assert "nosuchlayer" in json.loads((out / "compare.json").read_text())["rows"][2]["runs"][0]["reason"]
    # without the compare.json of a compare (runs made by other means): variants by name, the baseline named
    (out / "compare.json").unlink()
    table = convattn.experiments.collect(out, baseline="none")
    assert [r["variant"] for r in table["rows"]] == ["bad", "none", "se"] and table["baseline"] == "none"
    for key in ("test_acc", "best_val_acc", "diff", "params", "flops", "epoch_time", "images_per_s", "finished"):
        assert {r["variant"]: r[key] for r in table["rows"]} == {r["variant"]: r[key] for r in made["rows"]}
    assert [r["status"] for r in table["rows"][0]["runs"]] == ["failed", "failed"]
    # any layout: grouped by what each run is; an interrupted run shows as such
    flat = tmp_path / "flat"
    for v, s in (("none", 0), ("none", 1), ("se", 0), ("se", 1)):
        shutil.copytree(out / v / f"seed{s}", flat / "x" / f"{v}-{s}")
    res = json.loads((flat / "x" / "se-1" / "results.json").read_text())
    (flat / "x" / "se-1" / "results.json").write_text(json.dumps({**res, "status": "interrupted"}))
    table = convattn.experiments.collect(flat, flops=False)
    assert [r["variant"] for r in table["rows"]] == ["none", "se"] and (flat / "compare.md").is_file()
    assert table["rows"][0]["test_acc"] == made["rows"][0]["test_acc"]
    assert [r["status"] for r in table["rows"][1]["runs"]] == ["finished", "interrupted"]
    with pytest.raises(ConfigError, match="--collect expects run directories .* found none"):
        convattn.experiments.collect(_empty(tmp_path), flops=False)
    assert main(["compare", "--collect", str(out), "--lr", "0.1"]) == 2
    assert "expected no variants or train flags, got --lr" in capsys.readouterr().err


def _empty(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    return tmp_path / "empty"


def test_from_plain_variants_share_their_plain_run_which_is_no_variant(tmp_path, fake_train, capsys):
    """Two variants starting from a plain run share it per seed: trained once, first, then each from it; the
    table and --collect show the variants only."""
    variants = {"plain": {}, "se-from": {"attention": "se", "from_plain": True},
                "eca-from": {"attention": "eca", "from_plain": True}}
    table = compare(variants, seeds=[0, 1], out=tmp_path, jobs=1, model="simple_cnn", dataset="digits", epochs=3)
    plain_runs = [c for c in fake_train if "/_plain/" in c.out]
    assert [(c.out, c.epochs, c.attention) for c in plain_runs] == [
        (str(tmp_path / "_plain" / "e2-seed0"), 2, None), (str(tmp_path / "_plain" / "e2-seed1"), 2, None)]
    assert fake_train.index(plain_runs[1]) == 1  # the shared plain runs train before any variant
    own = {(c.out.split("/")[-2], c.seed): c for c in fake_train if "/_plain/" not in c.out}
    assert own[("se-from", 1)].init_from == str(tmp_path / "_plain" / "e2-seed1") and own[("se-from", 1)].epochs == 1
    assert own[("plain", 0)].epochs == 3 and own[("plain", 0)].init_from is None and len(fake_train) == 8
    assert [r["variant"] for r in table["rows"]] == ["plain", "se-from", "eca-from"]
    assert [r["how"] for r in table["rows"][1]["runs"]] == ["reused+trained"] * 2
    assert "plain run of se-from, eca-from seed 0: trained" in capsys.readouterr().err
    collected = convattn.experiments.collect(tmp_path, flops=False)
    assert [r["variant"] for r in collected["rows"]] == ["plain", "se-from", "eca-from"]
    assert [r["test_acc"] for r in collected["rows"]] == [r["test_acc"] for r in table["rows"]]
    # a dry run lists each plain run once, before the variants that start from it
    planned = compare(variants, seeds=[0], out=tmp_path / "new", jobs=1, model="simple_cnn", epochs=3, dry_run=True)
    assert [(r["variant"], r["stage"], str(pathlib.Path(r["out"]).relative_to(tmp_path))) for r in planned] == [
        ("plain", "variant", "new/plain/seed0"), ("se-from", "plain run", "new/_plain/e2-seed0"),
        ("se-from", "variant", "new/se-from/seed0"), ("eca-from", "variant", "new/eca-from/seed0")]
    assert planned[2]["argv"][planned[2]["argv"].index("--init-from") + 1] == str(tmp_path / "new" / "_plain" / "e2-seed0")
    with pytest.raises(ConfigError, match="variant x starts from a plain run: it needs epochs >= 2"):
        compare({"x": {"from_plain": True}}, seeds=1, out=tmp_path, epochs=1)
    with pytest.raises(ConfigError, match="variant x: from_plain expects true or false, got 'yes'"):
        compare({"x": {"from_plain": "yes"}}, seeds=1, out=tmp_path)


def test_a_failed_shared_plain_run_fails_the_variants_that_start_from_it(tmp_path, fake_train):
    variants = {"plain": {}, "a": {"attention": "se", "from_plain": True}, "b": {"attention": "eca", "from_plain": True}}
    table = compare(variants, seeds=1, out=tmp_path, jobs=1, model="simple_cnn", lr=0.123, epochs=2)
    assert [[r["status"] for r in row["runs"]] for row in table["rows"]] == [["failed"]] * 3
    assert table["rows"][1]["runs"][0]["reason"] == "its plain run failed: RuntimeError: boom"
    assert len(fake_train) == 2  # the plain variant and the shared plain run, nothing from it


def test_hooks_start_order_and_localisation_pass_through(tmp_path, fake_train, monkeypatch):
    """prepare runs before each run of its variant, after after each variant's run (not a plain run), runs
    start in the order asked for and the table keeps the given order; data with boxes gets its maps scored."""
    import functools

    import convattn.eval

    scored = []

    def localize_run(run_dir, *, split, size, device, progress):
        scored.append((run_dir.split("/")[-2], size))
        return {"split": split, "images": size, "maps": {"1:spatial": {"kind": "spatial", "pointing": 0.5, "energy": 0.25}}}

    monkeypatch.setattr(convattn.eval, "localize_run", localize_run)
    events = []
    prepare = {"b": functools.partial(events.append, "prepare b")}
    table = compare({"a": {}, "b": {"attention": "se"}, "c": {"attention": "eca", "from_plain": True}}, seeds=1,
                    out=tmp_path, jobs=1, model="simple_cnn", dataset="cluttered-digits", epochs=2, localize=7,
                    start=["c", "b"], prepare=prepare, after=lambda res: {**res, "figures": events.append(res["run_dir"])})
    assert [c.out.split("/")[-2] for c in fake_train] == ["_plain", "c", "b", "a"]
    assert events == [str(tmp_path / "c" / "seed0"), "prepare b", str(tmp_path / "b" / "seed0"), str(tmp_path / "a" / "seed0")]
    assert scored == [("c", 7), ("b", 7), ("a", 7)]
    assert [r["variant"] for r in table["rows"]] == ["a", "b", "c"] and table["baseline"] == "a"
    assert table["rows"][2]["localization"] == {"map": "1:spatial", "pointing": 0.5, "energy": 0.25}
    assert "pointing %" in (tmp_path / "compare.md").read_text()
    # data without boxes: nothing scored; localize=0: nothing scored either
    compare(["none"], seeds=1, out=tmp_path / "d", jobs=1, model="simple_cnn", dataset="digits", epochs=1)
    compare(["none"], seeds=1, out=tmp_path / "e", jobs=1, model="simple_cnn", dataset="cluttered-digits", epochs=1,
            localize=0)
    assert len(scored) == 3
    with pytest.raises(ConfigError, match=r"start and prepare must name variants \(a\), got 'z'"):
        compare({"a": {}}, seeds=1, out=tmp_path, start=["z"])


def test_gallery_shows_each_variants_attention_in_the_images_frame(tmp_path):
    """CBAM's spatial map (the one asked for, else its first); for a model recording none (a spatial transformer
    in front of a plain CNN), Grad-CAM carried back onto the input; the page names a run it cannot draw."""
    import numpy as np

    from convattn.engine import train
    from convattn.experiments import table_cells, table_note
    from convattn.viz.compare import variant_attention, write_compare_page

    tiny = {"dataset": "cluttered-digits", "train_size": 32, "val_size": 16, "test_size": 16, "image_size": 28,
            "epochs": 1, "batch_size": 16, "progress": False, "tensorboard": False}
    cbam = train(TrainConfig(model="simple_cnn", attention="cbam", out=str(tmp_path / "cbam"), **tiny))["run_dir"]
    stn = train(TrainConfig(model="stn_cnn", out=str(tmp_path / "stn"), **tiny))["run_dir"]
    images, maps, what = variant_attention(cbam, 3)
    assert images.shape == (3, 28, 28, 3) and maps.shape == (3, 28, 28) and what == "stages.0.attn:spatial"
    assert 0.0 <= maps.min() and maps.max() <= 1.0  # the sigmoid gate's own values
    again, _, named = variant_attention(cbam, 3, prefer="stages.1.attn:spatial")
    assert named == "stages.1.attn:spatial" and np.array_equal(again, images)  # the same test images
    _, cams, what = variant_attention(stn, 3)
    assert what.startswith("Grad-CAM at classifier.") and what.endswith("carried back through stn") and cams.shape == (3, 28, 28)
    rows = [{"variant": "cbam", "run_dir": cbam}, {"variant": "stn", "run_dir": stn},
            {"variant": "gone", "run_dir": str(tmp_path / "gone")}]
    table = comparison_table([{**r, "seed": 0, "status": "finished", "test_acc": 0.5} for r in rows])
    page = write_compare_page(table, tmp_path / "compare.html", cells=table_cells(table), note=table_note(table)).read_text()
    assert page.count("data:image/png;base64") == 3 and "gone: not drawn (CheckpointError" in page
