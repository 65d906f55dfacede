"""Fine-tuning on any network: generic groups, --freeze, the finetune recipe, the weights' data pipeline,
grayscale sets as three channels, and --init-from any state-dict file."""

from __future__ import annotations

import pytest
import torch
import torchvision

from convattn.engine import TrainConfig
from convattn.engine.build import init_from_run
from convattn.engine.data import build_datasets
from convattn.engine.optim import build_optimizer
from convattn.engine.recipes import finetune_stages, get_recipe, list_recipes, resolve_config
from convattn.engine.stages import apply_stage, check_groups, model_groups, plan_for, stage_groups
from convattn.exceptions import ConfigError
from convattn.models import create_model


def test_generic_groups_drive_freeze_lr_mult_and_frozen_batchnorm():
    net = create_model("resnet18", num_classes=3, attention="se")
    groups = model_groups(net)
    assert sorted(groups) == ["attention", "backbone", "head"]
    cfg = TrainConfig(model="resnet18", freeze=["backbone"], lr_mult={"attention": 10})
    plan = plan_for(cfg)
    check_groups(cfg, plan, groups)
    assert stage_groups(plan.current, groups) == (["attention", "head"], ["backbone"])
    frozen_norms = apply_stage(net, plan.current, groups)
    assert {id(p) for p in net.parameters() if p.requires_grad} == {id(p) for g in ("attention", "head") for p in groups[g]}
    assert len(frozen_norms) == 20 and net.bn1 in frozen_norms  # every backbone BatchNorm keeps its statistics
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    opt = build_optimizer(named, name="sgd", lr=0.01, lr_mult=cfg.lr_mult, groups=groups)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert [lr_of[id(p)] for p in groups["attention"]] == pytest.approx([0.1] * len(groups["attention"]))
    assert {lr_of[id(p)] for p in groups["head"]} == {0.01}

    aacn = create_model("aacn", num_classes=3, in_chans=1)
    assert sorted(model_groups(aacn)) == ["attention", "backbone", "decision"]  # its own param_groups()
    with pytest.raises(ConfigError, match=r"freeze names parameter group\(s\) \['trunk'\], but model 'resnet18' has"):
        check_groups(TrainConfig(model="resnet18", freeze=["trunk"]), plan_for(TrainConfig(freeze=["trunk"])), groups)
    bad = TrainConfig(model="resnet18", stages=[{"epochs": 1, "freeze": ["backbone", "attention", "head"]}])
    with pytest.raises(ConfigError, match="trains nothing"):
        check_groups(bad, plan_for(bad), groups)


def test_freeze_adds_to_every_stage():
    cfg = TrainConfig(freeze="attention", stages=[{"name": "a", "epochs": 1, "train": ["head", "attention"]},
                                                  {"name": "b", "epochs": 1}])
    groups = model_groups(create_model("resnet18", num_classes=3, attention="se"))
    plan = plan_for(cfg)
    assert [stage_groups(s, groups) for s in plan.stages] == [(["head"], ["attention", "backbone"]),
                                                              (["backbone", "head"], ["attention"])]


def test_finetune_recipe_for_every_model():
    assert "finetune" in list_recipes("simple_cnn")["simple_cnn"] and list_recipes()["*"] == ["finetune"]
    assert finetune_stages(1, 0.01) == [{"name": "new", "epochs": 1, "freeze": ["backbone"], "lr": 0.01}]
    assert [(s["name"], s["epochs"], s["lr"]) for s in finetune_stages(9, 0.02)] == [("new", 3, 0.02), ("all", 6, 0.002)]
    assert get_recipe("aacn", "finetune", {"epochs": 3, "lr": 0.1})["stages"][1]["lr"] == pytest.approx(0.01)
    cfg, sources = resolve_config({"model": "resnet18", "weights": "my.pth", "epochs": 6})
    assert cfg.recipe == "finetune" and sources["stages"] == "recipe resnet18/finetune" and cfg.total_epochs == 6
    assert cfg.preprocessing == {} and cfg.model_kwargs == {}  # a file: no known pipeline; no small-input stem
    cfg, _ = resolve_config({"model": "resnet18", "weights": "my.pth", "recipe": "default", "image_size": 32})
    assert cfg.model_kwargs == {}
    cfg, _ = resolve_config({"model": "resnet18", "image_size": 32})
    assert cfg.model_kwargs == {"small_input": True} and cfg.recipe == "default"


