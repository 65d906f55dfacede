"""ECA, circular ECA and timm's ECA-MLP against transcriptions of Wang et al. (CVPR 2020) and timm."""

import math

import pytest
import torch
from timm.layers.eca import CecaModule, EcaModule

import convattn
from convattn.exceptions import ConfigError
from convattn.layers.eca import eca_kernel_size


def band_matrix(w, c, circular):
    """The k-wide 1-D convolution over channels as a C×C matrix: z_i = Σ_j w_j y_{i + j - p}."""
    k = w.numel()
    p = (k - 1) // 2
    m = torch.zeros(c, c, dtype=w.dtype)
    for i in range(c):
        for j in range(k):
            src = i + j - p
            if circular:
                m[i, src % c] += w[j]
            elif 0 <= src < c:
                m[i, src] += w[j]
    return m


def reference_eca(x, w, circular=False):
    # ECA-Net Sec. 3.2: ω = σ(C1D_k(y)), y = GAP(x); output x_c · ω_c.
    y = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    omega = torch.sigmoid(y @ band_matrix(w, x.shape[1], circular).T)
    return x * omega[:, :, None, None]


def reference_ecam(x, w1, b1, w2, b2):
    # hidden h_r,i = relu(a_r y_i + b_r); z_i = Σ_r Σ_j w2[r, j] h_r,(i+j-p) + b2; ω = σ(z).
    y = x.mean((2, 3))  # (B, C)
    h = torch.relu(y[:, None, :] * w1[None, :, None] + b1[None, :, None])  # (B, R, C)
    z = sum(h[:, r] @ band_matrix(w2[r], x.shape[1], False).T for r in range(w2.shape[0])) + b2
    return x * torch.sigmoid(z)[:, :, None, None]


@pytest.mark.parametrize("c, k", [(2, 1), (4, 1), (8, 3), (16, 3), (64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_adaptive_kernel_size_follows_paper(c, k):
    # ψ(C) = |log2(C)/γ + b/γ|_odd with γ = 2, b = 1: the odd number nearest (rounding up from even).
    t = math.log2(c) / 2 + 1 / 2
    assert k % 2 == 1 and abs(k - t) <= 1
    assert eca_kernel_size(c) == k
    assert convattn.create_attn("eca", c).conv.kernel_size == (k,)


@pytest.mark.parametrize("c", [16, 37])
def test_eca_matches_paper(c):
    layer = convattn.create_attn("eca", c, kernel_size=5 if c == 37 else None)
    x = torch.randn(2, c, 5, 3)
    torch.testing.assert_close(layer(x), reference_eca(x, layer.conv.weight.flatten().detach()))


def test_ceca_matches_circular_transcription_and_differs_at_the_ends():
    layer = convattn.create_attn("ceca", 16, kernel_size=5)
    x = torch.randn(2, 16, 4, 3)
    w = layer.conv.weight.flatten().detach()
    torch.testing.assert_close(layer(x), reference_eca(x, w, circular=True))
    zero_padded = reference_eca(x, w, circular=False)
    # Only the two channels at each end see a difference.
    diff = (layer(x) - zero_padded).abs().amax((0, 2, 3))
    assert (diff[:2] > 1e-6).all() and (diff[-2:] > 1e-6).all()
    assert diff[2:-2].max() < 1e-6


def test_ecam_matches_transcription():
    layer = convattn.create_attn("ecam", 16)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(2, 16, 3, 5)
    ref = reference_ecam(
        x, layer.conv1.weight.flatten(), layer.conv1.bias, layer.conv2.weight[0], layer.conv2.bias
    )
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("c", [16, 64, 128])
def test_matches_timm(c):
    x = torch.randn(2, c, 5, 4)
    pairs = [
        (convattn.create_attn("eca", c), EcaModule(c)),
        (convattn.create_attn("ceca", c), CecaModule(c)),
        (convattn.create_attn("ecam", c), EcaModule(c, use_mlp=True)),
    ]
    for ours, theirs in pairs:
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_()
        if hasattr(ours, "conv2"):
            mapping = {"conv1.weight": "conv.weight", "conv1.bias": "conv.bias",
                       "conv2.weight": "conv2.weight", "conv2.bias": "conv2.bias"}
        else:
            mapping = {"conv.weight": "conv.weight"}
        sd = theirs.state_dict()
        ours.load_state_dict({k: sd[v] for k, v in mapping.items()})
        torch.testing.assert_close(ours(x), theirs(x))


def test_documented_difference_from_timm_below_eight_channels():
    # The paper's rule gives k = 1 at C = 4; timm clamps k to 3.
    assert convattn.create_attn("eca", 4).kernel_size == 1
    assert EcaModule(4).conv.kernel_size == (3,)
    assert convattn.create_attn("eca", 4, kernel_size=3).conv.kernel_size == (3,)


def test_records_channel_weights():
    layer = convattn.create_attn("eca", 16)
    x = torch.randn(2, 16, 3, 4)
    with convattn.record_attention(layer) as maps:
        y = layer(x)
    (w,) = maps.values()
    assert w.shape == (2, 16)
    torch.testing.assert_close(y, x * w[:, :, None, None])


@pytest.mark.parametrize(
    "name, bad",
    [
        ("eca", dict(kernel_size=4)),
        ("eca", dict(kernel_size=0)),
        ("eca", dict(gamma=0)),
        ("eca", dict(gate_layer="sigmod")),
        ("ceca", dict(kernel_size=41)),
        ("ecam", dict(rd_ratio=0.0)),
        ("ecam", dict(rd_channels=0)),
        ("ecam", dict(act_layer="rleu")),
    ],
)
def test_bad_arguments(name, bad):
    with pytest.raises(ConfigError, match="EfficientChannelAttn"):
        convattn.create_attn(name, 16, **bad)
