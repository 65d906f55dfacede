"""SE against a transcription of Hu et al. (CVPR 2018), Eq. 2–4, on both CPU paths
(the whole-layer C++ kernels and PyTorch ops)."""

import pytest
import torch

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


backend = kernel_backends("convattn_se")


def reference_se(x, w1, b1, w2, b2):
    # Eq. 2: z_c = 1/(HW) Σ_ij u_c(i, j);  Eq. 3: s = σ(W2 δ(W1 z));  Eq. 4: x̃_c = s_c · u_c
    z = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * s[:, :, None, None]


def test_matches_paper_equations():
    se = convattn.create_attn("se", 32, rd_ratio=1 / 4)
    x = torch.randn(3, 32, 5, 7)
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    torch.testing.assert_close(se(x), reference_se(x, w1, b1, w2, b2))


def test_reduction_width_follows_paper_ratio():
    assert convattn.create_attn("se", 64).fc1.out_channels == 4  # C/16, no rounding to 8
    assert convattn.create_attn("se", 64, rd_channels=10).fc1.out_channels == 10
    assert convattn.create_attn("se", 64, rd_ratio=0.25, rd_divisor=8).fc1.out_channels == 16


@pytest.mark.parametrize("bad", [dict(rd_ratio=0.0), dict(rd_ratio=1.5), dict(rd_channels=0), dict(act_layer="rleu")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SqueezeExcite"):
        convattn.create_attn("se", 16, **bad)


def test_records_channel_weights():
    se = convattn.create_attn("se", 16)
    x = torch.randn(2, 16, 4, 4)
    with convattn.record_attention(se) as maps:
        y = se(x)
    (w,) = maps.values()
    assert w.shape == (2, 16)
    torch.testing.assert_close(y, x * w[:, :, None, None])


def _randomized(se):
    torch.manual_seed(1)
    with torch.no_grad():
        for q in se.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
    return se


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (2, 8, 1, 13), (3, 40, 9, 11)])
def test_gradients_match_paper_equations(bias, channels_last, shape):
    se = _randomized(convattn.create_attn("se", shape[1], rd_channels=3, bias=bias)).double()
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)
    w1, w2 = se.fc1.weight.flatten(1), se.fc2.weight.flatten(1)
    b1, b2 = (se.fc1.bias, se.fc2.bias) if bias else (0, 0)
    ours, ref = se(x), reference_se(x, w1, b1, w2, b2)
    torch.testing.assert_close(ours, ref)
    params = list(se.parameters())
    for u, v in zip(torch.autograd.grad(ours, [x, *params], dy), torch.autograd.grad(ref, [x, *params], dy)):
        torch.testing.assert_close(u, v)


def test_frozen_parts_and_no_input_gradient():
    se = _randomized(convattn.create_attn("se", 16, rd_channels=4))
    se.fc2.requires_grad_(False)
    x = torch.randn(2, 16, 5, 6)
    trainable = [q for q in se.parameters() if q.requires_grad]
    ours = torch.autograd.grad(se(x).square().sum(), trainable)
    w1, b1, w2, b2 = se.fc1.weight.flatten(1), se.fc1.bias, se.fc2.weight.flatten(1), se.fc2.bias
    ref = torch.autograd.grad(reference_se(x, w1, b1, w2, b2).square().sum(), trainable)
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v)


def test_gradcheck_float64():
    se = _randomized(convattn.create_attn("se", 8, rd_channels=3)).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, *p: se(x), (x, *se.parameters()), eps=1e-6, atol=1e-5)


# --- the workflows of the toolchain, with the kernels on (fixture "cpp") and off -------------
@pytest.mark.parametrize("bias", [True, False])
def test_gradgradcheck_float64(bias):
    check_gradgradcheck(_randomized(convattn.create_attn("se", 4, rd_channels=2, bias=bias)))


def test_gradient_penalty_matches_plain_autograd():
    check_penalty_matches_plain_autograd(_randomized(convattn.create_attn("se", 16, rd_channels=4)))


def test_per_sample_gradients_with_vmap():
    check_vmap_grad_matches_loop(_randomized(convattn.create_attn("se", 8, rd_channels=4)))


def test_autocast_bfloat16_after_a_convolution():
    check_autocast_after_conv(convattn.create_attn("se", 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters(dtype):
    check_low_precision_parameters(_randomized(convattn.create_attn("se", 16, rd_channels=4)), dtype)


def test_compile_fullgraph_matches_eager():
    check_compile_matches_eager(_randomized(convattn.create_attn("se", 8, rd_channels=4)))
