"""Pretrained weights (torchvision's weights API, timm's pretrained mechanism, files) and fine-tuning groups.

Nothing is downloaded: "pretrained" files hold random weights, saved where torchvision (a temporary
TORCH_HOME) and timm (a temporary Hugging Face cache) look for them.
"""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from convattn.exceptions import ConfigError
from convattn.models import create_model, finetune_groups, get_model_info, insert_attn, load_weights
from convattn.models.weights import classifier_path, match_state, read_state_dict, weights_preprocessing


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A torch hub cache holding random "ResNet18_Weights.IMAGENET1K_V1", at the file name torchvision's enum names."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    name = os.path.basename(weights.url)
    assert name == "resnet18-f37072fd.pth"  # the name torchvision's own loader resolves below
    torch.save(ref.state_dict(), folder / name)
    return ref, folder / name


def test_torchvision_weights_keep_logits_with_the_head_and_features_with_a_new_one(torch_home):
    ref, _ = torch_home
    x = torch.randn(2, 3, 64, 64)
    same = create_model("resnet18", num_classes=1000, attention="cbam", weights="IMAGENET1K_V1").eval()
    assert any("attn" in k for k in same.state_dict())
    torch.testing.assert_close(same(x), ref(x), rtol=0, atol=1e-6)  # identity_init by default: same logits

    new = create_model("resnet18", num_classes=3, attention="se", weights="DEFAULT").eval()
    feats = {}
    new.fc.register_forward_pre_hook(lambda m, inp: feats.__setitem__("new", inp[0]))
    ref.fc.register_forward_pre_hook(lambda m, inp: feats.__setitem__("ref", inp[0]))
    assert new(x).shape == (2, 3)
    ref(x)
    torch.testing.assert_close(feats["new"], feats["ref"], rtol=0, atol=1e-6)  # same features before the new head

    report = load_weights(create_model("resnet18", num_classes=3, attention="se"), "resnet18", "IMAGENET1K_V1",
                          pretrained=get_model_info("resnet18").pretrained)
    assert report["head"] == "fc" and {"fc.weight", "fc.bias"} <= set(report["new"])
    assert report["skipped"] == ["fc.weight: (1000, 512) vs (3, 512)", "fc.bias: (1000,) vs (3,)"]
    assert "layer1.0.bn2.module.weight" in report["loaded"]  # mapped through the inserted wrapper
    assert all(k.startswith("fc.") or ".attn." in k for k in report["new"])


def test_missing_unknown_and_unfitting_weights_are_one_line_errors(torch_home, tmp_path, monkeypatch):
    _, file = torch_home
    with pytest.raises(ConfigError, match="unknown weights 'IMAGENET1K_V9' for 'resnet18': expected DEFAULT, IMAGENET1K_V1"):
        create_model("resnet18", num_classes=3, weights="IMAGENET1K_V9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as info:
        create_model("resnet18", num_classes=3, weights="IMAGENET1K_V1")
    msg = str(info.value)
    assert "\n" not in msg and f"resnet18-f37072fd.pth in {tmp_path / 'empty' / 'hub' / 'checkpoints'}" in msg
    assert "--download" in msg
    with pytest.raises(ConfigError, match="has no named pretrained weights"):
        create_model("resnet20", num_classes=3, weights="DEFAULT")
    with pytest.raises(ConfigError, match=r"do not fit model 'resnet34' outside its classifier 'fc'"):
        create_model("resnet34", num_classes=3, weights=str(file))  # resnet18 weights
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="is not a checkpoint torch.load"):
        create_model("resnet18", num_classes=3, weights=str(text))


def test_read_state_dict_takes_plain_wrapped_ddp_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 5, 5))
    state = net.state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.ckpt")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file(dict(state), str(tmp_path / "w.safetensors"))
    for name in ("lightning.ckpt", "ddp.pth", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert sorted(got) == sorted(state) and all(torch.equal(got[k], state[k]) for k in state)
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "meta.pt")
    with pytest.raises(ConfigError, match="is not a checkpoint: expected a state dict"):
        read_state_dict(tmp_path / "meta.pt")
    torch.save({"w": nn.Linear(1, 1)}, tmp_path / "code.pt")  # pickled objects: refused by weights_only
    with pytest.raises(ConfigError, match="weights_only=True"):
        read_state_dict(tmp_path / "code.pt")


def test_groups_on_any_network():
    net = insert_attn(torchvision.models.mobilenet_v3_small(weights=None, num_classes=4), "eca")
    groups = finetune_groups(net)
    assert set(groups) == {"backbone", "attention", "head"}
    assert {id(p) for p in groups["head"]} == {id(p) for p in net.classifier.parameters()}
    assert len(groups["attention"]) > 0
    counted = sum(len(v) for v in groups.values())
    assert counted == len(list(net.parameters()))
    assert set(finetune_groups(torchvision.models.resnet18(weights=None))) == {"backbone", "head"}
    assert classifier_path(create_model("timm_regnetx_002", num_classes=3, attention="se")) == "head.fc"
    conv_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    assert set(finetune_groups(conv_only)) == {"backbone"}  # no classifier: no head group
    with pytest.raises(ConfigError, match="cannot find the classifier of Sequential: expected get_classifier()"):
        classifier_path(conv_only)


def test_match_state_maps_keys_through_inserted_wrappers():
    plain = torchvision.models.resnet18(weights=None, num_classes=5)
    cbam = insert_attn(torchvision.models.resnet18(weights=None, num_classes=5), "cbam", identity_init=True)
    mapped, report = match_state(cbam, plain.state_dict())
    assert not report["unused"] and not report["skipped"] and len(mapped) == len(plain.state_dict())
    assert all(".attn." in k for k in report["new"])


def test_timm_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    cfg = timm.models.get_pretrained_cfg("regnetx_002")
    repo = cache / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    with pytest.raises(ConfigError, match=rf"expected model.safetensors in {repo} \(huggingface-cli download"):
        create_model("timm_regnetx_002", num_classes=3, weights="DEFAULT")
    torch.manual_seed(0)
    ref = timm.create_model("regnetx_002", pretrained=False).eval()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(ref.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    net = create_model("timm_regnetx_002", num_classes=1000, attention="cbam", weights="DEFAULT").eval()
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-6)
    assert weights_preprocessing("timm_regnetx_002", "DEFAULT", get_model_info("timm_regnetx_002").pretrained)["interpolation"] == "bicubic"
    with pytest.raises(ConfigError, match="unknown weights 'nope' for 'timm_regnetx_002': expected DEFAULT, pycls_in1k"):
        create_model("timm_regnetx_002", num_classes=3, weights="nope")
