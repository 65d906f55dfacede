"""create_model: every registered network builds, runs forward + backward, round-trips and exports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convattn
from convattn.exceptions import ConfigError, ShapeError, UnknownOptionError
from convattn.models import create_model, get_model_info, list_models, register_model
from convattn.models.registry import MODELS
from convattn.models.aacn import AACN
from convattn.models.danet_seg import danet_loss
from convattn.models.resnet import PadShortcut

# name -> (create_model kwargs, input shape); small inputs keep the file fast on CPU
CASES = {
    "simple_cnn": (dict(in_chans=1, attention="cbam"), (2, 1, 28, 28)),
    "resnet18": (dict(small_input=True, attention="se"), (2, 3, 16, 16)),
    "resnet34": (dict(), (2, 3, 32, 32)),
    "resnet50": (dict(attention="eca"), (2, 3, 32, 32)),
    "resnet101": (dict(in_chans=1), (2, 1, 32, 32)),
    "resnet20": (dict(attention="se", attn_kwargs={"rd_ratio": 0.25}), (2, 3, 16, 16)),
    "resnet32": (dict(shortcut="B"), (2, 3, 16, 16)),
    "resnet56": (dict(), (2, 3, 8, 8)),
    "stn_cnn": (dict(in_chans=1, attention="se"), (2, 1, 28, 28)),
    "aacn": (dict(in_chans=1), (2, 1, 28, 28)),
    "aa_resnet18": (dict(small_input=True), (2, 3, 16, 16)),
    "aa_resnet50": (dict(aa_stages=(4,)), (2, 3, 64, 64)),
    "danet_resnet50": (dict(backbone="resnet18"), (2, 3, 32, 32)),
    "gated_mlp": (dict(in_chans=1), (2, 1, 28, 28)),
    "gated_cnn": (dict(in_chans=1, attention="eca"), (2, 1, 28, 28)),
}
# large networks: forward + backward only (the round trip is the same mechanism as resnet18's)
HEAVY = {"resnet34", "resnet50", "resnet101", "aa_resnet50"}
EXPORT = ["simple_cnn", "resnet20", "stn_cnn", "aacn", "aa_resnet18", "danet_resnet50", "gated_mlp", "gated_cnn"]


def _logits(out):
    if isinstance(out, dict):
        return out["logits"] if "logits" in out else out["out"]
    return out


def test_every_registered_model_is_covered():
    from convattn.models.zoo import TIMM_MODELS, TORCHVISION_MODELS  # covered by tests/models/test_zoo.py

    zoo = set(TORCHVISION_MODELS) | {f"timm_{n}" for n in TIMM_MODELS}
    assert sorted(CASES) == [n for n in list_models() if n not in zoo]


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward_shapes_and_round_trip(name):
    kw, shape = CASES[name]
    net = create_model(name, num_classes=5, **kw)
    x = torch.randn(shape)
    out = net(x)
    logits = _logits(out)
    if name == "danet_resnet50":
        assert all(out[k].shape == (2, 5, *shape[2:]) for k in ("out", "pam", "cam"))
    else:
        assert logits.shape == (2, 5)
    loss = danet_loss(out, torch.zeros(shape[0], *shape[2:], dtype=torch.long)) if name == "danet_resnet50" else 0
    (logits.square().mean() + loss).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    if name in HEAVY:
        return
    # state_dict round trip into a freshly built network
    net.eval()
    fresh = create_model(name, num_classes=5, **kw).eval()
    fresh.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(_logits(fresh(x)), _logits(net(x)))


@pytest.mark.parametrize("name", EXPORT)
def test_export(name):
    kw, shape = CASES[name]
    net = create_model(name, num_classes=5, **kw).eval()
    x = torch.randn(1, *shape[1:])
    ep = torch.export.export(net, (x,))
    torch.testing.assert_close(_logits(ep.module()(x)), _logits(net(x)), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- registry


def test_registry_errors():
    with pytest.raises(ConfigError, match="did you mean.*'resnet50'"):
        create_model("resnet05", num_classes=3)
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*convattn\.list_models\(\) or `convattn list models`"):
        create_model("nope", num_classes=2)
    with pytest.raises(ConfigError, match="unknown model"):
        get_model_info("nope")
    with pytest.raises(UnknownOptionError, match=r"model 'simple_cnn' got unknown option widht=\(8,\); it accepts widths"):
        create_model("simple_cnn", num_classes=3, widht=(8,))
    with pytest.raises(UnknownOptionError, match="bogus=1"):
        create_model("resnet20", num_classes=3, attention="se", attn_kwargs={"bogus": 1})
    with pytest.raises(UnknownOptionError, match="bogus=1"):
        create_model("simple_cnn", num_classes=3, attention="se", attn_kwargs={"bogus": 1})
    with pytest.raises(ConfigError, match="unknown attention layer 'sse'"):
        create_model("simple_cnn", num_classes=3, attention="sse")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("simple_cnn", num_classes=0)
    with pytest.raises(ValueError, match="already registered"):
        register_model("simple_cnn")
    with pytest.raises(ConfigError, match="'pool' layer"):
        create_model("simple_cnn", num_classes=3, attention="attn_pool")
    with pytest.raises(ConfigError, match="'pool' layer"):
        create_model("resnet20", num_classes=3, attention="attn_pool")
    with pytest.raises(ConfigError, match="depth = 6n"):
        convattn.models.resnet.CifarResNet(21)
    with pytest.raises(ConfigError, match="no feature maps"):
        create_model("gated_mlp", num_classes=3, attention="se")
    assert create_model("resnet20", num_classes=3, attention="none").fc.out_features == 3



def test_model_info_carries_what_the_engine_reads():
    for name in list_models():
        info = get_model_info(name)
        assert info.name == name and info is MODELS.get(name)
        assert isinstance(info.places_attention, bool) and isinstance(info.takes_image_size, bool)
        assert not {"num_classes", "in_chans", "attention", "attn_kwargs"} & set(info.options)
    assert get_model_info("resnet50").places_attention and not get_model_info("resnet50").takes_image_size
    assert get_model_info("efficientnet_b0").places_attention
    assert not get_model_info("simple_cnn").places_attention and not get_model_info("aacn").places_attention
    assert get_model_info("gated_mlp").takes_image_size
    assert get_model_info("resnet20").options["shortcut"] == "A"


def test_machinery_modules_register_no_models():
    modules = {get_model_info(n).factory.__module__ for n in list_models()}
    assert not modules & {f"convattn.models.{m}" for m in ("registry", "probe", "positions", "insert")}

def test_register_model_declares_or_derives_facts():
    @register_model("test_declared", places_attention=True, takes_image_size=True)
    def declared(*, num_classes, in_chans=3, attention=None, attn_kwargs=None, **options):
        return nn.Linear(1, num_classes)

    @register_model("test_derived")
    def derived(*, num_classes, in_chans=3, attention=None, attn_kwargs=None, image_size=(8, 8)):
        return nn.Linear(1, num_classes)

    try:
        assert get_model_info("test_declared").places_attention and get_model_info("test_declared").takes_image_size
        info = get_model_info("test_derived")
        assert not info.places_attention and info.takes_image_size and info.options == {"image_size": (8, 8)}
        assert create_model("test_declared", num_classes=2, anything=1).out_features == 2  # **options takes all
    finally:
        MODELS.remove("test_declared")
        MODELS.remove("test_derived")
    assert "test_declared" not in list_models()

# --------------------------------------------------------------------------- parameter counts (the papers' tables)


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "name,attention,classes,expected",
    [
        ("resnet50", None, 1000, 25.56e6),  # He et al. 2016
        ("resnet50", "se", 1000, 28.09e6),  # SE-ResNet-50, r = 16 (Hu et al. 2018, Table 2)
        ("resnet50", "cbam", 1000, 28.09e6),  # CBAM-ResNet-50 (Woo et al. 2018, Table 3)
        ("resnet20", None, 10, 0.27e6),  # He et al. 2016, Table 6
        ("resnet32", None, 10, 0.46e6),
        ("resnet56", None, 10, 0.85e6),
    ],
)
def test_parameter_counts_match_papers(name, attention, classes, expected):
    n = _params(create_model(name, num_classes=classes, attention=attention))
    assert abs(n - expected) / expected < 0.01, n


def test_cifar_shortcuts():
    x = torch.randn(2, 16, 7, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    a = create_model("resnet20", num_classes=10)
    b = create_model("resnet20", num_classes=10, shortcut="B")
    # option B adds two 1x1 projections + BN: 16*32 + 2*32 + 32*64 + 2*64
    assert _params(b) - _params(a) == 16 * 32 + 64 + 32 * 64 + 128


def test_small_input_and_in_chans():
    net = create_model("resnet18", num_classes=4, in_chans=1, small_input=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, nn.Identity)
    assert net.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 4)
    big = create_model("resnet18", num_classes=4, in_chans=2)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 2


# --------------------------------------------------------------------------- stn_cnn


def test_stn_cnn_is_its_classifier_at_init():
    net = create_model("stn_cnn", num_classes=3, in_chans=1, transform="attention", loc_hidden=8).eval()
    assert net.stn.attn_name == "stn"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(net(x), net.classifier(x), rtol=1e-5, atol=1e-5)
    assert net.transformed(x).shape == x.shape
    with convattn.record_attention(net) as maps:
        net(x)
    assert maps["stn:theta"].shape == (2, 2, 3)


# --------------------------------------------------------------------------- aacn


def test_aacn_outputs_follow_the_branch_equations():
    net = create_model("aacn", num_classes=4, in_chans=1).eval()
    with torch.no_grad():
        net.mix.copy_(torch.tensor([0.3, -0.8]))
    x = torch.randn(2, 1, 28, 28)
    out = net(x)
    # transcription: run the stages, pool each with its head, stack, mix two linear layers
    h, vectors = net.stem(x), []
    for name, stage in net.stages.items():
        h = stage(h)
        z = net.heads[name].logits(h).flatten(2)  # (B, K, N)
        p = torch.softmax(z, dim=-1)
        torch.testing.assert_close(out["maps"][name].flatten(2), p)
        vectors.append(torch.einsum("bkn,bcn->bkc", p, h.flatten(2)).flatten(1))
    a = torch.cat(vectors, 1)
    f = h.mean((2, 3))
    w = torch.exp(net.mix) / torch.exp(net.mix).sum()
    expected = w[0] * (f @ net.fc_features.weight.T + net.fc_features.bias) + w[1] * (
        a @ net.fc_attention.weight.T + net.fc_attention.bias
    )
    torch.testing.assert_close(out["attention"], a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-5)


def test_aacn_regularization_is_normalised_entropy():
    uniform = {"maps": {"s": torch.full((2, 3, 4, 5), 1 / 20)}}
    assert math.isclose(float(AACN.regularization(uniform)), 1.0, rel_tol=1e-6)
    peaked = torch.zeros(2, 3, 4, 5)
    peaked[..., 1, 2] = 1.0
    assert float(AACN.regularization({"maps": {"s": peaked}})) == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(torch.randn(1, 2, 12), -1)
    expected = sum(-sum(float(v) * math.log(float(v)) for v in p[0, k]) for k in range(2)) / 2 / math.log(12)
    got = float(AACN.regularization({"maps": {"s": p.view(1, 2, 3, 4)}}))
    assert got == pytest.approx(expected, rel=1e-5)
    # it is differentiable with respect to the attention heads
    net = create_model("aacn", num_classes=3, in_chans=1)
    with torch.no_grad():
        for head in net.heads.values():
            head.logits.weight.normal_()
    net.regularization(net(torch.randn(2, 1, 16, 16))).backward()
    assert all(h.logits.weight.grad.abs().sum() > 0 for h in net.heads.values())


def test_aacn_param_groups_and_frozen_group_stays_put():
    net = create_model("aacn", num_classes=3, in_chans=1, backbone="resnet20", attn_stages=(2, 3))
    assert sorted(net.heads) == ["layer2", "layer3"]
    groups = net.param_groups()
    assert sorted(groups) == ["attention", "backbone", "decision"]
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    with torch.no_grad():
        for head in net.heads.values():
            head.logits.weight.normal_()
    for p in groups["backbone"]:
        p.requires_grad_(False)
    before = {id(p): p.detach().clone() for p in net.parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    out = net(torch.randn(4, 1, 16, 16))
    (F.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 0])) + 0.1 * net.regularization(out)).backward()
    opt.step()
    assert all(torch.equal(p, before[id(p)]) for p in groups["backbone"])
    assert all(not torch.equal(p, before[id(p)]) for p in groups["decision"])
    assert any(not torch.equal(p, before[id(p)]) for p in groups["attention"])


# --------------------------------------------------------------------------- aa_resnet, danet, gated


def test_aa_resnet_replaces_the_3x3_convs_of_the_chosen_stages():
    net = create_model("aa_resnet18", num_classes=3, small_input=True)
    aa = [n for n, m in net.named_modules() if type(m).__name__ == "AttentionAugmentedConv2d"]
    assert aa == [f"layer{s}.{b}.conv{c}" for s in (3, 4) for b in (0, 1) for c in (1, 2)]
    assert net.layer3[0].conv1.stride == 2 and net.layer3[0].conv1.out_channels == 256
    only4 = create_model("aa_resnet18", num_classes=3, aa_stages=(4,), num_heads=4)
    assert sum(type(m).__name__ == "AttentionAugmentedConv2d" for m in only4.modules()) == 4


def test_danet_resnet50_output_stride_and_loss():
    net = create_model("danet_resnet50", num_classes=4).eval()
    x = torch.randn(1, 3, 32, 24)
    with torch.no_grad():
        feats = net.forward_features(x)
        out = net(x)
    assert feats.shape == (1, 2048, 4, 3)  # output stride 8
    assert out["out"].shape == (1, 4, 32, 24)
    # identity-initialised attention modules: the pam / cam branches see their input unchanged
    assert float(net.head.pam.gamma.detach()) == 0.0 and float(net.head.cam.gamma.detach()) == 0.0
    target = torch.randint(0, 4, (1, 32, 24))
    target[0, 0, 0] = 255
    expected = sum(F.cross_entropy(out[k], target, ignore_index=255) for k in ("out", "pam", "cam"))
    torch.testing.assert_close(danet_loss(out, target, ignore_index=255), expected)
    with pytest.raises(ShapeError, match="target of shape"):
        danet_loss(out, target[:, :8])


def test_gated_models():
    net = create_model("gated_mlp", num_classes=10, in_chans=1, num_heads=2, dropout=0.0)
    assert net.head.num_heads == 2
    with pytest.raises(ShapeError, match=r"\(B, 1, 28, 28\)"):
        net(torch.randn(2, 1, 32, 32))
    cnn = create_model("gated_cnn", num_classes=10, in_chans=3)
    assert cnn(torch.randn(1, 3, 9, 7)).shape == (1, 10)
    with convattn.record_attention(cnn) as maps:
        cnn(torch.randn(2, 3, 16, 16))
    assert maps["head"].shape == (2, 4, 64)


@pytest.mark.parametrize("name", ["gated_mlp", "gated_cnn"])
def test_gated_head_rectifies_the_classifier(name):
    """logits = fc(f) + W_p · dropout(concat_k f ⊙ σ(W_k f + b_k)) + b_p, W_p and b_p zero at init."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=5, in_chans=1, num_heads=3, dropout=0.0).eval()
    x = torch.randn(4, 1, 28, 28)
    f = net.features(x) if name == "gated_mlp" else net.pool(net.stages(x)).flatten(1)
    plain = f @ net.fc.weight.T + net.fc.bias
    torch.testing.assert_close(net(x), plain)  # training starts from the plain classifier
    with torch.no_grad():
        for p in net.head.proj.parameters():
            p.normal_()
    d = f.shape[1]
    gates = torch.sigmoid(f @ net.head.gates.weight.T + net.head.gates.bias)
    heads = torch.cat([f * gates[:, k * d:(k + 1) * d] for k in range(3)], dim=1)
    rect = heads @ net.head.proj.weight.T + net.head.proj.bias
    torch.testing.assert_close(net(x), plain + rect)
