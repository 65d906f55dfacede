"""insert_attn on real torchvision / timm networks: positions, placement, weights, identity, errors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import convattn
from convattn.exceptions import ConfigError, UnknownOptionError
from convattn.models import IdentityBlend, WithAttention, attn_positions, insert_attn


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _perturb_bn(model: nn.Module) -> None:
    """Give BN layers non-trivial statistics so placement errors change outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _vgg11(num_classes: int = 3) -> nn.Module:
    """torchvision VGG-11 with a small classifier (building its 120 M-parameter head is slow)."""
    with torch.device("meta"):
        net = torchvision.models.vgg11(weights=None)
        net.classifier = nn.Linear(512 * 7 * 7, num_classes)
    net.to_empty(device="cpu")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return net


# --------------------------------------------------------------------------- positions


def test_positions_torchvision_resnet18():
    net = torchvision.models.resnet18(weights=None)
    assert attn_positions(net).paths == [f"layer{s}.{b}.bn2" for s in range(1, 5) for b in range(2)]
    assert attn_positions(net, "stage").paths == ["layer1", "layer2", "layer3", "layer4"]
    assert attn_positions(net, "stage", stages=(2, 3)).paths == ["layer2", "layer3"]
    assert attn_positions(net, "stage", stages=["res4", "layer4"]).paths == ["layer3", "layer4"]
    assert attn_positions(net, "block", stages=[4]).paths == ["layer4.0.bn2", "layer4.1.bn2"]


def test_positions_torchvision_resnet50_skip_downsample():
    net = torchvision.models.resnet50(weights=None)
    pos = attn_positions(net).paths
    assert len(pos) == 3 + 4 + 6 + 3
    assert all(p.endswith(".bn3") for p in pos)
    assert "layer1.0.downsample.1" not in pos


