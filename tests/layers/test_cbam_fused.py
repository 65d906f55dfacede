"""CBAM's kernels beyond the paper's configuration: BatchNorm after the spatial convolution (the
official code's and timm's) in training and evaluation, and the identity blend computed inside the
kernels (``CBAM.forward_blended``), each against the plain PyTorch-op path."""

import copy

import pytest
import torch

import convattn
from convattn.layers import cbam as cbam_module
from convattn.models import IdentityBlend
from kernel_checks import (
    check_autocast_after_conv,
    check_compile_matches_eager,
    check_penalty_matches_plain_autograd,
    check_vmap_grad_matches_loop,
    require,
)


@pytest.fixture(autouse=True)
def ops():
    return require("convattn_cbam")


@pytest.fixture
def spy(monkeypatch, ops):
    """The ``convattn_cbam`` ops the layer calls (none where ``CONVATTN_EXTENSIONS=0``)."""
    calls = []
    loader = cbam_module.cbam_ops

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    monkeypatch.setattr(cbam_module, "cbam_ops", lambda s=Spy(): s if loader() is not None else None)
    return calls


def _layer(norm_layer="bn", dtype=torch.float64, **kw):
    torch.manual_seed(0)
    layer = convattn.create_attn("cbam", 8, rd_channels=3, norm_layer=norm_layer, **kw).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def _run(module, x, steps, plain, monkeypatch):
    """Outputs, input and parameter gradients, and buffers after ``steps`` forward/backward passes."""
    with monkeypatch.context() as mp:
        if plain:
            mp.setenv("CONVATTN_EXTENSIONS", "0")
        module.zero_grad(set_to_none=True)
        results = []
        for step in range(steps):
            xs = (x * (1 + step)).detach().requires_grad_()
            out = module(xs)
            weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            (out * weight).sum().backward()
            results += [out.detach(), xs.grad]
        return results + [p.grad for p in module.parameters()] + list(module.buffers())


def _pair(module):
    """``module`` and a copy of it as it is now (before either runs)."""
    return module, copy.deepcopy(module)


def _same_as_plain(module, x, monkeypatch, steps=2):
    ours, ref = _pair(module)
    a = _run(ours, x, steps, False, monkeypatch)
    b = _run(ref, x, steps, True, monkeypatch)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u is not None and v is not None
        tol = 1e-12 if u.dtype == torch.float64 else 2e-5
        torch.testing.assert_close(u.double(), v.double(), rtol=tol, atol=tol * float(v.double().abs().max().clamp_min(1)))


def _input(dtype=torch.float64, channels_last=False, shape=(3, 8, 7, 6)):
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --- BatchNorm in training and evaluation ---------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batchnorm_training_matches_plain_with_running_statistics(dtype, channels_last, monkeypatch, spy):
    layer = _layer(dtype=dtype).train()
    _same_as_plain(layer, _input(dtype, channels_last), monkeypatch)
    assert spy and set(spy) == {"bn_forward"}
    assert int(layer.spatial.norm.num_batches_tracked) == 2


@pytest.mark.parametrize(
    "bn_kw", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False), dict(momentum=0.5, eps=1e-2)]
)
def test_batchnorm_variants_match_plain(bn_kw, monkeypatch, spy):
    layer = _layer()
    layer.spatial.norm = torch.nn.BatchNorm2d(1, dtype=torch.float64, **bn_kw)
    if layer.spatial.norm.weight is not None:
        with torch.no_grad():
            layer.spatial.norm.weight.fill_(1.3), layer.spatial.norm.bias.fill_(-0.2)
    for training in (True, False):  # without running statistics evaluation normalises with the batch's too
        _same_as_plain(layer.train(training), _input(), monkeypatch)
    assert spy.count("bn_forward") == 4


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_evaluation_with_gradients_matches_plain(channels_last, monkeypatch, spy):
    layer = _layer().eval()
    with torch.no_grad():
        layer.spatial.norm.running_mean.fill_(0.3), layer.spatial.norm.running_var.fill_(2.0)
    _same_as_plain(layer, _input(channels_last=channels_last), monkeypatch)
    with torch.no_grad():
        layer(_input())
    assert spy == ["bn_forward"] * 3


def test_batchnorm_with_one_value_per_channel_raises_as_batchnorm_does(spy):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        _layer().train()(_input(shape=(1, 8, 1, 1)))
    assert spy == []


