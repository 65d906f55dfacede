"""Building and loading the C++ kernels, and falling back to PyTorch ops where they cannot be built."""

import pytest
import torch

import convattn
from convattn.layers import _ext, cbam
from convattn.layers import se as se_module


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert not _ext.extensions_enabled()
    assert _ext.cbam_ops() is None


def test_build_failure_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def broken(**kwargs):
        raise RuntimeError("no compiler found\nmore detail")

    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setattr(_ext, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match="could not build its C\\+\\+ kernels .*no compiler found"):
        assert _ext.cbam_ops() is None
    layer = convattn.create_attn("cbam", 8)
    x = torch.randn(2, 8, 5, 6)
    g = layer.channel.weights(x)
    ref = (x * g[:, :, None, None]) * layer.spatial.weights(x * g[:, :, None, None])
    torch.testing.assert_close(layer(x), ref)  # the PyTorch-op path, with no further warning


def test_build_tag_is_stable_and_short():
    assert _ext._build_tag() == _ext._build_tag()
    assert len(_ext._build_tag()) == 8


def _require_ops():
    ops = _ext.cbam_ops()
    if ops is None:
        pytest.skip("convattn's C++ kernels could not be built here (is a C++ compiler installed?)")
    return ops


def test_cbam_takes_the_fused_paths_where_they_apply(monkeypatch):
    ops = _require_ops()
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    monkeypatch.setattr(cbam, "cbam_ops", lambda: Spy())
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    convattn.create_attn("cbam", 8)(x).sum().backward()  # the paper's configuration: whole-layer kernels
    assert calls == ["forward", "backward"]
    calls.clear()
    with torch.no_grad():
        convattn.create_attn("cbam", 8)(x.detach().contiguous(memory_format=torch.channels_last))
    assert calls == ["forward"]
    calls.clear()
    convattn.create_attn("cbam", 8, norm_layer="bn")(x).sum().backward()  # other configurations: the split passes
    assert calls == ["hw_pool", "channel_pool", "apply", "backward_gates", "backward_mask", "backward_input"]
    calls.clear()
    with torch.no_grad():  # eval-mode BatchNorm in inference: folded into the convolution
        convattn.create_attn("cbam", 8, norm_layer="bn").eval()(x)
    assert calls == ["forward"]
    calls.clear()
    layer = convattn.create_attn("cbam", 8)
    layer(x.detach()[:, :, ::2])  # strided: the PyTorch-op path
    layer.bfloat16()(x.detach().bfloat16())  # bfloat16: the PyTorch-op path
    assert calls == []


def test_se_takes_the_fused_path_where_it_applies(monkeypatch):
    ops = _ext.se_ops()
    if ops is None:
        pytest.skip("convattn's C++ kernels could not be built here (is a C++ compiler installed?)")
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    monkeypatch.setattr(se_module, "se_ops", lambda: Spy())
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    convattn.create_attn("se", 8)(x).sum().backward()
    assert calls == ["forward", "backward"]
    calls.clear()
    convattn.create_attn("se", 8, gate_layer="hard_sigmoid")(x).sum().backward()  # not what the kernel computes
    assert calls == []


def _plain_cbam(layer, x):
    g = layer.channel.weights(x)
    refined = x * g[:, :, None, None]
    return refined * layer.spatial.weights(refined)


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 6, 1, 13), (3, 20, 9, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_layer_kernels_match_autograd(kernel_size, bias, shape, channels_last):
    _require_ops()
    torch.manual_seed(0)
    layer = convattn.create_attn("cbam", shape[1], rd_channels=3, bias=bias, kernel_size=kernel_size).double()
    with torch.no_grad():
        for q in layer.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)
    ours = layer(x)
    ref = _plain_cbam(layer, x)
    torch.testing.assert_close(ours, ref)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref)
    params = list(layer.parameters())
    for u, v in zip(torch.autograd.grad(ours, [x, *params], dy), torch.autograd.grad(ref, [x, *params], dy)):
        torch.testing.assert_close(u, v)


