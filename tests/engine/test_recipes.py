"""Per-model recipes, config provenance, stages that run once, and ``init_from``."""

import pytest
import torch

from convattn.engine import TrainConfig, save_checkpoint
from convattn.engine.recipes import get_recipe, resolve_config
from convattn.engine.build import init_from_run
from convattn.engine.stages import StagePlan
from convattn.exceptions import ConfigError
from convattn.models import create_model


def test_precedence_recipe_file_flag_and_sources():
    cfg, src = resolve_config({"model": "gated_cnn", "lr": 0.01}, file_fields={"batch_size": 8}, file_name="run.yaml")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.seed) == ("adamw", 0.01, 8, 1e-4, 0)
    assert src["optimizer"] == "recipe gated_cnn/default" and src["lr"] == "flag"
    assert src["batch_size"] == "config file run.yaml" and src["seed"] == "default"
    assert cfg.recipe == "default" and src["recipe"] == "recipe gated_cnn/default"

    bare, src = resolve_config({"model": "gated_cnn", "recipe": "none"})
    assert bare.to_dict() == TrainConfig(model="gated_cnn").to_dict() and src["optimizer"] == "default"
    # models without a recipe train with the defaults
    assert resolve_config({"model": "danet_resnet50"})[0].recipe is None
    with pytest.raises(ConfigError, match="model 'gated_cnn' has no recipe 'staged'; it has default"):
        resolve_config({"model": "gated_cnn", "recipe": "staged"})


def test_mappings_merge_key_by_key():
    cfg, src = resolve_config({"model": "stn_cnn", "lr_mult": {"head": 2.0}})
    assert cfg.lr_mult == {"localization": 0.1, "head": 2.0}
    assert src["lr_mult"] == "recipe stn_cnn/default + flag"
    assert resolve_config({"model": "stn_cnn", "lr_mult": {"localization": 0.5}})[0].lr_mult == {"localization": 0.5}
    # resnet18's stem follows the images' size
    assert resolve_config({"model": "resnet18", "dataset": "digits"})[0].model_kwargs == {"small_input": True}
    big = resolve_config({"model": "resnet18", "dataset": "digits", "image_size": 96})[0]
    assert big.model_kwargs == {} and big.lr == 0.1 and big.batch_size == 128


def test_aacn_staged_recipe_shares_the_epoch_budget():
    stages = resolve_config({"model": "aacn", "epochs": 6})[0].stages
    assert [(s["name"], s["epochs"], s["train"]) for s in stages] == [
        ("features", 4, ["backbone", "decision"]), ("attention", 1, ["attention", "decision"]),
        ("decision", 1, ["backbone", "decision"])]
    assert stages[0]["once"] and stages[1]["alpha"] > 0 and stages[2]["alpha"] == 0
    assert resolve_config({"model": "aacn"})[0].model_kwargs == {"attn_stages": [-1]}
    heads = create_model("aacn", num_classes=10, in_chans=1, **get_recipe("aacn", "staged", {})["model_kwargs"]).heads
    assert list(heads) == ["stage3"]
    cfg = resolve_config({"model": "aacn", "epochs": 2, "init_from": "runs/plain"})[0]
    assert [s["name"] for s in cfg.stages] == ["attention", "decision"] and cfg.stage_mode == "alternate"
    assert get_recipe("aacn", "joint")["optimizer"] == "adamw" and "stages" not in get_recipe("aacn", "joint")


def test_small_cnn_recipes_train_channels_last():
    for model in ("simple_cnn", "gated_cnn", "stn_cnn", "aacn"):
        cfg, src = resolve_config({"model": model})
        assert cfg.channels_last and src["channels_last"] == f"recipe {model}/{cfg.recipe}"
    assert not resolve_config({"model": "simple_cnn", "channels_last": False})[0].channels_last


def test_once_stages_run_in_the_first_cycle_only():
    stages = [{"name": "f", "epochs": 2, "once": True}, {"name": "a", "epochs": 1}, {"name": "d", "epochs": 1}]
    plan = StagePlan(stages, mode="alternate", patience=2, max_epochs=20)
    seen = []
    for loss in [5, 4, 3, 2, 2.5, 2.5, 2.5]:
        seen.append(plan.current["name"])
        plan.end_epoch(loss)
        if plan.done:
            break
    # f f (best 4) a (3) d (2) a (worse: 1) d (worse: 2 -> stop)
    assert seen == ["f", "f", "a", "d", "a", "d"] and plan.done
    with pytest.raises(ConfigError, match="once: true must come before"):
        TrainConfig(stages=[{"epochs": 1}, {"epochs": 1, "once": True}])
    with pytest.raises(ConfigError, match="at least one stage without once"):
        TrainConfig(stages=[{"epochs": 1, "once": True}], stage_mode="alternate")