def _folder(root, per_class=3, mode="RGB"):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, (30, 20), 40 * i).save(root / c / f"{i}.png")
    return root


def test_weights_preprocessing_is_the_folder_pipeline(tmp_path):
    from torchvision.transforms import v2

    data = _folder(tmp_path / "d")
    cfg, sources = resolve_config({"model": "timm_regnetx_002", "weights": "DEFAULT", "dataset": f"folder:{data}",
                                   "image_size": 16, "preprocessing": {"mean": [0.5, 0.5, 0.5]}})
    assert sources["preprocessing"] == "weights DEFAULT + flag"
    assert cfg.preprocessing["interpolation"] == "bicubic" and cfg.preprocessing["mean"] == [0.5, 0.5, 0.5]
    datasets, info = build_datasets(cfg)
    assert info["mean"] == [0.5, 0.5, 0.5] and info["std"] == [0.229, 0.224, 0.225]
    assert info["preprocessing"]["crop"] == 16 and info["preprocessing"]["resize"] == 18  # 224/256 kept
    steps = datasets["val"].transform.transforms
    resize = next(t for t in steps if isinstance(t, v2.Resize))
    assert resize.size == [18] and resize.interpolation == v2.InterpolationMode.BICUBIC
    assert datasets["val"][0][0].shape == (3, 16, 16)
    assert any(isinstance(t, v2.RandomResizedCrop) for t in datasets["train"].transform.transforms)
    with pytest.raises(ConfigError, match="preprocessing.interpolation must be one of nearest, bilinear, bicubic"):
        TrainConfig(preprocessing={"interpolation": "lanczos"})


def test_grayscale_sets_become_three_channels_with_weights():
    cfg = TrainConfig(dataset="digits", weights="pretrained.pth", train_size=8, val_size=4, test_size=4)
    datasets, info = build_datasets(cfg)
    x, _ = datasets["train"][0]
    assert info["in_chans"] == 3 and len(info["mean"]) == 3 and x.shape[0] == 3 and torch.equal(x[0], x[2])
    _, plain = build_datasets(cfg.replace(weights=None))
    assert plain["in_chans"] == 1


def test_init_from_a_torchvision_state_dict_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    net = create_model("resnet18", num_classes=3, attention="cbam", identity_init=True)
    report = init_from_run(net, tmp_path / "resnet18-f37072fd.pth")
    assert report["epochs"] == 0 and report["model"] is None
    assert report["skipped"] == ["fc.weight: (1000, 512) vs (3, 512)", "fc.bias: (1000,) vs (3,)"]
    assert torch.equal(net.layer4[1].bn2.module.weight, ref.layer4[1].bn2.weight)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        init_from_run(net, tmp_path / "notes.txt")


def test_a_grayscale_run_is_weights_for_a_grayscale_set(tmp_path):
    """A run's own 1-channel stem keeps a grayscale dataset at one channel; named weights (3-channel
    stems) repeat it into three."""
    from convattn.engine import train

    small = dict(dataset="digits", image_size=16, train_size=32, val_size=16, test_size=16, batch_size=16,
                 progress=False, tensorboard=False, device="cpu")
    src = tmp_path / "src"
    train(TrainConfig(model="resnet20", epochs=1, out=str(src), **small))
    _, info = build_datasets(TrainConfig(model="resnet20", weights=str(src), **small), splits=("val",))
    assert info["in_chans"] == 1
    res = train(TrainConfig(model="resnet20", attention="se", weights=str(src), epochs=1, out=str(tmp_path / "ft"), **small))
    assert res["status"] == "finished"
    bad = TrainConfig(model="resnet18", weights=str(src), epochs=1, out=str(tmp_path / "bad"), **small)
    with pytest.raises(ConfigError, match=f"weights '{src}' do not fit model 'resnet18'"):
        train(bad)
