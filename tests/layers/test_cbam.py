"""CBAM against a transcription of Woo et al. (ECCV 2018), Eq. 1–3, and against timm's CbamModule,
on both of its CPU paths (the fused C++ kernels and the PyTorch-op formulation)."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError
from kernel_checks import (
    check_autocast_after_conv,
    check_compile_matches_eager,
    check_gradgradcheck,
    check_low_precision_parameters,
    check_penalty_matches_plain_autograd,
    check_vmap_grad_matches_loop,
    kernel_backends,
)


backend = kernel_backends("convattn_cbam")


# --- the paper, written out -------------------------------------------------------------
def ref_channel(x, w0, b0, w1, b1):
    # Eq. 2: Mc(F) = σ(W1(W0(F_avg)) + W1(W0(F_max))), W0 followed by ReLU, weights shared.
    f_avg = x.mean(dim=(2, 3))
    f_max = x.flatten(2).max(dim=2).values

    def mlp(v):
        h = torch.relu(v @ w0.T + (0 if b0 is None else b0))
        return h @ w1.T + (0 if b1 is None else b1)

    return torch.sigmoid(mlp(f_avg) + mlp(f_max))  # (B, C)


def ref_spatial(x, conv_w, conv_b):
    # Eq. 3: Ms(F) = σ(f^{k×k}([AvgPool(F); MaxPool(F)])) with pools along the channel axis.
    f_avg = x.mean(dim=1, keepdim=True)
    f_max = x.max(dim=1, keepdim=True).values
    k = conv_w.shape[-1]
    return torch.sigmoid(F.conv2d(torch.cat([f_avg, f_max], 1), conv_w, conv_b, padding=k // 2))


def ref_cbam(x, params, order="channel_first"):
    w0, b0, w1, b1, cw, cb = params
    if order == "channel_first":  # Eq. 1: F' = Mc(F) ⊗ F, F'' = Ms(F') ⊗ F'
        f1 = ref_channel(x, w0, b0, w1, b1)[:, :, None, None] * x
        return ref_spatial(f1, cw, cb) * f1
    if order == "spatial_first":
        f1 = ref_spatial(x, cw, cb) * x
        return ref_channel(f1, w0, b0, w1, b1)[:, :, None, None] * f1
    return ref_channel(x, w0, b0, w1, b1)[:, :, None, None] * ref_spatial(x, cw, cb) * x


def params_of(layer):
    ch, sp = layer.channel, layer.spatial
    return (ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias)


def randomize(layer):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


# --- tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["channel_first", "spatial_first", "parallel"])
@pytest.mark.parametrize("kernel_size,bias", [(7, False), (3, True)])
def test_cbam_matches_paper(order, kernel_size, bias):
    layer = convattn.create_attn("cbam", 32, rd_ratio=1 / 8, kernel_size=kernel_size, bias=bias, order=order)
    randomize(layer)
    x = torch.randn(3, 32, 7, 9)
    expected = ref_cbam(x, params_of(layer), order)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(xc), expected, rtol=1e-5, atol=1e-5)


def test_cbam_gradients_match_paper():
    layer = convattn.create_attn("cbam", 16, rd_channels=4, bias=True)
    randomize(layer)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    g = torch.randn(2, 16, 5, 6)
    grads = torch.autograd.grad((layer(x) * g).sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad((ref_cbam(x, params_of(layer)) * g).sum(), [x, *layer.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channel_and_spatial_modules_match_paper():
    x = torch.randn(2, 24, 5, 4)
    ch = convattn.create_attn("cbam_channel", 24, rd_ratio=1 / 4)
    randomize(ch)
    expected = ref_channel(x, ch.fc1.weight, None, ch.fc2.weight, None)[:, :, None, None] * x
    torch.testing.assert_close(ch(x), expected)
    sp = convattn.create_attn("cbam_spatial", 24, kernel_size=3)
    randomize(sp)
    torch.testing.assert_close(sp(x), ref_spatial(x, sp.conv.weight, sp.conv.bias) * x)


def test_no_hidden_residual():
    layer = convattn.create_attn("cbam", 16)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    x = torch.randn(2, 16, 4, 5)
    torch.testing.assert_close(layer(x), x * 0.25)  # σ(0) · σ(0) · x, nothing added


def test_reduction_width_follows_paper_ratio():
    assert convattn.create_attn("cbam", 64).channel.fc1.out_features == 4
    assert convattn.create_attn("cbam_channel", 64, rd_channels=10).fc1.out_features == 10


def test_matches_timm_cbam_module():
    timm_cbam = pytest.importorskip("timm.layers.cbam")
    theirs = timm_cbam.CbamModule(32, rd_ratio=1 / 8)
    ours = convattn.create_attn("cbam", 32, rd_ratio=1 / 8, norm_layer="bn")
    randomize(theirs)
    with torch.no_grad():
        ours.channel.fc1.weight.copy_(theirs.channel.fc1.weight.flatten(1))
        ours.channel.fc2.weight.copy_(theirs.channel.fc2.weight.flatten(1))
        ours.spatial.conv.weight.copy_(theirs.spatial.conv.conv.weight)  # timm: conv without bias, then BN
        ours.spatial.norm.load_state_dict(theirs.spatial.conv.bn.state_dict())
    x = torch.randn(2, 32, 7, 6)
    for mode in (True, False):
        theirs.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.spatial.norm.running_mean, theirs.spatial.conv.bn.running_mean)


def test_records_channel_and_spatial_maps():
    layer = convattn.create_attn("cbam", 16)
    randomize(layer)
    x = torch.randn(2, 16, 6, 7)
    with convattn.record_attention(layer) as maps:
        y = layer(x)
    assert sorted(maps) == ["CBAM:channel", "CBAM:spatial"]
    g, a = maps["CBAM:channel"], maps["CBAM:spatial"]
    assert g.shape == (2, 16) and a.shape == (2, 1, 6, 7)
    torch.testing.assert_close(y, x * g[:, :, None, None] * a)


@pytest.mark.parametrize("order", ["spatial_first", "parallel"])
def test_export_other_orders(order):
    layer = convattn.create_attn("cbam", 16, order=order, norm_layer="bn").eval()
    randomize(layer)
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(torch.export.export(layer, (x,)).module()(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name,bad",
    [
        ("cbam", dict(kernel_size=4)),
        ("cbam_spatial", dict(kernel_size=0)),
        ("cbam", dict(order="sideways")),
        ("cbam", dict(rd_ratio=2.0)),
        ("cbam_channel", dict(act_layer="rleu")),
        ("cbam", dict(norm_layer="bnn")),
    ],
)
def test_bad_arguments(name, bad):
    with pytest.raises(ConfigError):
        convattn.create_attn(name, 16, **bad)


def test_training_gradients_match_timm_with_batchnorm():
    timm_cbam = pytest.importorskip("timm.layers.cbam")
    theirs = timm_cbam.CbamModule(16, rd_ratio=1 / 4)
    ours = convattn.create_attn("cbam", 16, rd_ratio=1 / 4, norm_layer="bn")
    randomize(theirs)
    with torch.no_grad():
        ours.channel.fc1.weight.copy_(theirs.channel.fc1.weight.flatten(1))
        ours.channel.fc2.weight.copy_(theirs.channel.fc2.weight.flatten(1))
        ours.spatial.conv.weight.copy_(theirs.spatial.conv.conv.weight)
        ours.spatial.norm.load_state_dict(theirs.spatial.conv.bn.state_dict())
    x = torch.randn(3, 16, 6, 5, requires_grad=True)
    g = torch.randn(3, 16, 6, 5)
    ours_p = [ours.channel.fc1.weight, ours.channel.fc2.weight, ours.spatial.conv.weight,
              ours.spatial.norm.weight, ours.spatial.norm.bias]
    theirs_p = [theirs.channel.fc1.weight, theirs.channel.fc2.weight, theirs.spatial.conv.conv.weight,
                theirs.spatial.conv.bn.weight, theirs.spatial.conv.bn.bias]
    a = torch.autograd.grad((ours(x) * g).sum(), [x, *ours_p])
    b = torch.autograd.grad((theirs(x) * g).sum(), [x, *theirs_p])
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v.reshape(u.shape), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.spatial.norm.running_var, theirs.spatial.conv.bn.running_var)


def test_backward_twice_with_retained_graph():
    layer = convattn.create_attn("cbam", 16)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    y = layer(x).sum()
    (g1,) = torch.autograd.grad(y, x, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(g1, g2)


def test_strided_input_and_gradient():
    layer = convattn.create_attn("cbam", 16, bias=True)
    randomize(layer)
    base = torch.randn(2, 16, 7, 5, requires_grad=True)
    x = base.transpose(2, 3)  # (2, 16, 5, 7), neither contiguous nor channels-last
    g = torch.randn(2, 16, 7, 5).transpose(2, 3)
    a = torch.autograd.grad((layer(x) * g).sum(), [base, *layer.parameters()])
    b = torch.autograd.grad((ref_cbam(x, params_of(layer)) * g).sum(), [base, *layer.parameters()])
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


# --- the hand-written training backward: ties in the max pools --------------------------
def ref_cbam_amax(x, params):
    """Eq. 1–3 with both maxima taken by ``amax`` (autograd splits their gradient evenly between
    tied elements): the tie rule documented for the layer's training paths."""
    w0, b0, w1, b1, cw, cb = params
    f_avg, f_max = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))

    def mlp(v):
        h = torch.relu(v @ w0.T + (0 if b0 is None else b0))
        return h @ w1.T + (0 if b1 is None else b1)

    f1 = torch.sigmoid(mlp(f_avg) + mlp(f_max))[:, :, None, None] * x
    pooled = torch.cat([f1.mean(dim=1, keepdim=True), f1.amax(dim=1, keepdim=True)], 1)
    k = cw.shape[-1]
    return torch.sigmoid(F.conv2d(pooled, cw, cb, padding=k // 2)) * f1


def _tied_input(channels_last):
    torch.manual_seed(3)
    x = torch.relu(torch.randn(2, 16, 6, 7))
    x[:, :, 1:3, 2:5] = 0.0  # every channel 0 there: 16-way ties in the channel max
    x[:, 3:6, 4, 1] = 5.0  # equal non-zero maxima across channels (uniform gate below)
    x[0, 7, 0, 0] = x[0, 7, 5, 6] = 9.0  # a tie in one channel's spatial max
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("uniform_gate", [False, True])
def test_training_gradients_with_ties(channels_last, uniform_gate):
    layer = convattn.create_attn("cbam", 16, rd_channels=4, bias=True)
    randomize(layer)
    if uniform_gate:  # W1 = 0: the same gate for every channel, so equal x tie in g·x
        with torch.no_grad():
            layer.channel.fc2.weight.zero_()
    x = _tied_input(channels_last).requires_grad_()
    g = torch.randn(x.shape)
    ours = torch.autograd.grad((layer(x) * g).sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad((ref_cbam_amax(x, params_of(layer)) * g).sum(), [x, *layer.parameters()])
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    # the tie rule matters: giving the whole channel-max gradient to one channel is another answer
    wrong = torch.autograd.grad((ref_cbam(x, params_of(layer)) * g).sum(), x)[0]
    assert not torch.allclose(ours[0], wrong, rtol=1e-4, atol=1e-5)


def test_training_gradients_with_zero_gate():
    # tanh gates of exactly 0 (zero logits) with slope 1 there: the backward's path for g = 0
    layer = convattn.create_attn("cbam", 16, rd_channels=4, bias=True, gate_layer="tanh")
    randomize(layer)
    with torch.no_grad():
        layer.channel.fc2.weight[:5] = 0.0
        layer.channel.fc2.bias[:5] = 0.0
    x = _tied_input(False).requires_grad_()
    g = torch.randn(x.shape)

    def ref(x):
        w0, b0, w1, b1, cw, cb = params_of(layer)
        mlp = lambda v: torch.relu(v @ w0.T + b0) @ w1.T + b1  # noqa: E731
        f1 = torch.tanh(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None] * x
        pooled = torch.cat([f1.mean(dim=1, keepdim=True), f1.amax(dim=1, keepdim=True)], 1)
        return torch.tanh(F.conv2d(pooled, cw, cb, padding=3)) * f1

    assert (layer.channel.weights(x) == 0).any()
    ours = torch.autograd.grad((layer(x) * g).sum(), [x, *layer.parameters()])
    theirs = torch.autograd.grad((ref(x) * g).sum(), [x, *layer.parameters()])
    for u, v in zip(ours, theirs):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64_through_layer(channels_last):
    layer = convattn.create_attn("cbam", 8, rd_channels=3, bias=True).double()
    randomize(layer)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = list(layer.parameters())
    torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params), eps=1e-6, atol=1e-5)


# --- the workflows of the toolchain, with the kernels on (fixture "cpp") and off -------------
def _small(name="cbam", **kw):
    layer = convattn.create_attn(name, 4, **kw)
    randomize(layer)
    return layer


@pytest.mark.parametrize("kw", [dict(rd_channels=3, bias=True, kernel_size=3), dict(rd_channels=2, kernel_size=1)])
def test_gradgradcheck_float64(kw):
    check_gradgradcheck(_small(**kw))


@pytest.mark.parametrize("name", ["cbam_channel", "cbam_spatial"])
def test_gradgradcheck_float64_branches(name):
    check_gradgradcheck(_small(name))


def test_gradient_penalty_matches_plain_autograd():
    check_penalty_matches_plain_autograd(_small(bias=True, rd_channels=3))


def test_gradient_penalty_reaches_every_parameter():
    # the reported failure: no parameters between the attention and the sum, float64
    c, a = torch.nn.Conv2d(3, 16, 3, padding=1).double(), convattn.create_attn("cbam", 16).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(a(c(x)).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in a.parameters())


def test_per_sample_gradients_with_vmap():
    check_vmap_grad_matches_loop(_small(bias=True, rd_channels=3))


@pytest.mark.parametrize("name", ["cbam", "cbam_spatial", "cbam_channel"])
def test_autocast_bfloat16_after_a_convolution(name):
    check_autocast_after_conv(convattn.create_attn(name, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters(dtype):
    check_low_precision_parameters(_small(bias=True, rd_channels=3), dtype)


def test_compile_fullgraph_matches_eager():
    check_compile_matches_eager(_small(bias=True, rd_channels=3))
