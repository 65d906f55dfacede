"""Triplet attention against a transcription of Misra et al. (WACV 2021), Sec. 3 / Eq. 3."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def _branch(x_hat, w, bn):
    # Z-pool: [max_0(x̂), avg_0(x̂)] over the first non-batch dim, then conv ψ, BN, σ.
    z = torch.stack([x_hat.max(dim=1).values, x_hat.mean(dim=1)], dim=1)
    y = F.conv2d(z, w, padding=w.shape[-1] // 2)
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    return torch.sigmoid(y)


def reference_triplet(x, layer, no_spatial=False):
    # Branch 1: rotate 90° along the H axis -> x̂1 (B, H, C, W); gate x̂1, rotate back.
    x1 = x.permute(0, 2, 1, 3)
    y1 = (x1 * _branch(x1, layer.cw.conv.weight, layer.cw.bn)).permute(0, 2, 1, 3)
    # Branch 2: rotate along the W axis -> x̂2 (B, W, H, C); gate, rotate back.
    x2 = x.permute(0, 3, 2, 1)
    y2 = (x2 * _branch(x2, layer.hc.conv.weight, layer.hc.bn)).permute(0, 3, 2, 1)
    if no_spatial:
        return (y1 + y2) / 2
    y3 = x * _branch(x, layer.hw.conv.weight, layer.hw.bn)
    return (y1 + y2 + y3) / 3


def _randomise(layer):
    with torch.no_grad():
        for bn in [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("no_spatial", [False, True])
def test_matches_paper_equations(no_spatial):
    layer = convattn.create_attn("triplet", 12, no_spatial=no_spatial).eval()
    _randomise(layer)
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(layer(x), reference_triplet(x, layer, no_spatial))


def test_kernel_size_and_bn_momentum():
    layer = convattn.create_attn("triplet", 16, kernel_size=3)
    assert layer.cw.conv.weight.shape == (1, 2, 3, 3)
    assert layer.hw.bn.momentum == 0.01
    assert convattn.create_attn("triplet", 16, no_spatial=True).hw is None


def test_records_broadcastable_gates():
    layer = convattn.create_attn("triplet", 16).eval()
    x = torch.randn(2, 16, 5, 6)
    with convattn.record_attention(layer) as maps:
        y = layer(x)
    assert maps["TripletAttention:cw"].shape == (2, 16, 1, 6)
    assert maps["TripletAttention:hc"].shape == (2, 16, 5, 1)
    assert maps["TripletAttention:hw"].shape == (2, 1, 5, 6)
    gate = sum(maps[f"TripletAttention:{k}"] for k in ("cw", "hc", "hw")) / 3
    torch.testing.assert_close(y, x * gate)


@pytest.mark.parametrize("bad", [dict(kernel_size=4), dict(kernel_size=0), dict(gate_layer="sigmiod")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="TripletAttention"):
        convattn.create_attn("triplet", 16, **bad)