def test_whole_layer_kernels_with_frozen_parts():
    _require_ops()
    layer = convattn.create_attn("cbam", 12, rd_channels=3, bias=True)
    layer.channel.fc1.requires_grad_(False)
    x = torch.randn(2, 12, 6, 5)  # no input gradient wanted: the backward skips it
    ours = torch.autograd.grad(layer(x).square().sum(), [q for q in layer.parameters() if q.requires_grad])
    ref = torch.autograd.grad(_plain_cbam(layer, x).square().sum(), [q for q in layer.parameters() if q.requires_grad])
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 5, 1, 17), (3, 40, 9, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_kernels_match_pytorch_ops(shape, channels_last):
    ops = _require_ops()
    torch.manual_seed(0)
    b, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g, a = torch.rand(b, c, dtype=torch.float64), torch.rand(b, 1, h, w, dtype=torch.float64)
    avg, top = ops.hw_pool(x)
    torch.testing.assert_close(avg, x.mean((2, 3)))
    torch.testing.assert_close(top, x.amax((2, 3)))
    gx = x * g[:, :, None, None]
    stats = ops.channel_pool(x, g)
    torch.testing.assert_close(stats, torch.stack((gx.mean(1), gx.amax(1)), 1))
    out = ops.apply(x, g, a)
    torch.testing.assert_close(out, gx * a)
    assert out.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    dout = torch.randn(shape, dtype=torch.float64)
    peak = stats[:, 1]
    da, dg, count, count_hw = ops.backward_gates(x, dout, g, a, peak, top)
    torch.testing.assert_close(da, (gx * dout).sum(1).flatten(1))
    torch.testing.assert_close(dg, (x * dout * a).sum((2, 3)))
    mask = (gx == peak[:, None]).double()
    torch.testing.assert_close(count, mask.sum(1).flatten(1))
    top_mask = (x == top[:, :, None, None]).double()
    torch.testing.assert_close(count_hw, top_mask.sum((2, 3)))
    dmean, share = torch.randn(b, h, w, dtype=torch.float64), torch.randn(b, h, w, dtype=torch.float64)
    torch.testing.assert_close(
        ops.backward_mask(x, g, peak, dmean, share), (x * (dmean[:, None] + mask * share[:, None])).sum((2, 3))
    )
    davg, dtop = torch.randn(b, c, dtype=torch.float64), torch.randn(b, c, dtype=torch.float64)
    dx = ops.backward_input(x, dout, g, a, peak, dmean, share, davg, top, dtop)
    ref = g[:, :, None, None] * (dout * a + dmean[:, None] + mask * share[:, None]) + davg[:, :, None, None]
    torch.testing.assert_close(dx, ref + top_mask * dtop[:, :, None, None])


def test_kernels_reject_bad_input():
    ops = _require_ops()
    with pytest.raises(RuntimeError, match="expected a 4-D"):
        ops.hw_pool(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match="contiguous or channels-last"):
        ops.apply(torch.randn(2, 3, 4, 5)[:, :, ::2], torch.rand(2, 3), torch.rand(2, 1, 2, 5))
    x = torch.randn(2, 8, 4, 4)
    w1, w2, wc, bc = torch.randn(2, 8), torch.randn(8, 2), torch.randn(1, 2, 7, 7), torch.randn(1)
    with pytest.raises(RuntimeError, match=r"fc1.weight of shape \(R, 8\)"):
        ops.forward(x, torch.randn(2, 7), None, w2, None, wc, bc)
    with pytest.raises(RuntimeError, match="odd k"):
        ops.forward(x, w1, None, w2, None, torch.randn(1, 2, 4, 4), bc)


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_flop_counter_sees_pytorch_ops(name, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    layer, x = convattn.create_attn(name, 16), torch.randn(2, 16, 8, 8)

    def flops():
        with FlopCounterMode(display=False) as counter:
            layer(x)
        return counter.get_total_flops()

    with_kernels = flops()
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert with_kernels == flops() > 0


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_parameter_gradients_are_reproducible_with_threads(name):
    if _ext.se_ops() is None or _ext.cbam_ops() is None:
        pytest.skip("convattn's C++ kernels could not be built here (is a C++ compiler installed?)")
    layer, x = convattn.create_attn(name, 16, bias=True), torch.randn(9, 16, 6, 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # uneven chunks over the batch
    try:
        first = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
        for _ in range(5):
            again = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
            for u, v in zip(first, again):
                assert torch.equal(u, v)
    finally:
        torch.set_num_threads(threads)


def test_eval_batchnorm_is_folded_exactly():
    _require_ops()
    torch.manual_seed(0)
    layer = convattn.create_attn("cbam", 16, norm_layer="bn").double()
    with torch.no_grad():
        for q in layer.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
        bn = layer.spatial.norm
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    layer.eval()
    x = torch.randn(3, 16, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _plain_cbam(layer, x))
