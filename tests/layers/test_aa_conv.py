"""Attention-augmented convolution against a transcription of Bello et al. (ICCV 2019), Eq. 1–5."""

import math

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def rel_logits(q, emb_h, emb_w, h, w, max_size):
    # Eq. 3: l_ij = q_iᵀ (r^W_{j_x - i_x} + r^H_{j_y - i_y}), offsets clipped to the table.
    m = max_size - 1
    clip = lambda d: max(-m, min(m, d)) + m  # noqa: E731
    pos = [(y, x) for y in range(h) for x in range(w)]
    r = torch.stack([
        torch.stack([emb_h[clip(pj[0] - pi[0])] + emb_w[clip(pj[1] - pi[1])] for pj in pos]) for pi in pos
    ])
    return torch.einsum("bid,ijd->bij", q, r)


def reference_aaconv(x, layer, stride=1):
    """Concat[Conv(X), MHA(X)] (Eq. 5) with MHA of Eq. 1–2 and relative logits of Eq. 3–4."""
    nh, dk, dv = layer.num_heads, layer.dk, layer.dv
    parts = []
    if layer.conv is not None:
        parts.append(F.conv2d(x, layer.conv.weight, layer.conv.bias, stride=stride, padding=layer.kernel_size // 2))
    xs = x[:, :, ::stride, ::stride]  # a strided 1×1 convolution reads these positions
    b, _, h, w = xs.shape
    X = xs.flatten(2).transpose(1, 2)
    QKV = X @ layer.qkv.weight.flatten(1).T + layer.qkv.bias
    dkh, dvh = dk // nh, dv // nh
    heads = []
    for i in range(nh):
        q = QKV[..., i * dkh : (i + 1) * dkh]
        k = QKV[..., dk + i * dkh : dk + (i + 1) * dkh]
        v = QKV[..., 2 * dk + i * dvh : 2 * dk + (i + 1) * dvh]
        logits = q @ k.transpose(1, 2)
        if layer.rel_pos is not None:
            logits = logits + rel_logits(q, layer.rel_pos.height, layer.rel_pos.width, h, w, layer.rel_pos.max_size)
        heads.append(torch.softmax(logits / math.sqrt(dkh), dim=-1) @ v)  # Eq. 1 / Eq. 4
    mha = torch.cat(heads, -1) @ layer.proj.weight.flatten(1).T + layer.proj.bias  # Eq. 2
    parts.append(mha.transpose(1, 2).reshape(b, dv, h, w))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize(
    "kw,size",
    [
        (dict(out_channels=24, dk=8, dv=8, num_heads=2), (5, 4)),
        (dict(out_channels=24, dk=8, dv=8, num_heads=2, rel_pos=False), (5, 4)),
        (dict(dk=0.5, dv=0.25, num_heads=4, max_size=3), (6, 5)),  # offsets beyond max_size are clipped
        (dict(out_channels=32, dk=4, dv=12, num_heads=4, kernel_size=5, bias=True), (3, 7)),
        (dict(out_channels=16, dk=1.0, dv=1.0, num_heads=4), (4, 4)),  # fully attentional (υ = 1)
    ],
)
def test_matches_paper_equations(kw, size):
    torch.manual_seed(0)
    layer = convattn.create_attn("aa_conv", 16, **kw)
    x = torch.randn(2, 16, *size)
    torch.testing.assert_close(layer(x), reference_aaconv(x, layer), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (5, 4), (1, 1)])
def test_stride_two_attends_over_the_strided_positions(size):
    torch.manual_seed(1)
    layer = convattn.create_attn("aa_conv", 16, out_channels=32, stride=2, dk=8, dv=8, num_heads=2)
    x = torch.randn(2, 16, *size)
    y = layer(x)
    assert y.shape == (2, 32, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    torch.testing.assert_close(y, reference_aaconv(x, layer, stride=2), rtol=1e-5, atol=1e-5)


def test_fused_equals_explicit():
    layer = convattn.create_attn("aa_conv", 16, out_channels=32, dk=8, dv=12, num_heads=4)
    x = torch.randn(2, 16, 6, 7)
    fused = layer(x)
    with convattn.record_attention(layer) as maps:
        explicit = layer(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    (attn,) = maps.values()
    assert attn.shape == (2, 4, 42, 42)


def test_fractional_depths_follow_kappa_and_upsilon():
    # κ = 2υ = 0.2 on 256 output channels with 8 heads: dk ≈ 51.2 -> 48, dv ≈ 25.6 -> 24
    layer = convattn.create_attn("aa_conv", 64, out_channels=256, dk=0.2, dv=0.1, num_heads=8)
    assert (layer.dk, layer.dv) == (48, 24)
    assert layer.conv.out_channels == 256 - 24 and layer.qkv.out_channels == 2 * 48 + 24
    assert convattn.create_attn("aa_conv", 16).dk % 4 == 0  # defaults fit narrow layers


@pytest.mark.parametrize(
    "bad",
    [
        dict(dk=10, num_heads=4),
        dict(dv=6, num_heads=4),
        dict(kernel_size=4),
        dict(dv=32),
        dict(dk=1.5),
        dict(stride=0),
        dict(num_heads=0),
        dict(out_channels=0),
    ],
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="AttentionAugmentedConv2d"):
        convattn.create_attn("aa_conv", 16, **bad)


@pytest.mark.parametrize("rel_pos", [False, True])
def test_default_path_runs_on_the_fused_kernel(rel_pos):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layer = convattn.create_attn("aa_conv", 16, out_channels=32, dk=8, dv=12, num_heads=4, rel_pos=rel_pos).eval()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
        layer(torch.randn(1, 16, 6, 5))
