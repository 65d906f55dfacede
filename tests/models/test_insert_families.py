"""insert_attn on every CNN family it places layers in: positions, forward/backward, identity, weights, tools.

The networks are the smallest members of each family (tests/models/_families.py);
one is built per family and copied for each placement × layer.
"""

from __future__ import annotations

import copy
import io
import operator

import pytest
import torch
from _families import FAMILIES
from torch import nn

from convattn.exceptions import ConfigError
from convattn.models import IdentityBlend, WithAttention, attn_positions, insert_attn
from convattn.models._wrappers import AttentionChain, is_inserted
from convattn.models._families import is_existing_attention

WHERES = ("block", "stage", "conv", "replace")
LAYERS = ("se", "cbam", "eca", "coord", "non_local")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
_BUILT: dict[str, nn.Module] = {}


def _plain(family: str) -> nn.Module:
    """The family's network (built once), in eval mode with non-trivial BN statistics."""
    if family not in _BUILT:
        torch.manual_seed(0)
        net = FAMILIES[family][0]().eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # timm zero-inits the last BN
            for name, p in net.named_parameters():
                if name.rpartition(".")[2] in ("layer_scale", "gamma"):  # ConvNeXt's 1e-6 layer scale
                    p.fill_(1.0)
        net.requires_grad_(False)  # only the inserted layers need gradients in these tests
        _BUILT[family] = net
    return _BUILT[family]


def _inserted_layers(net: nn.Module) -> list[nn.Module]:
    out = []
    for m in net.modules():
        if isinstance(m, IdentityBlend) or (is_inserted(m) and not isinstance(m, nn.Sequential)):
            if not any(m in list(o.modules()) for o in out):
                out.append(m)
    return out


def _layers_for(where: str) -> tuple[str, ...]:
    # the non-local block (an N×N attention over positions) goes after stages, as in its paper
    return LAYERS if where == "stage" else LAYERS[:-1]


CASES = [(f, w) for f, (_, exp) in FAMILIES.items() for w in WHERES if w in exp]


