"""SE's identity blend ``x + γ (SE(x) − x)`` computed in the kernels (``forward_blended``, the
``convattn_se_blend`` ops) against the plain blend, in every workflow, with the kernels on and off."""

import pytest
import torch

import convattn
from convattn.models import IdentityBlend
from kernel_checks import (
    check_autocast_after_conv,
    check_blend_matches_plain,
    check_compile_matches_eager,
    check_gradgradcheck,
    check_opcheck,
    check_penalty_matches_plain_autograd,
    check_vmap_grad_matches_loop,
    kernel_backends,
)


backend = kernel_backends("convattn_se")


def _se(channels=8, **kw):
    torch.manual_seed(1)
    se = convattn.create_attn("se", channels, rd_channels=3, **kw)
    with torch.no_grad():
        for q in se.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
    return se


def _blend(gamma=0.3, **kw):
    blend = IdentityBlend(_se(**kw), gamma=gamma)
    blend.channels = blend.layer.channels  # for the shared checks
    return blend


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 13), (3, 9, 11)])
def test_blend_matches_plain_blend(backend, bias, channels_last, shape):
    check_blend_matches_plain(_se(bias=bias), kernels=backend == "cpp", channels_last=channels_last, shape=shape)


def test_identity_at_zero_and_the_module_uses_the_kernels(backend):
    blend = _blend(gamma=0.0)
    x = torch.randn(2, 8, 5, 6)
    assert torch.equal(blend(x), x)
    assert (blend.layer.forward_blended(x, blend.gamma) is not None) == (backend == "cpp")


def test_blend_records_the_gates():
    blend = _blend()
    x = torch.randn(2, 8, 4, 5)
    with convattn.record_attention(blend) as maps:
        y = blend(x)
    (g,) = maps.values()
    assert g.shape == (2, 8)
    torch.testing.assert_close(y, x + blend.gamma * (x * g[:, :, None, None] - x))


def test_frozen_gamma_and_frozen_input():
    blend = _blend()
    blend.gamma.requires_grad_(False)
    x = torch.randn(2, 8, 5, 6)
    trainable = list(blend.layer.parameters())
    ours = torch.autograd.grad(blend(x).square().sum(), trainable)
    ref = torch.autograd.grad((x + blend.gamma * (blend.layer(x) - x)).square().sum(), trainable)
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v)


def test_mixed_dtypes_take_the_plain_blend():
    blend = _blend().double()
    blend.gamma.data = blend.gamma.data.float()  # γ in another dtype than the input: no kernel
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    assert blend.layer.forward_blended(x, blend.gamma) is None
    torch.testing.assert_close(blend(x), x + blend.gamma * (blend.layer(x) - x))


def test_opcheck_blend_ops(backend):
    if backend != "cpp":
        pytest.skip("the custom ops exist with the kernels only")
    from convattn.layers._se_ops import se_blend_ops

    for dtype, bias, channels_last in [(torch.float32, True, False), (torch.float64, False, True)]:
        se = _se(bias=bias).to(dtype)
        x = torch.randn(2, 8, 5, 4, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        gamma = torch.tensor(0.4, dtype=dtype, requires_grad=True)
        params = [gamma, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias]
        check_opcheck(se_blend_ops(), x.requires_grad_(), params)


# --- the workflows of the toolchain, through IdentityBlend -------------------------------------
def test_gradgradcheck_float64():
    check_gradgradcheck(_blend())


def test_gradient_penalty_matches_plain_autograd():
    check_penalty_matches_plain_autograd(_blend())


def test_per_sample_gradients_with_vmap():
    check_vmap_grad_matches_loop(_blend())


def test_autocast_bfloat16_after_a_convolution():
    check_autocast_after_conv(_blend())


def test_compile_fullgraph_matches_eager():
    check_compile_matches_eager(_blend())

