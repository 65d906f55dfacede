"""Shuffle attention against a transcription of Zhang & Yang (ICASSP 2021), Sec. 2 / Eq. 1-3."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_shuffle(x, groups, cw, cb, sw, sb, gn_w, gn_b, eps=1e-5):
    b, c, h, w = x.shape
    half = c // (2 * groups)
    outs = []
    for g in range(groups):  # feature grouping
        xk = x[:, g * 2 * half:(g + 1) * 2 * half]
        xk1, xk2 = xk[:, :half], xk[:, half:]
        s = xk1.mean(dim=(2, 3))  # Eq. 1: s = F_gp(X_k1)
        out1 = torch.sigmoid(cw * s + cb)[:, :, None, None] * xk1  # Eq. 2
        mu = xk2.mean(dim=(2, 3), keepdim=True)
        var = xk2.var(dim=(2, 3), unbiased=False, keepdim=True)
        gn = (xk2 - mu) / torch.sqrt(var + eps) * gn_w[:, None, None] + gn_b[:, None, None]
        out2 = torch.sigmoid(sw[:, None, None] * gn + sb[:, None, None]) * xk2  # Eq. 3
        outs.append(torch.cat([out1, out2], dim=1))  # concatenate the halves
    y = torch.cat(outs, dim=1)  # aggregate groups
    # channel shuffle with 2 groups: channel j of group r -> position j * 2 + r
    idx = torch.arange(c).reshape(2, c // 2).t().flatten()
    return y[:, idx]


@pytest.mark.parametrize("channels,groups", [(16, 2), (12, 3), (8, 1)])
def test_matches_paper_equations(channels, groups):
    layer = convattn.create_attn("shuffle", channels, groups=groups)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(2, channels, 4, 5)
    ref = reference_shuffle(
        x, groups, layer.cweight.flatten(), layer.cbias.flatten(), layer.sweight.flatten(),
        layer.sbias.flatten(), layer.gn.weight, layer.gn.bias,
    )
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("channels,expected", [(16, 8), (12, 2), (256, 64), (2, 1), (64, 32)])
def test_automatic_groups(channels, expected):
    assert convattn.create_attn("shuffle", channels).groups == expected


def test_init_is_constant_gate_then_shuffle():
    layer = convattn.create_attn("shuffle", 16, groups=4)
    x = torch.randn(2, 16, 3, 4)
    idx = torch.arange(16).reshape(2, 8).t().flatten()
    torch.testing.assert_close(layer(x), (x * torch.sigmoid(torch.tensor(1.0)))[:, idx])


def test_records_both_gates():
    layer = convattn.create_attn("shuffle", 16)
    with convattn.record_attention(layer) as maps:
        layer(torch.randn(2, 16, 3, 5))
    assert maps["ShuffleAttention:channel"].shape == (2, 8)
    assert maps["ShuffleAttention:spatial"].shape == (2, 8, 3, 5)


@pytest.mark.parametrize("channels,bad", [(16, dict(groups=3)), (16, dict(groups=16)), (16, dict(groups=0)), (15, {})])
def test_bad_arguments(channels, bad):
    with pytest.raises(ConfigError, match="ShuffleAttention"):
        convattn.create_attn("shuffle", channels, **bad)
