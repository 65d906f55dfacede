"""Criss-cross attention against a transcription of Huang et al. (ICCV 2019), Sec. 3.2, Eq. 1-2."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def _conv(x, conv):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None, None]


def reference_cca(x, m):
    """One criss-cross pass, position by position over Ω_u (row ∪ column, u once)."""
    b, c, h, w = x.shape
    q, k, v = _conv(x, m.query), _conv(x, m.key), _conv(x, m.value)
    out = x.clone()
    for y in range(h):
        for xx in range(w):
            omega = [(y, j) for j in range(w)] + [(i, xx) for i in range(h) if i != y]  # H + W - 1 positions
            ks = torch.stack([k[:, :, i, j] for i, j in omega], dim=1)  # (B, H+W-1, C')
            vs = torch.stack([v[:, :, i, j] for i, j in omega], dim=1)  # (B, H+W-1, C)
            d = torch.einsum("bc,bnc->bn", q[:, :, y, xx], ks)  # Eq. 1 (affinity)
            a = d.softmax(dim=1)
            out[:, :, y, xx] = m.gamma * torch.einsum("bn,bnc->bc", a, vs) + x[:, :, y, xx]  # Eq. 2
    return out


@pytest.mark.parametrize("recurrence", [1, 2])
def test_matches_paper_equations(recurrence):
    m = convattn.create_attn("criss_cross", 16, recurrence=recurrence)
    with torch.no_grad():
        m.gamma.fill_(0.7)
    x = torch.randn(2, 16, 5, 4)
    ref = x
    for _ in range(recurrence):
        ref = reference_cca(ref, m)
    torch.testing.assert_close(m(x), ref)


def test_identity_at_init_and_widths():
    m = convattn.create_attn("criss_cross", 16)
    assert m.recurrence == 2 and m.query.out_channels == 2 and m.value.out_channels == 16
    x = torch.randn(2, 16, 3, 7)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_no_n_by_n_matrix_and_recorded_maps():
    m = convattn.create_attn("criss_cross", 16, recurrence=2)
    x = torch.randn(1, 16, 6, 5)
    with convattn.record_attention(m) as maps:
        m(x)
    a = maps["CrissCrossAttention:loop0"]
    assert a.shape == (1, 6, 5, 6 + 5) and "CrissCrossAttention:loop1" in maps
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 6, 5))
    # the self position is counted once: its column entry is exactly zero
    idx = torch.arange(6)
    assert (a[0, idx, :, idx] == 0).all()


@pytest.mark.parametrize("bad", [dict(recurrence=0), dict(rd_ratio=0.0), dict(rd_channels=0)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="CrissCrossAttention"):
        convattn.create_attn("criss_cross", 16, **bad)
