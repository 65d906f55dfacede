"""Effective SE against a transcription of CenterMask (Lee & Park, CVPR 2020), Eq. 1–2, and timm."""

import pytest
import torch
from timm.layers.squeeze_excite import EffectiveSEModule

import convattn
from convattn.exceptions import ConfigError


def reference_ese(x, w, b):
    # Eq. 1: A_eSE = σ_hard(W_C(F_avg(X))), σ_hard(z) = ReLU6(z + 3) / 6;  Eq. 2: X_refine = A_eSE ⊗ X
    f_avg = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    z = f_avg @ w.T + b
    a = torch.clamp(z + 3, 0, 6) / 6
    return x * a[:, :, None, None]


def test_matches_paper_equations():
    ese = convattn.create_attn("ese", 24)
    with torch.no_grad():
        ese.fc.weight.mul_(8)  # push logits outside [-3, 3] so both clamps of the hard sigmoid matter
    x = torch.randn(3, 24, 5, 7) + 2 * torch.randn(3, 24, 1, 1)
    z = ese.fc(x.mean((2, 3), keepdim=True)).flatten()
    assert (z > 3).any() and (z < -3).any()
    torch.testing.assert_close(ese(x), reference_ese(x, ese.fc.weight.flatten(1), ese.fc.bias))


def test_one_full_width_fc_layer():
    ese = convattn.create_attn("ese", 64)
    assert sum(p.numel() for p in ese.parameters()) == 64 * 64 + 64


@pytest.mark.parametrize("c", [16, 40])
def test_matches_timm(c):
    ours, theirs = convattn.create_attn("ese", c), EffectiveSEModule(c)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, c, 4, 5)
    torch.testing.assert_close(ours(x), theirs(x))


def test_records_channel_weights():
    ese = convattn.create_attn("ese", 16)
    x = torch.randn(2, 16, 3, 4)
    with convattn.record_attention(ese) as maps:
        y = ese(x)
    (w,) = maps.values()
    assert w.shape == (2, 16) and ((w >= 0) & (w <= 1)).all()
    torch.testing.assert_close(y, x * w[:, :, None, None])


def test_bad_gate_raises():
    with pytest.raises(ConfigError, match="EffectiveSqueezeExcite"):
        convattn.create_attn("ese", 16, gate_layer="hard_sigmod")