@pytest.mark.parametrize("family,where", CASES, ids=[f"{f}-{w}" for f, w in CASES])
def test_family_placement(family, where):
    """Positions, forward + backward, identity at insertion and loading the plain weights, per layer."""
    plain = _plain(family)
    expected = FAMILIES[family][1][where]
    plain_sd = plain.state_dict()
    with torch.no_grad():
        ref = plain(X)
    positions = attn_positions(plain, where)
    assert len(positions) == expected, positions
    assert all(p.width > 0 for p in positions)
    for name in _layers_for(where):
        net = copy.deepcopy(plain)
        identity = where != "replace"
        insert_attn(net, name, where=where, identity_init=identity)
        added = _inserted_layers(net)
        assert len(added) == expected, (name, len(added))
        out = net(X)
        assert out.shape == ref.shape
        if identity:
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6, msg=f"{name}: identity_init changed the output")
        out.float().pow(2).sum().backward()
        for layer in added:
            assert all(p.grad is not None for p in layer.parameters()), f"{name}: no gradient reached {type(layer)}"
        # the plain network's weights load; only the new layers' keys are missing
        res = net.load_state_dict(plain_sd, strict=False)
        # (a BatchNorm inside a new layer fills in a missing num_batches_tracked itself)
        new_keys = sum(1 for layer in added for k in layer.state_dict() if not k.endswith("num_batches_tracked"))
        assert len(res.missing_keys) == new_keys, (name, res.missing_keys[:5])
        if where == "replace":
            assert res.unexpected_keys and all(
                any(s in k for s in ("se", "attn", "block", "f.")) for k in res.unexpected_keys
            )
        else:
            assert res.unexpected_keys == []
            with torch.no_grad():
                torch.testing.assert_close(net(X), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_unplaceable_where_raises(family):
    """A placement a family does not have raises a ConfigError that says what was found."""
    plain = _plain(family)
    for where in WHERES:
        if where in FAMILIES[family][1]:
            continue
        with pytest.raises(ConfigError, match=r"found|where="):
            attn_positions(plain, where)


def _fx_leaf_tracer() -> torch.fx.Tracer:
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return is_inserted(m) and not isinstance(m, nn.Sequential) or super().is_leaf_module(m, qualname)

    return Tracer()


TOOL_FAMILIES = ["tv_resnet_basic", "tv_mobilenet_v3", "tv_efficientnet", "tv_regnet_y", "tv_convnext", "tv_densenet",
                 "tv_shufflenet_v2", "tv_vgg_bn", "timm_seresnet", "timm_regnetx", "timm_efficientnet",
                 "timm_convnext", "timm_cspnet"]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_tools_keep_the_attention(family):
    """SyncBatchNorm conversion, deepcopy, pickle, FX, fusion, BN freezing and channels_last keep the layers."""
    plain = _plain(family)
    net = copy.deepcopy(plain)
    where = "block"
    insert_attn(net, "cbam", where=where)
    n_layers = len(attn_positions(plain, where))
    with torch.no_grad():
        ref, base = net(X), plain(X)
    assert not torch.allclose(ref, base, atol=1e-4), "the attention is not active"

    def same(other: nn.Module, x: torch.Tensor = X) -> None:
        with torch.no_grad():
            torch.testing.assert_close(other(x), ref, rtol=1e-4, atol=1e-5)

    # timm's norm+act layers need timm's converter (torch's drops their activation, attention or not)
    from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d

    convert = convert_sync_batchnorm if family.startswith("timm") else nn.SyncBatchNorm.convert_sync_batchnorm
    sync = convert(copy.deepcopy(net)).eval()
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules()) == has_bn
    same(sync)
    same(copy.deepcopy(net))
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    same(torch.load(buf, weights_only=False))
    same(copy.deepcopy(net).to(memory_format=torch.channels_last), X.to(memory_format=torch.channels_last))
    # rebuilds of norm layers: BN freezing replaces every BatchNorm2d by a FrozenBatchNorm2d
    same(freeze_batch_norm_2d(copy.deepcopy(net)))
    # FX (attention layers as leaves: the graph must call each of them) and conv-BN fusion on the graph
    try:
        graph = _fx_leaf_tracer().trace(copy.deepcopy(plain))
    except Exception:  # noqa: BLE001 - the family itself is not symbolically traceable
        graph = None
    if graph is not None:
        gm = torch.fx.GraphModule(net, _fx_leaf_tracer().trace(net))
        calls = [n for n in gm.graph.nodes if n.op == "call_module" and is_inserted(gm.get_submodule(n.target))]
        assert len(calls) == n_layers
        same(gm)
        from torch.fx.experimental.optimization import fuse

        fused = fuse(copy.deepcopy(gm), no_trace=True)
        n_bn = sum(type(m) is nn.BatchNorm2d for m in gm.modules())  # timm's BatchNormAct2d is traced through
        assert n_bn == 0 or sum(type(m) is nn.BatchNorm2d for m in fused.modules()) < n_bn
        same(fused)
        # and traced through: the layers' own operations in the graph
        same(torch.fx.symbolic_trace(copy.deepcopy(net)))


def test_feature_extractor_keeps_the_attention():
    from torchvision.models.feature_extraction import create_feature_extractor

    net = copy.deepcopy(_plain("tv_resnet_basic"))
    insert_attn(net, "se", where="block")
    layers = [type(m) for m in _inserted_layers(net)]
    feats = {}
    hook = net.layer3.register_forward_hook(lambda m, i, o: feats.__setitem__("layer3", o))
    with torch.no_grad():
        net(X)
    hook.remove()
    extractor = create_feature_extractor(net, {"layer3": "c4"}, tracer_kwargs={"leaf_modules": layers})
    with torch.no_grad():
        torch.testing.assert_close(extractor(X)["c4"], feats["layer3"])
    assert sum(isinstance(m, tuple(layers)) for m in extractor.modules()) == 3  # layer1..layer3 blocks
    # traced through the layers (their input checks let FX proxies pass): the same features
    extractor = create_feature_extractor(net, {"layer3": "c4"})
    with torch.no_grad():
        torch.testing.assert_close(extractor(X)["c4"], feats["layer3"])