def test_positions_vgg11_conv_runs():
    net = _vgg11()
    pos = attn_positions(net, "conv").paths
    relus_after_conv = [
        f"features.{i + 1}" for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)
    ]
    assert pos == relus_after_conv and len(pos) == 8
    # VGG's blocks are its conv stacks between poolings (BAM's bottleneck positions)
    before_pool = [f"features.{i - 1}" for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    assert attn_positions(net, "block").paths == attn_positions(net, "stage").paths == before_pool
    assert len(before_pool) == 5


def test_positions_timm_resnet():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet18", pretrained=False)
    assert attn_positions(net).paths == [f"layer{s}.{b}.bn2" for s in range(1, 5) for b in range(2)]
    net50 = timm.create_model("resnet50", pretrained=False)
    assert all(p.endswith(".bn3") for p in attn_positions(net50).paths)


def test_positions_user_block_by_heuristic():
    class MyResBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv_a, self.norm_a = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.conv_b, self.norm_b = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            shortcut = x
            y = self.norm_b(self.conv_b(torch.relu(self.norm_a(self.conv_a(x)))))
            return torch.relu(y + shortcut)

    class Plain(nn.Module):  # same parts, no residual and no block-like name: not a block
        def __init__(self, c):
            super().__init__()
            self.conv_a, self.norm_a = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.conv_b, self.norm_b = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            return self.norm_b(self.conv_b(self.norm_a(self.conv_a(x))))

    net = nn.Sequential(MyResBlock(8), Plain(8), MyResBlock(8))
    assert attn_positions(net).paths == ["0.norm_b", "2.norm_b"]


# --------------------------------------------------------------------------- placement and weights


def test_block_placement_matches_manual_se_basicblock():
    """After bn2 and before the residual addition: out = relu(se(bn2(...)) + x)."""
    net = torchvision.models.resnet18(weights=None).eval()
    _perturb_bn(net)
    insert_attn(net, "se")
    block = net.layer1[0]
    se = block.bn2.attn[0]
    with torch.no_grad():
        for p in se.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        h = F.relu(F.batch_norm(F.conv2d(x, block.conv1.weight, padding=1), block.bn1.running_mean,
                                block.bn1.running_var, block.bn1.weight, block.bn1.bias))
        h = F.batch_norm(F.conv2d(h, block.conv2.weight, padding=1), block.bn2.running_mean,
                         block.bn2.running_var, block.bn2.weight, block.bn2.bias)
        w = torch.sigmoid(F.conv2d(F.relu(F.conv2d(h.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias)),
                                   se.fc2.weight, se.fc2.bias))
        expected = F.relu(h * w + x)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
        # and not after the addition
        assert not torch.allclose(block(x), F.relu(h + x) * w, atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_pretrained_keys_stay_loadable(arch):
    net = getattr(torchvision.models, arch)(weights=None)
    original = _snapshot(net)
    plain = getattr(torchvision.models, arch)(weights=None)
    insert_attn(net, "cbam")
    # the original weights load: only the new keys are missing, nothing is unexpected
    original = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in original.items()}
    res = net.load_state_dict(original, strict=False)
    assert res.unexpected_keys == []
    assert res.missing_keys and all(".attn." in k for k in res.missing_keys)
    # every original tensor landed in its module: a wrapped norm's keys gain a ".module" segment
    loaded = {k.replace(".module.", "."): v for k, v in net.state_dict().items() if ".attn." not in k}
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
    plain.load_state_dict(loaded, strict=True)


def test_timm_keys_and_forward():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    original = _snapshot(net)
    x = torch.randn(1, 3, 32, 32)
    before = net(x)
    insert_attn(net, "se", identity_init=True)
    res = net.load_state_dict(original, strict=False)
    assert res.unexpected_keys == [] and all(".attn." in k for k in res.missing_keys)
    assert torch.equal(net(x), before)


# --------------------------------------------------------------------------- identity at insertion


@pytest.mark.parametrize(
    "name,where,stages,kw",
    [
        ("non_local", "stage", (2, 3), {}),
        ("self_attn", "stage", (3,), {}),
        ("danet", "stage", (4,), {}),
        ("danet_pam", "block", (4,), {}),
        ("se", "block", None, {"identity_init": True}),
        ("cbam", "block", (1, 2), {"identity_init": True}),
    ],
)
def test_identity_at_insertion(name, where, stages, kw):
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    _perturb_bn(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        insert_attn(net, name, where=where, stages=stages, **kw)
        after = net(x)
    assert len([m for m in net.modules() if isinstance(m, convattn.layers.RecordsAttention)]) > 0
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_identity_blend_is_exact_and_learns():
    layer = IdentityBlend(convattn.create_attn("se", 16))
    x = torch.randn(2, 16, 5, 4)
    assert torch.equal(layer(x), x)
    layer(x).sum().backward()
    assert layer.gamma.grad is not None and layer.gamma.grad.abs() > 0
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    torch.testing.assert_close(layer(x), layer.layer(x))


# --------------------------------------------------------------------------- several layers


def test_two_layers_at_once():
    net = torchvision.models.resnet18(weights=None).eval()
    insert_attn(net, "se")
    insert_attn(net, "non_local", where="stage", stages=(3, 4))
    insert_attn(net, "eca")  # a second layer at the same block positions
    assert [type(m).__name__ for m in net.layer1[0].bn2.attn] == ["SqueezeExcite", type(convattn.create_attn("eca", 8)).__name__]
    assert type(net.layer3[-1]).__name__ == "NonLocal2d" or "NonLocal" in type(net.layer3[-1]).__name__
    assert len(net.layer3) == 3 and len(net.layer2) == 2
    names = {type(m).__name__ for m in net.modules()}
    assert "SqueezeExcite" in names and any("NonLocal" in n for n in names)
    x = torch.randn(1, 3, 32, 32)
    with convattn.record_attention(net) as maps:
        net(x)
    assert any(k.startswith("layer1.0.bn2.attn.0") for k in maps)
    assert any(k.startswith("layer3.2") for k in maps)


# --------------------------------------------------------------------------- other positions


def test_conv_where_on_vgg_and_user_sequential():
    vgg = _vgg11(3).eval()
    original = _snapshot(vgg)
    insert_attn(vgg, "se", where="conv", rd_ratio=1 / 8)
    res = vgg.load_state_dict(original, strict=False)
    assert res.unexpected_keys == [] and len(res.missing_keys) == 8 * 4
    assert vgg(torch.randn(1, 3, 32, 32)).shape == (1, 3)

    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.GELU(),
        nn.Conv2d(12, 4, 1),  # no activation: not a run
    )
    insert_attn(net, "cbam", where="conv", rd_channels=2)
    assert [m.attn[0].channels for m in (net[2], net[4])] == [8, 12]
    assert net(torch.randn(2, 3, 7, 9)).shape == (2, 4, 7, 9)


def test_glob_and_callable_where():
    net = torchvision.models.resnet18(weights=None)
    insert_attn(net, "se", where="layer4.*.bn1")
    assert net.layer4[0].bn1.attn[0].channels == 512 and not hasattr(net.layer3[0].bn1, "attn")
    net2 = torchvision.models.resnet18(weights=None).eval()
    insert_attn(net2, "se", where=lambda path, m: isinstance(m, nn.Conv2d) and path.endswith("conv1") and "layer2" in path)
    wrapped = [p for p, m in net2.named_modules() if isinstance(m, WithAttention)]
    assert wrapped == ["layer2.0.conv1", "layer2.1.conv1"]
    assert net2.layer2[0].conv1.attn[0].channels == 128
    assert net2(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


# --------------------------------------------------------------------------- real detection / video models


def test_fasterrcnn_backbone_with_se():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    det = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=64, max_size=64)
    original = _snapshot(det)
    insert_attn(det.backbone, "se")
    assert len(attn_positions(det.backbone).paths) == 16
    res = det.load_state_dict(original, strict=False)
    assert res.unexpected_keys == []
    det.eval()
    with torch.no_grad():
        out = det([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_non_local3d_on_r3d_18_stages():
    from torchvision.models.video import r3d_18

    net = r3d_18(weights=None, num_classes=4).eval()
    _perturb_bn3d = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    for m in _perturb_bn3d:
        m.running_var.fill_(1.5)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        before = net(x)
        insert_attn(net, "non_local3d", where="stage", stages=(2, 3))
        after = net(x)
    assert "NonLocal" in type(net.layer2[-1]).__name__ and "NonLocal" in type(net.layer3[-1]).__name__
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # the 2-D layer is refused on 5-D features
    with pytest.raises(ConfigError, match="4-D"):
        insert_attn(net, "non_local", where="stage", stages=(4,))


# --------------------------------------------------------------------------- errors


def test_errors():
    net = torchvision.models.resnet18(weights=None)
    keys = set(net.state_dict())
    with pytest.raises(ConfigError, match="'pool' layer"):
        insert_attn(net, "attn_pool")
    with pytest.raises(ConfigError, match="'conv' layer"):
        insert_attn(net, "aa_conv")
    with pytest.raises(ConfigError, match="5-D"):
        insert_attn(net, "non_local3d", where="stage")
    with pytest.raises(ConfigError, match="did you mean"):
        insert_attn(net, "sse")
    with pytest.raises(UnknownOptionError, match="unknown option rd_ratoi=0.5"):
        insert_attn(net, "se", rd_ratoi=0.5)
    for bad in (5, 0, -5):
        with pytest.raises(ConfigError, match=r"stages expects 1-based stage numbers 1..4, -1 for the last"):
            insert_attn(net, "se", stages=(bad,))
    with pytest.raises(ConfigError, match="found no"):
        insert_attn(net, "se", where="nothing.*")
    with pytest.raises(ConfigError, match="found no positions"):
        insert_attn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "se", where="stage")
    with pytest.raises(ConfigError, match="found 0 conv"):
        insert_attn(nn.Sequential(nn.Linear(3, 4)), "se", where="conv")
    with pytest.raises(ConfigError, match="stages applies"):
        insert_attn(net, "se", where="conv", stages=(1,))
    # nothing was changed by the failed calls
    assert set(net.state_dict()) == keys


# --------------------------------------------------------------------------- copies, export, devices


def test_deepcopy_pickle_export_train_mode():
    net = convattn.models.create_model("resnet18", num_classes=3, small_input=True, attention="se").eval()
    insert_attn(net, "self_attn", where="stage", stages=(4,))
    x = torch.randn(1, 3, 16, 16)
    ref = net(x)
    clone = copy.deepcopy(net)
    assert clone.layer1[0].bn2.attn[0] is not net.layer1[0].bn2.attn[0]
    torch.testing.assert_close(clone(x), ref)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x), ref)
    assert isinstance(loaded.layer1[0].bn2, WithAttention)
    assert type(loaded.layer1[0].bn2.module) is nn.BatchNorm2d  # no module changed its class
    ep = torch.export.export(net, (x,))
    torch.testing.assert_close(ep.module()(x), ref, rtol=1e-5, atol=1e-5)
    # inserted layers follow the model's mode and dtype
    net2 = torchvision.models.resnet18(weights=None).double().eval()
    insert_attn(net2, "se")
    layer = net2.layer1[0].bn2.attn[0]
    assert not layer.training and layer.fc1.weight.dtype == torch.float64


def test_bare_state_dict_loads_into_a_wrapped_module_with_an_attn_child():
    """Keys saved before insertion map onto ``.module`` even where the module's own child is called ``attn``."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.attn = convattn.create_attn("se", 8)

        def forward(self, x):
            return self.attn(self.conv(x))

    bare = Block()
    wrapped = WithAttention(Block(), convattn.create_attn("eca", 8))
    res = wrapped.load_state_dict(bare.state_dict(), strict=False)
    assert res.unexpected_keys == [] and all(k.startswith("attn.") for k in res.missing_keys)
    for k, v in bare.state_dict().items():
        torch.testing.assert_close(wrapped.module.state_dict()[k], v)
    wrapped.load_state_dict(wrapped.state_dict())  # its own keys load unchanged


def test_negative_stages_count_from_the_end():
    net = torchvision.models.resnet18(weights=None)
    assert attn_positions(net, "stage", stages=(-1,)) == attn_positions(net, "stage", stages=(4,))
    assert attn_positions(net, "block", stages=(-2, -1)) == attn_positions(net, "block", stages=("layer3", "layer4"))
