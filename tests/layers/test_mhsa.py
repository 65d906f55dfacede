"""MHSA against a transcription of Vaswani et al. (Eq. 1, Sec. 3.2.2) with Bello et al.'s
2-D relative logits (ICCV 2019, Eq. 3), written with explicit position loops."""

import math

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError
from convattn.layers._relpos import RelPosEmb2d


def relative_logits(q, emb_h, emb_w, h, w, max_size):
    """l[i, j] = q_i · r^H[clip(y_j - y_i)] + q_i · r^W[clip(x_j - x_i)] for every query i, key j."""
    n = h * w
    pos = [(y, x) for y in range(h) for x in range(w)]
    m = max_size - 1
    clip = lambda d: max(-m, min(m, d)) + m  # noqa: E731
    r = torch.stack([
        torch.stack([emb_h[clip(pos[j][0] - pos[i][0])] + emb_w[clip(pos[j][1] - pos[i][1])] for j in range(n)])
        for i in range(n)
    ])  # (N, N, d)
    return torch.einsum("...id,ijd->...ij", q, r)


def reference_mhsa(x, w_qkv, b_qkv, w_o, b_o, heads, dk, dv, rel=None, max_size=64):
    b, c, h, w = x.shape
    X = x.flatten(2).transpose(1, 2)  # (B, N, C), n = y·W + x
    QKV = X @ w_qkv.T + (b_qkv if b_qkv is not None else 0)
    Q, K, V = QKV[..., :dk], QKV[..., dk : 2 * dk], QKV[..., 2 * dk :]
    dkh, dvh = dk // heads, dv // heads
    outs = []
    for i in range(heads):
        q, k, v = Q[..., i * dkh : (i + 1) * dkh], K[..., i * dkh : (i + 1) * dkh], V[..., i * dvh : (i + 1) * dvh]
        logits = q @ k.transpose(1, 2)
        if rel is not None:
            logits = logits + relative_logits(q, rel[0], rel[1], h, w, max_size)
        a = torch.softmax(logits / math.sqrt(dkh), dim=-1)
        outs.append(a @ v)
    O = torch.cat(outs, dim=-1) @ w_o.T + b_o  # W^O
    return O.transpose(1, 2).reshape(b, -1, h, w)


def _weights(m):
    rel = (m.rel_pos.height, m.rel_pos.width) if m.rel_pos is not None else None
    return m.qkv.weight.flatten(1), m.qkv.bias, m.proj.weight.flatten(1), m.proj.bias, rel


@pytest.mark.parametrize("rel_pos", [False, True])
@pytest.mark.parametrize("size", [(4, 5), (3, 7)])
def test_matches_paper_equations(rel_pos, size):
    torch.manual_seed(0)
    m = convattn.create_attn("mhsa", 16, num_heads=4, rel_pos=rel_pos, qkv_bias=True, max_size=8)
    x = torch.randn(2, 16, *size)
    wq, bq, wo, bo, rel = _weights(m)
    ref = reference_mhsa(x, wq, bq, wo, bo, 4, m.dk, m.dv, rel, max_size=8)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_relative_offsets_are_clipped_beyond_max_size():
    torch.manual_seed(1)
    m = convattn.create_attn("mhsa", 16, num_heads=2, rel_pos=True, max_size=3)
    x = torch.randn(1, 16, 6, 5)
    wq, bq, wo, bo, rel = _weights(m)
    ref = reference_mhsa(x, wq, bq, wo, bo, 2, m.dk, m.dv, rel, max_size=3)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    # Clipping matters: distinct embeddings for the far offsets give another result.
    pad = lambda e: torch.cat([torch.randn(3, e.shape[1]), e, torch.randn(3, e.shape[1])])  # noqa: E731
    unclipped = reference_mhsa(x, wq, bq, wo, bo, 2, m.dk, m.dv, (pad(rel[0]), pad(rel[1])), max_size=6)
    assert not torch.allclose(m(x), unclipped, atol=1e-3)


def test_unequal_key_and_value_widths():
    torch.manual_seed(2)
    m = convattn.create_attn("mhsa", 16, num_heads=2, dk=4, dv=12, rel_pos=True)
    x = torch.randn(2, 16, 3, 4)
    wq, bq, wo, bo, rel = _weights(m)
    torch.testing.assert_close(m(x), reference_mhsa(x, wq, bq, wo, bo, 2, 4, 12, rel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rel_pos", [False, True])
def test_fused_equals_explicit_and_records_rows_summing_to_one(rel_pos):
    m = convattn.create_attn("mhsa", 16, rel_pos=rel_pos)
    x = torch.randn(2, 16, 5, 6)
    fused = m(x)
    with convattn.record_attention(m) as maps:
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    (attn,) = maps.values()
    assert attn.shape == (2, 4, 30, 30)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 30))


def test_folded_relative_logits_equal_the_explicit_bias():
    torch.manual_seed(3)
    rel = RelPosEmb2d(6, max_size=4)
    h, w = 5, 3  # height beyond max_size: clipped offsets too
    q, k = torch.randn(2, 3, h * w, 6), torch.randn(2, 3, h * w, 6)
    q2, k2 = rel.augment(q, k, h, w)
    assert q2.shape == k2.shape == (2, 3, h * w, 6 + h + w)
    torch.testing.assert_close(q2 @ k2.transpose(-1, -2), q @ k.transpose(-1, -2) + rel.bias(q, h, w))
    torch.testing.assert_close(rel.bias(q, h, w), relative_logits(q, rel.height, rel.width, h, w, 4))


def test_residual_variant_is_identity_at_init():
    m = convattn.create_attn("mhsa", 16, residual=True, rel_pos=True)
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)
    plain = convattn.create_attn("mhsa", 16)
    assert not torch.allclose(plain(x), x)


def test_widths():
    assert convattn.create_attn("mhsa", 64).dk == 64
    assert convattn.create_attn("mhsa", 64, qk_ratio=0.5).dk == 32
    m = convattn.create_attn("mhsa", 64, dk=16, dv=32, num_heads=8)
    assert (m.dk, m.dv, m.qkv.out_channels, m.proj.in_channels) == (16, 32, 64, 32)


@pytest.mark.parametrize(
    "bad", [dict(num_heads=3), dict(dk=10), dict(dv=6), dict(num_heads=0), dict(max_size=0), dict(dk=4.5)]
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="MultiHeadSelfAttention2d"):
        convattn.create_attn("mhsa", 16, **bad)


@pytest.mark.parametrize("rel_pos", [False, True])
def test_default_path_runs_on_the_fused_kernel(rel_pos):
    # With a strided head dimension SDPA silently falls back to its N×N math path.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = convattn.create_attn("mhsa", 16, rel_pos=rel_pos).eval()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
        m(torch.randn(1, 16, 6, 5))  # raises "No available kernel" otherwise
