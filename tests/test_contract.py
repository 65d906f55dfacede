"""Contract tests: every registered layer, whatever its family, keeps the same promises."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import convattn
from convattn.exceptions import ConfigError, DTypeError, ShapeError

NAMES = convattn.list_attn()
C = 16


def _shape(info, b: int, spatial: tuple[int, ...], c: int = C) -> tuple[int, ...]:
    n = info.ndim - 2
    sizes = tuple(spatial[:n]) if len(spatial) >= n else tuple(spatial) + (spatial[-1],) * (n - len(spatial))
    return (b, c, *sizes)


def _build(name: str, c: int = C, **kw) -> nn.Module:
    return convattn.create_attn(name, c, **kw)


def _perturb(module: nn.Module) -> None:
    """Move every parameter off its initial value so zero-initialised gates pass gradients."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def _check_output(info, out, x):
    if info.kind == "gate":
        assert out.shape == x.shape
    elif info.kind == "pool":
        assert out.dim() == 2 and out.shape[0] == x.shape[0]
    else:
        assert out.dim() == x.dim() and out.shape[0] == x.shape[0]
    assert torch.isfinite(out).all()


def test_registry_is_populated():
    assert len(NAMES) >= 1
    for name in NAMES:
        info = convattn.get_attn_info(name)
        assert info.paper and info.kind in ("gate", "conv", "pool")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial", [(8, 8), (7, 9), (5, 4)])
@pytest.mark.parametrize("batch", [1, 2])
def test_shapes_train_and_eval(name, spatial, batch):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    x = torch.randn(_shape(info, batch, spatial))
    for mode in (True, False):
        layer.train(mode)
        out = layer(x)
        _check_output(info, out, x)


@pytest.mark.parametrize("name", NAMES)
def test_batch_one_at_the_smallest_size_in_eval(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    x = torch.randn(_shape(info, 1, (max(1, info.min_size),) * 2))
    _check_output(info, layer(x), x)


def _float_buffers(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.named_buffers() if v.is_floating_point()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch(name, training):
    """B = 0 (an uneven split's last shard, a filtered batch): an empty output of the right shape,
    a backward that reaches the input with zero parameter gradients, running statistics untouched."""
    info = convattn.get_attn_info(name)
    layer = _build(name).train(training)
    _perturb(layer)
    before = _float_buffers(layer)
    x = torch.randn(_shape(info, 0, (6, 7)), requires_grad=True)
    out = layer(x)
    _check_output(info, out, x)
    assert out.shape[0] == 0
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is None or not p.grad.any() for p in layer.parameters())
    assert all(torch.equal(v, before[k]) for k, v in _float_buffers(layer).items())


@pytest.mark.parametrize("name", ["se", "cbam", "cbam_channel", "cbam_spatial"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch_kernels_on_and_off_agree(name, training, monkeypatch):
    def run():
        torch.manual_seed(0)
        layer = _build(name, bias=True) if name != "cbam_spatial" else _build(name)
        layer.train(training)
        x = torch.randn(0, C, 6, 7, requires_grad=True)
        out = layer(x)
        out.sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in layer.parameters()]
        return out, x.grad, grads

    out, dx, grads = run()
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    ref, ref_dx, ref_grads = run()
    assert out.shape == ref.shape == (0, C, 6, 7) and dx.shape == ref_dx.shape == (0, C, 6, 7)
    for u, v in zip(grads, ref_grads):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    _perturb(layer)
    x = torch.randn(_shape(info, 2, (8, 7)), requires_grad=True)
    layer(x).square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert x.grad is not None and x.grad.abs().sum() > 0
    total = sum(p.grad.abs().sum() for p in layer.parameters() if p.grad is not None)
    assert not list(layer.parameters()) or total > 0


@pytest.mark.parametrize("name", NAMES)
def test_output_may_be_modified_in_place(name):
    # ResNet blocks add the shortcut in place (`out += identity`) and apply ReLU(inplace=True)
    # to whatever the attention layer returns; its backward must not need that tensor unchanged.
    info = convattn.get_attn_info(name)
    if info.kind == "pool":
        pytest.skip("pooling layers end a network; nothing adds to their output in place")
    layer = _build(name)
    _perturb(layer)
    x = torch.randn(_shape(info, 2, (8, 7)), requires_grad=True)
    out = layer(x)
    out += 1.0
    torch.relu_(out)
    out.square().sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    info = convattn.get_attn_info(name)
    a, b = _build(name), _build(name)
    _perturb(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    a.eval(), b.eval()
    x = torch.randn(_shape(info, 2, (6, 5)))
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("name", NAMES)
def test_torch_export(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    _perturb(layer)
    x = torch.randn(_shape(info, 2, (6, 5)))
    exported = torch.export.export(layer, (x,)).module()
    torch.testing.assert_close(exported(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).double().eval()
    _perturb(layer)
    side = max(3, info.min_size)
    x = torch.randn(_shape(info, 2, (side, side + 1)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-4, nondet_tol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_documented_errors(name):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    good = _shape(info, 2, (6, 6))
    with pytest.raises(ShapeError, match=type(layer).__name__):
        layer(torch.randn(good[1:]))  # batch dimension missing
    with pytest.raises(ShapeError, match=type(layer).__name__):
        layer(torch.randn(good[0], C + 1, *good[2:]))
    with pytest.raises(DTypeError, match=type(layer).__name__):
        layer(torch.ones(good, dtype=torch.long))
    if info.min_size > 1:
        with pytest.raises(ShapeError):
            layer(torch.randn(_shape(info, 2, (1, 1))))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [0, -3, 2.5])
def test_bad_channels_raise(name, channels):
    with pytest.raises(ConfigError, match="channels"):
        _build(name, c=channels)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_raises(name):
    with pytest.raises(TypeError, match="rd_ration"):
        _build(name, rd_ration=0.5)


@pytest.mark.parametrize("name", NAMES)
def test_recording_is_off_by_default_and_on_inside_context(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    x = torch.randn(_shape(info, 2, (6, 7)))
    if not isinstance(layer, convattn.layers.RecordsAttention):
        pytest.skip(f"{name} has no attention map to record")
    with convattn.record_attention(layer) as maps:
        recorded_out = layer(x)
    assert maps, f"{name} recorded nothing"
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == 2 for t in maps.values())
    assert layer.recording is False
    torch.testing.assert_close(layer(x), recorded_out, rtol=1e-5, atol=1e-5)
