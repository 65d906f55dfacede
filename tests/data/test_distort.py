"""The spatial-transformer paper's distortions and the affine placement behind them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convattn.data.distort import DISTORTIONS, Distortion, place_theta
from convattn.exceptions import ConfigError


def _reference_place(img, out_hw, center, scale, angle):
    """Direct transcription: canvas pixel centre p -> source point c_src + R(angle)(p - center) / scale,
    bilinear interpolation with zeros outside (pixel centres at integer + 0.5)."""
    hi, wi = img.shape
    ho, wo = out_hw
    out = np.zeros(out_hw)
    ca, sa = math.cos(angle), math.sin(angle)
    for i in range(ho):
        for j in range(wo):
            dx, dy = j + 0.5 - center[0], i + 0.5 - center[1]
            ux = wi / 2 + (ca * dx - sa * dy) / scale - 0.5
            uy = hi / 2 + (sa * dx + ca * dy) / scale - 0.5
            x0, y0 = math.floor(ux), math.floor(uy)
            v = 0.0
            for yy, wy in ((y0, 1 - (uy - y0)), (y0 + 1, uy - y0)):
                for xx, wx in ((x0, 1 - (ux - x0)), (x0 + 1, ux - x0)):
                    if 0 <= yy < hi and 0 <= xx < wi:
                        v += wy * wx * img[yy, xx]
            out[i, j] = v
    return out


@pytest.mark.parametrize(
    "in_hw,out_hw,center,scale,angle",
    [((8, 8), (20, 20), (9.0, 11.5), 1.7, 0.3), ((6, 9), (13, 11), (5.2, 6.1), 0.8, -1.1)],
)
def test_place_theta_matches_transcription(in_hw, out_hw, center, scale, angle):
    img = torch.rand(*in_hw, dtype=torch.float64)
    theta = place_theta(in_hw, out_hw, torch.tensor([center], dtype=torch.float64),
                        torch.tensor([scale], dtype=torch.float64), torch.tensor([angle], dtype=torch.float64))
    grid = F.affine_grid(theta, [1, 1, *out_hw], align_corners=False)
    got = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    want = _reference_place(img.numpy(), out_hw, center, scale, angle)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


def test_positive_angle_turns_counter_clockwise():
    img = torch.zeros(1, 1, 9, 9)
    img[0, 0, 4, 7] = 1.0  # right of centre
    theta = place_theta((9, 9), (9, 9), torch.tensor([[4.5, 4.5]]), torch.ones(1), torch.tensor([math.pi / 2]))
    out = F.grid_sample(img, F.affine_grid(theta, [1, 1, 9, 9], align_corners=False), align_corners=False)
    r, c = np.unravel_index(out[0, 0].argmax().item(), (9, 9))
    assert (r, c) == (1, 4)  # now above the centre


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_shapes_and_determinism(kind):
    x = torch.zeros(1, 28, 28)
    x[:, 6:22, 10:18] = 1.0
    d = Distortion(kind, (28, 28), seed=0, split="train")
    a = d(x, 5)
    assert a.shape == ((1, 42, 42) if kind == "rts" else (1, 28, 28))
    assert a.min() >= 0 and a.max() <= 1 and a.sum() > 0
    assert torch.equal(a, d(x, 5))
    assert torch.equal(a, Distortion(kind, (28, 28), seed=0, split="train")(x, 5))
    assert not torch.equal(a, d(x, 6))
    assert not torch.equal(a, Distortion(kind, (28, 28), seed=1, split="train")(x, 5))
    assert not torch.equal(a, Distortion(kind, (28, 28), seed=0, split="test")(x, 5))


def test_rotation_keeps_ink_and_rts_stays_inside():
    x = torch.zeros(1, 28, 28)
    x[:, 10:18, 8:20] = 1.0
    rot = Distortion("rotate", (28, 28), seed=0)
    for i in range(10):
        assert abs(rot(x, i).sum().item() - x.sum().item()) < 0.08 * x.sum().item()
    rts = Distortion("rts", (28, 28), seed=0)
    full = torch.ones(1, 28, 28)
    for i in range(10):
        out = rts(full, i)[0]
        area = out.sum().item()
        assert 0.7**2 * 784 * 0.9 < area < 1.2**2 * 784 * 1.1  # a whole scaled square, never cut off
        assert out[0].sum() + out[-1].sum() + out[:, 0].sum() + out[:, -1].sum() < 42  # border mostly empty


def test_projective_and_elastic_move_pixels():
    x = torch.rand(1, 28, 28)
    for kind in ("projective", "elastic"):
        d = Distortion(kind, (28, 28), seed=0)
        g = d.grid(0)
        ys = (torch.arange(28) * 2 + 1) / 28 - 1
        yy, xx = torch.meshgrid(ys, ys, indexing="ij")
        shift = (g[0] - torch.stack([xx, yy], -1)).abs().mean().item()
        assert 0.01 < shift < 0.5, (kind, shift)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="distort"):
        Distortion("shear", (28, 28))