def _run(tmp_path, name, model):
    path = tmp_path / name
    path.mkdir()
    save_checkpoint({"model": model.state_dict(), "epoch": 3, "config": {"model": name}}, path / "last.pt")
    return path


def test_init_from_a_plain_run_into_its_attention_variants(tmp_path):
    torch.manual_seed(0)
    plain = create_model("simple_cnn", num_classes=3, in_chans=1, widths=(4, 8))
    run = _run(tmp_path, "simple_cnn", plain)

    eca = create_model("simple_cnn", num_classes=3, in_chans=1, widths=(4, 8), attention="eca", identity_init=True)
    report = init_from_run(eca, run)
    assert report["epochs"] == 3 and report["loaded"] == sorted(plain.state_dict())
    assert report["new"] and all(".attn." in k for k in report["new"])
    x = torch.randn(2, 1, 12, 12)
    assert torch.allclose(eca.eval()(x), plain.eval()(x), atol=1e-6)  # identity-initialised layers: same outputs

    aacn = create_model("aacn", num_classes=3, in_chans=1, backbone_kwargs={"widths": (4, 8)})
    report = init_from_run(aacn, run)
    assert {k.split(".")[0] for k in report["new"]} == {"heads", "fc_attention", "mix"}
    assert torch.equal(aacn.fc_features.weight, plain.fc.weight)
    assert torch.equal(aacn.stages["stage2"].conv.weight, plain.stages[1].conv.weight)

    # an attention run into the plain model: the attention tensors are listed as unused
    report = init_from_run(create_model("simple_cnn", num_classes=3, in_chans=1, widths=(4, 8)), _run(tmp_path, "eca", eca))
    assert report["unused"] and all(".attn." in k for k in report["unused"]) and not report["new"]
    # another number of classes: the classifier is skipped and listed, the rest loads
    five = create_model("simple_cnn", num_classes=5, in_chans=1, widths=(4, 8))
    report = init_from_run(five, run)
    assert report["skipped"] == ["fc.weight: (3, 8) vs (5, 8)", "fc.bias: (3,) vs (5,)"]
    assert set(report["new"]) == {"fc.weight", "fc.bias"}
    assert torch.equal(five.stages[1].conv.weight, plain.stages[1].conv.weight)
    with pytest.raises(ConfigError, match="none of the checkpoint's .* tensors fits"):
        init_from_run(create_model("resnet20", num_classes=7), run)


def test_staged_run_with_a_once_stage_records_each_stage(tmp_path, monkeypatch):
    import json

    import standin

    from convattn.engine import load_checkpoint, train

    standin.install(monkeypatch)
    stages = [{"name": "features", "epochs": 1, "train": ["backbone", "decision"], "once": True},
              {"name": "attention", "epochs": 1, "train": ["attention", "decision"], "alpha": 0.1},
              {"name": "decision", "epochs": 1, "train": ["decision"]}]
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.2, progress=False, device="cpu", out=str(tmp_path / "run"),
                      stages=stages, stage_mode="alternate", patience=5)
    result = train(cfg)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["features", "attention", "decision", "attention"]
    assert rows[1]["frozen_groups"] == ["backbone"] and rows[2]["train_groups"] == ["decision"]
    assert [r["alpha"] for r in rows] == [0.0, 0.1, 0.0, 0.1]
    assert [(s["name"], s["first_epoch"], s["frozen"]) for s in result["stages"]] == [
        ("features", 1, ["attention"]), ("attention", 2, ["backbone"]), ("decision", 3, ["attention", "backbone"]),
        ("attention", 4, ["backbone"])]
    # the backbone only moves in the first epoch: rerun that epoch alone and compare
    train(cfg.replace(epochs=1, out=str(tmp_path / "one")))
    first = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    final = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for k in first:
        if k.startswith("backbone"):
            assert torch.equal(first[k], final[k]), k
