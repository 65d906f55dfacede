"""Spatial transformer against a transcription of Jaderberg et al. (NeurIPS 2015), Eq. 1 and Eq. 5."""

import math

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError
from convattn.layers.stn import params_to_theta


def reference_sample(u, theta, out_h, out_w):
    """Eq. 1 grid generator + Eq. 5 bilinear sampler, pixel centres at normalised (2i + 1)/n - 1."""
    b, c, h, w = u.shape
    yt = (2 * torch.arange(out_h, dtype=u.dtype) + 1) / out_h - 1
    xt = (2 * torch.arange(out_w, dtype=u.dtype) + 1) / out_w - 1
    yy, xx = torch.meshgrid(yt, xt, indexing="ij")
    target = torch.stack([xx.flatten(), yy.flatten(), torch.ones(out_h * out_w, dtype=u.dtype)])  # (3, N)
    src = theta @ target  # (B, 2, N): (x^s, y^s) = θ (x^t, y^t, 1)ᵀ
    # normalised -> pixel coordinates (align_corners=False)
    xs = ((src[:, 0] + 1) * w - 1) / 2
    ys = ((src[:, 1] + 1) * h - 1) / 2
    m = torch.arange(w, dtype=u.dtype)
    n = torch.arange(h, dtype=u.dtype)
    kx = torch.relu(1 - (xs[..., None] - m).abs())  # (B, N, W): max(0, 1 - |x^s_i - m|)
    ky = torch.relu(1 - (ys[..., None] - n).abs())  # (B, N, H)
    k = (ky[..., :, None] * kx[..., None, :]).flatten(2)  # (B, N, H·W)
    v = torch.einsum("bnp,bcp->bcn", k, u.flatten(2))  # V_i^c = Σ_nm U^c_nm k(...)
    return v.reshape(b, c, out_h, out_w)


@pytest.mark.parametrize("transform", ["affine", "similarity", "attention", "translation"])
def test_identity_at_initialisation(transform):
    stn = convattn.create_attn("stn", 16, transform=transform)
    for size in [(7, 9), (3, 4), (1, 1), (28, 28)]:
        x = torch.randn(2, 16, *size)
        # exact up to the rounding of the normalised pixel-centre coordinates
        torch.testing.assert_close(stn(x), x, rtol=1e-5, atol=3e-5)
        torch.testing.assert_close(stn.double()(x.double()), x.double(), rtol=1e-12, atol=1e-12)
        stn.float()
        eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
        torch.testing.assert_close(stn.theta(x), eye, rtol=0, atol=0)


@pytest.mark.parametrize("transform", ["affine", "similarity", "attention", "translation"])
@pytest.mark.parametrize("out_size", [None, (4, 6)])
def test_matches_paper_equations(transform, out_size):
    torch.manual_seed(0)
    stn = convattn.create_attn("stn", 16, transform=transform, out_size=out_size)
    with torch.no_grad():
        stn.fc_theta.weight.normal_(0, 0.2)
        stn.fc_theta.bias.add_(torch.randn_like(stn.fc_theta.bias) * 0.3)
    x = torch.randn(2, 16, 5, 7)
    theta = stn.theta(x)
    out_h, out_w = out_size or (5, 7)
    y = stn(x)
    assert y.shape == (2, 16, out_h, out_w)
    torch.testing.assert_close(y, reference_sample(x, theta, out_h, out_w), rtol=1e-5, atol=1e-5)


def test_parameterisations():
    s, a, tx, ty = 0.8, 0.3, 0.1, -0.2
    got = params_to_theta("similarity", torch.tensor([[s, a, tx, ty]]))
    want = torch.tensor([[[s * math.cos(a), -s * math.sin(a), tx], [s * math.sin(a), s * math.cos(a), ty]]])
    torch.testing.assert_close(got, want)
    got = params_to_theta("attention", torch.tensor([[0.5, tx, ty]]))
    torch.testing.assert_close(got, torch.tensor([[[0.5, 0, tx], [0, 0.5, ty]]]))
    got = params_to_theta("translation", torch.tensor([[tx, ty]]))
    torch.testing.assert_close(got, torch.tensor([[[1.0, 0, tx], [0, 1.0, ty]]]))
    p = torch.arange(6.0)[None]
    torch.testing.assert_close(params_to_theta("affine", p), p.view(1, 2, 3))


def test_translation_by_one_pixel_shifts_the_image():
    stn = convattn.create_attn("stn", 3, transform="translation")
    w = 8
    with torch.no_grad():
        stn.fc_theta.bias.copy_(torch.tensor([2.0 / w, 0.0]))  # one pixel in normalised units
    x = torch.randn(1, 3, 5, w)
    y = stn(x)
    torch.testing.assert_close(y[..., :-1], x[..., 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(y[..., -1], torch.zeros_like(y[..., -1]))  # zero padding (the paper)


def test_records_theta_and_exposes_the_sampling_grid():
    stn = convattn.create_attn("stn", 16, transform="attention")
    x = torch.randn(2, 16, 6, 5)
    with convattn.record_attention(stn) as maps:
        stn(x)
    assert list(maps) == ["SpatialTransformer:theta"]
    assert maps["SpatialTransformer:theta"].shape == (2, 2, 3)
    grid = stn.sampling_grid(x)
    assert grid.shape == (2, 6, 5, 2)
    xs = (2 * torch.arange(5) + 1) / 5 - 1  # identity: pixel centres
    torch.testing.assert_close(grid[0, 0, :, 0], xs)


def test_gradients_reach_the_localisation_network_from_identity():
    stn = convattn.create_attn("stn", 4)
    x = torch.randn(2, 4, 9, 9)
    stn(x).sin().sum().backward()
    assert stn.fc_theta.weight.grad.abs().sum() > 0  # the zero-initialised regressor still learns


@pytest.mark.parametrize(
    "bad",
    [
        dict(transform="projective"),
        dict(padding_mode="wrap"),
        dict(loc_kernel_size=4),
        dict(loc_channels=(8,)),
        dict(out_size=(0, 4)),
        dict(pool_size=0),
        dict(act_layer="rleu"),
    ],
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SpatialTransformer"):
        convattn.create_attn("stn", 16, **bad)
