"""SE against a transcription of Hu et al. (CVPR 2018), Eq. 2–4."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


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
