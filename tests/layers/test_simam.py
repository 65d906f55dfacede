"""SimAM against a transcription of Yang et al. (ICML 2021), Eq. 16-17."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_simam(x, lam=1e-4):
    # Eq. 16: e*_t = 4 (σ̂² + λ) / ((t - μ̂)² + 2 σ̂² + 2λ), μ̂ and σ̂² of the channel
    # (σ̂² divides by n = M - 1, as the authors' code does); Eq. 17: X̃ = sigmoid(1 / E) ⊙ X.
    b, c, h, w = x.shape
    m = h * w
    out = torch.empty_like(x)
    for bi in range(b):
        for ci in range(c):
            xs = x[bi, ci].flatten()
            mu = xs.mean()
            var = ((xs - mu) ** 2).sum() / (m - 1)
            e = 4 * (var + lam) / ((xs - mu) ** 2 + 2 * var + 2 * lam)
            out[bi, ci] = (xs * torch.sigmoid(1 / e)).reshape(h, w)
    return out


@pytest.mark.parametrize("lam", [1e-4, 0.5])
def test_matches_paper_equations(lam):
    x = torch.randn(2, 3, 5, 7)
    layer = convattn.create_attn("simam", 3, e_lambda=lam)
    torch.testing.assert_close(layer(x), reference_simam(x, lam))


def test_parameter_free_and_one_by_one():
    layer = convattn.create_attn("simam", 16)
    assert not list(layer.parameters()) and not list(layer.buffers())
    x = torch.randn(2, 16, 1, 1)
    torch.testing.assert_close(layer(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_records_weights():
    layer = convattn.create_attn("simam", 4)
    x = torch.randn(1, 4, 3, 5)
    with convattn.record_attention(layer) as maps:
        y = layer(x)
    torch.testing.assert_close(y, x * maps["SimAM"])


@pytest.mark.parametrize("lam", [0, -1.0, "1e-4"])
def test_bad_lambda(lam):
    with pytest.raises(ConfigError, match="SimAM"):
        convattn.create_attn("simam", 16, e_lambda=lam)