def test_fuse_modules_on_wrapped_norm():
    """torch.ao fuse_modules on a conv and the norm the layer was attached after keeps the layer."""
    from torch.ao.quantization import fuse_modules

    net = copy.deepcopy(_plain("tv_resnet_basic"))
    insert_attn(net, "se")
    with torch.no_grad():
        ref = net(X)
    pairs = [[f"{p.path.rpartition('.')[0]}.conv2", f"{p.path}.module"] for p in attn_positions(_plain("tv_resnet_basic"))]
    fused = fuse_modules(copy.deepcopy(net), pairs)
    assert isinstance(fused.layer1[0].bn2.module, nn.Identity)
    assert fused.layer1[0].bn2.attn[0] is not None
    with torch.no_grad():
        torch.testing.assert_close(fused(X), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,arch", [("tv", "efficientnet_b0"), ("tv", "mobilenet_v3_small")])
def test_replace_se_in_named_networks(family, arch):
    """EfficientNet-B0 and MobileNetV3-Small: every original SE goes, the new layers run, nothing else changes."""
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=4).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    se_paths = [p for p, m in net.named_modules() if is_existing_attention(m)]
    assert se_paths
    insert_attn(net, "eca", where="replace")
    assert not any(is_existing_attention(m) for m in net.modules())
    new = [m for m in net.modules() if type(m).__name__ == "EfficientChannelAttn"]
    assert len(new) == len(se_paths)
    after = net.state_dict()
    kept = {k: v for k, v in before.items() if not any(k.startswith(p + ".") for p in se_paths)}
    assert all(torch.equal(after[k], v) for k, v in kept.items())
    calls = []
    for m in new:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert len(calls) == len(new)


# --------------------------------------------------------------------------- named variants: positions


def _meta(build):
    """Build without allocating weights (positions only need shapes); RegNet computes its widths with tensors."""
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:
        return build()


def _tv(name, **kw):
    import torchvision

    return lambda: getattr(torchvision.models, name)(weights=None, **kw)


def _tm(name):
    import timm

    return lambda: timm.create_model(name, pretrained=False)


NAMED = {
    # name: (builder, block, stage) — counts from the papers' architecture tables
    "resnet18": (_tv("resnet18"), 8, 4),
    "resnext50_32x4d": (_tv("resnext50_32x4d"), 16, 4),
    "wide_resnet50_2": (_tv("wide_resnet50_2"), 16, 4),
    "mobilenet_v2": (_tv("mobilenet_v2"), 17, 7),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), 11, 5),
    "efficientnet_b0": (_tv("efficientnet_b0"), 16, 7),
    "efficientnet_v2_s": (_tv("efficientnet_v2_s"), 40, 6),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), 16, 4),
    "convnext_tiny": (_tv("convnext_tiny"), 18, 4),
    "densenet121": (_tv("densenet121"), 58, 4),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 16, 3),
    "vgg16_bn": (_tv("vgg16_bn"), 5, 5),
    "timm_regnetx_002": (_tm("regnetx_002"), 13, 4),
    "timm_efficientnet_b0": (_tm("efficientnet_b0"), 16, 7),
    "timm_convnext_atto": (_tm("convnext_atto"), 12, 4),
    "timm_cspdarknet53": (_tm("cspdarknet53"), 23, 5),
    "timm_cspresnet50": (_tm("cspresnet50"), 13, 4),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_variant_positions(name):
    build, blocks, stages = NAMED[name]
    net = _meta(build)
    assert len(attn_positions(net, "block")) == blocks
    assert len(attn_positions(net, "stage")) == stages