def test_batchnorm_training_gradcheck_and_gradgradcheck():
    layer = _layer().train()
    x = _input(shape=(2, 8, 3, 3)).requires_grad_()
    params = list(layer.parameters())
    torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
    torch.autograd.gradgradcheck(lambda x, *p: layer(x), (x, *params))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_opcheck(ops, training):
    layer = _layer(dtype=torch.float32)
    bn = layer.spatial.norm
    x = _input(torch.float32, channels_last=training).requires_grad_()
    ch = layer.channel
    running = (None, None) if training else (bn.running_mean, bn.running_var)
    params = [ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, layer.spatial.conv.weight, bn.weight, bn.bias]
    gamma = torch.tensor(0.4, requires_grad=True)
    for g in (None, gamma):
        torch.library.opcheck(ops.bn_forward.default, (x, *params, *running, bn.eps, g))
    detached = [p if p is None else p.detach() for p in params]
    saved = ops.bn_forward(x.detach(), *detached, *running, bn.eps)[1:]
    for need_dx in (True, False):
        args = (x.detach(), torch.randn_like(x), *detached, *running, *saved, bn.eps, need_dx, gamma.detach())
        torch.library.opcheck(ops.bn_backward.default, args, test_utils=("test_schema", "test_faketensor"))


def test_batchnorm_workflows_match_plain_autograd():
    check_penalty_matches_plain_autograd(_layer(dtype=torch.float32).train())
    check_compile_matches_eager(_layer(dtype=torch.float32).train())
    check_autocast_after_conv(_layer(dtype=torch.float32).train())
    check_vmap_grad_matches_loop(_layer(dtype=torch.float32).eval())


@pytest.mark.parametrize("blend", [False, True])
def test_fx_symbolic_trace_of_the_batchnorm_configuration_records_pytorch_ops(blend, spy):
    layer = _layer(dtype=torch.float32).train()
    module = IdentityBlend(layer, gamma=0.3) if blend else layer
    traced = torch.fx.symbolic_trace(module)
    assert "convattn_" not in traced.code
    x = _input(torch.float32)
    torch.testing.assert_close(traced(x), copy.deepcopy(module)(x), rtol=2e-5, atol=2e-5)
    assert spy == ["bn_forward"]  # the eager call; the traced program took PyTorch ops


# --- the identity blend inside the kernels ----------------------------------------------------
@pytest.mark.parametrize("norm_layer,training", [(None, True), ("bn", True), ("bn", False)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blend_matches_plain_blend(norm_layer, training, channels_last, dtype, monkeypatch, spy):
    blend = IdentityBlend(_layer(norm_layer, dtype).train(training), gamma=0.3).to(dtype)
    _same_as_plain(blend, _input(dtype, channels_last), monkeypatch)
    assert blend.gamma.grad is not None
    assert set(spy) == {"bn_forward" if norm_layer else "forward"}


@pytest.mark.parametrize("norm_layer", [None, "bn"])
def test_blend_gradgradcheck(norm_layer):
    blend = IdentityBlend(_layer(norm_layer).train(), gamma=0.3).double()
    x = _input(shape=(2, 8, 3, 3)).requires_grad_()
    params = list(blend.parameters())
    torch.autograd.gradcheck(lambda x, *p: blend(x), (x, *params))
    torch.autograd.gradgradcheck(lambda x, *p: blend(x), (x, *params))


def test_blend_opcheck(ops):
    layer = _layer(None, torch.float32)
    ch, sp = layer.channel, layer.spatial
    x = _input(torch.float32).requires_grad_()
    params = [ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias]
    gamma = torch.tensor(0.4, requires_grad=True)
    torch.library.opcheck(ops.forward.default, (x, *params, gamma))
    detached = [p if p is None else p.detach() for p in params]
    saved = ops.forward(x.detach(), *detached, gamma.detach())[1:]
    args = (x.detach(), torch.randn_like(x), *detached, *saved, True, gamma.detach())
    torch.library.opcheck(ops.backward.default, args, test_utils=("test_schema", "test_faketensor"))


def test_blend_at_zero_is_the_identity_and_records_maps():
    blend = IdentityBlend(_layer(dtype=torch.float32).train())
    x = _input(torch.float32)
    with convattn.record_attention(blend) as maps:
        out = blend(x)
    torch.testing.assert_close(out, x)
    assert sorted(maps) == ["layer:channel", "layer:spatial"]
    assert maps["layer:channel"].shape == (3, 8) and maps["layer:spatial"].shape == (3, 1, 7, 6)


@pytest.mark.parametrize("kw", [dict(order="parallel"), dict(act_layer="gelu")])
def test_blend_left_to_pytorch_ops_where_the_kernels_cannot_serve(kw, spy):
    layer = _layer(**kw)
    assert layer.forward_blended(_input(), torch.tensor(0.5, dtype=torch.float64)) is None
    assert spy == []
