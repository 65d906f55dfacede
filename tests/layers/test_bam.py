"""BAM against a transcription of Park et al. (BMVC 2018), Eq. 1–4."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.4)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)


def bn(y, m):
    s = (1, -1, 1, 1)
    return (y - m.running_mean.view(s)) / torch.sqrt(m.running_var.view(s) + m.eps) * m.weight.view(s) + m.bias.view(s)


def reference_bam(x, layer, dilation=4):
    # Eq. 3: M_c(F) = BN(W1 ReLU(W0 AvgPool(F) + b0) + b1)
    avg = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    hid = torch.relu(avg @ layer.channel_fc1.weight.flatten(1).T + layer.channel_fc1.bias)
    mc = bn((hid @ layer.channel_fc2.weight.flatten(1).T + layer.channel_fc2.bias)[:, :, None, None], layer.channel_bn)
    # Eq. 4: M_s(F) = BN(f3^{1×1}(f2^{3×3}(f1^{3×3}(f0^{1×1}(F))))), dilation d, BN + ReLU inside
    seq = list(layer.spatial)
    f0, n0, f1, n1, f2, n2, f3, n3 = seq[0], seq[1], seq[3], seq[4], seq[6], seq[7], seq[9], seq[10]
    t = torch.relu(bn(F.conv2d(x, f0.weight, f0.bias), n0))
    t = torch.relu(bn(F.conv2d(t, f1.weight, f1.bias, padding=dilation, dilation=dilation), n1))
    t = torch.relu(bn(F.conv2d(t, f2.weight, f2.bias, padding=dilation, dilation=dilation), n2))
    ms = bn(F.conv2d(t, f3.weight, f3.bias), n3)
    # Eq. 2: M(F) = σ(M_c(F) + M_s(F)) (broadcast sum);  Eq. 1: F' = F + F ⊗ M(F)
    m = torch.sigmoid(mc + ms)
    return x + x * m, mc, ms


def test_matches_paper_equations():
    layer = convattn.create_attn("bam", 32, rd_ratio=1 / 4).eval()
    randomise(layer)
    x = torch.randn(2, 32, 11, 9)
    ref, mc, ms = reference_bam(x, layer)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(maps["BAM:channel"], mc.flatten(1))
    torch.testing.assert_close(maps["BAM:spatial"], ms)


def test_branches_are_added_not_multiplied():
    layer = convattn.create_attn("bam", 16).eval()
    randomise(layer)
    x = torch.randn(2, 16, 6, 7)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    mc, ms = maps["BAM:channel"][:, :, None, None], maps["BAM:spatial"]
    multiplied = x + x * torch.sigmoid(mc * ms)  # what the official code computes
    assert (out - multiplied).abs().max() > 1e-3
    torch.testing.assert_close(out, x + x * torch.sigmoid(mc + ms))


def test_spatial_branch_shape_and_dilation():
    layer = convattn.create_attn("bam", 64)
    dilated = [m for m in layer.spatial if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [m.dilation for m in dilated] == [(4, 4), (4, 4)]
    assert layer.channel_fc1.out_channels == 4 and layer.spatial[0].out_channels == 4  # C/16


def test_trains_at_batch_one_on_tiny_maps():
    layer = convattn.create_attn("bam", 16).train()
    layer(torch.randn(1, 16, 3, 4)).sum().backward()


@pytest.mark.parametrize("bad", [dict(rd_ratio=0), dict(dilation=0), dict(num_dilated=-1),
                                 dict(norm_layer="bnn"), dict(gate_layer="sigmod")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="BAM"):
        convattn.create_attn("bam", 16, **bad)