def test_detection_and_segmentation_backbones():
    from torchvision.models import detection, segmentation

    ssd = _meta(lambda: detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None))
    # SSDLite splits MobileNetV3-Large's C4 block in two: 14 whole blocks remain
    assert len(attn_positions(ssd.backbone, "block")) == 14
    lraspp = _meta(lambda: segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None))
    assert len(attn_positions(lraspp.backbone, "replace")) == 8
    deeplab = _meta(lambda: segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None))
    assert [p.path for p in attn_positions(deeplab.backbone, "stage")] == ["layer1", "layer2", "layer3", "layer4"]
    frcnn = _meta(lambda: detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None))
    assert len(attn_positions(frcnn.backbone.body, "block")) == 15


def test_positions_print_as_a_table():
    table = str(attn_positions(_plain("tv_efficientnet"), "replace"))
    lines = table.splitlines()
    assert lines[0].split() == ["#", "position", "width", "module", "action"]
    assert len(lines) == 1 + FAMILIES["tv_efficientnet"][1]["replace"]
    assert "SqueezeExcitation" in lines[1] and lines[1].split()[-1] == "replace"


def test_channels_last_position_is_refused():
    """A glob on ConvNeXt's channels-last LayerNorm is refused at insertion, not at forward."""
    net = copy.deepcopy(_plain("tv_convnext"))
    with pytest.raises(ConfigError, match="channels-last"):
        insert_attn(net, "se", where="features.1.*.block.2")


def test_densenet_conv_is_not_a_single_stray_position():
    with pytest.raises(ConfigError, match=r"found 1 conv .* covering 1 of the"):
        insert_attn(copy.deepcopy(_plain("tv_densenet")), "se", where="conv")


def test_unknown_family_lists_what_it_found():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Conv2d(3, 8, 3)
            self.norm = nn.BatchNorm2d(8)

        def forward(self, x):
            return self.norm(self.mix(x))

    with pytest.raises(ConfigError, match=r"in Odd; its convolutions sit in: Odd ×1.*where='<glob>'.*callable"):
        attn_positions(Odd(), "block")


def test_second_layer_at_a_wrapped_position_and_replace_after_insert():
    net = copy.deepcopy(_plain("tv_mobilenet_v3"))
    insert_attn(net, "se", where="block")
    insert_attn(net, "cbam", where="block")
    wrapped = [m for m in net.modules() if isinstance(m, WithAttention)]
    assert len(wrapped) == 9  # the nine blocks with an SE; the others append to their depthwise unit
    assert all([type(a).__name__ for a in w.attn] == ["SqueezeExcite", "CBAM"] for w in wrapped)
    insert_attn(net, "eca", where="replace")  # swaps the SE the wrappers hold, keeps the added layers
    assert not any(is_existing_attention(m) for m in net.modules())
    assert all([type(m).__name__ for m in w.module] == ["EfficientChannelAttn"] for w in wrapped)
    with torch.no_grad():
        assert net(X).shape == (2, 4)
    assert operator.eq(len(attn_positions(net, "block")), 11)


@pytest.mark.parametrize("family", [f for f, (_, counts) in FAMILIES.items() if counts.get("replace")])
def test_block_layer_after_a_replacement_follows_it(family):
    """``replace`` then ``block``: the added layer refines the replacement's output, as it refines
    the block's own attention when nothing was replaced."""
    net = copy.deepcopy(_plain(family))
    replaced = len(attn_positions(net, "replace"))
    insert_attn(net, "eca", where="replace")
    insert_attn(net, "se", where="block")
    after_eca = [m for m in net.modules() if isinstance(m, WithAttention) and isinstance(m.module, AttentionChain)
                 and type(m.module[0]).__name__ == "EfficientChannelAttn"]
    assert len(after_eca) == replaced
    assert all(type(w.attn[0]).__name__ == "SqueezeExcite" for w in after_eca)
    with torch.no_grad():
        assert net(X).shape[0] == 2
