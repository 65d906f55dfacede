"""Selective Kernel against a transcription of Li et al. (CVPR 2019), Eq. 1–6, and timm."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers.selective_kernel import SelectiveKernel as TimmSelectiveKernel

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)


def bn_eval(y, bn):
    shape = (1, -1, 1, 1)
    return ((y - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def dense_kernel(w3, dilation):
    """A dilated 3×3 kernel written out as the (2d+1)×(2d+1) kernel it equals (zeros between taps)."""
    k = 2 * dilation + 1
    w = torch.zeros(*w3.shape[:2], k, k, dtype=w3.dtype)
    w[:, :, ::dilation, ::dilation] = w3
    return w


def reference_sk(x, layer, split=False):
    m, c = layer.num_paths, layer.channels
    xs = torch.chunk(x, m, 1) if split else [x] * m
    # Split (Eq. 1): U_m = ReLU(BN(conv_m(X))); the 5×5 branch is a 5×5 kernel with zeros between taps.
    us = []
    for xi, path in zip(xs, layer.paths):
        w = dense_kernel(path.conv.weight, path.conv.dilation[0])
        conv = F.conv2d(xi, w, padding=w.shape[-1] // 2, groups=path.conv.groups)
        us.append(torch.relu(bn_eval(conv, path.bn)))
    # Fuse (Eq. 1–3): U = Σ U_m; s_c = mean_ij U_c(i, j); z = δ(B(W s)).
    u = sum(us)
    s = u.mean((2, 3))
    z = torch.relu(bn_eval((s @ layer.fc_reduce.weight.flatten(1).T)[:, :, None, None], layer.bn)).flatten(1)
    # Select (Eq. 5–6): a_c = e^{A_c z} / Σ_m e^{(M_m)_c z}; V_c = Σ_m a_{m,c} U_{m,c}.
    logits = (z @ layer.fc_select.weight.flatten(1).T).reshape(-1, m, c)
    a = logits.exp() / logits.exp().sum(1, keepdim=True)
    return sum(a[:, i, :, None, None] * us[i] for i in range(m)), a


@pytest.mark.parametrize("split, kernels", [(False, (3, 5)), (True, (3, 5)), (False, (3, 5, 7))])
def test_matches_paper_equations(split, kernels):
    layer = convattn.create_attn("sk", 24, split_input=split, kernel_sizes=kernels, groups=4 if split else None)
    randomise(layer)
    layer.eval()
    x = torch.randn(2, 24, 7, 6)
    ref, a = reference_sk(x, layer, split)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(next(iter(maps.values())), a)


def test_paper_widths():
    layer = convattn.create_attn("sk", 64)
    assert layer.groups == 32 and layer.fc_reduce.out_channels == 32  # G = 32, d = max(C/16, L = 32)
    assert convattn.create_attn("sk", 1024).fc_reduce.out_channels == 64
    small = convattn.create_attn("sk", 16)
    assert small.groups == 16 and small.fc_reduce.out_channels == 32
    assert [p.conv.dilation for p in layer.paths] == [(1, 1), (2, 2)]
    assert [p.conv.kernel_size for p in convattn.create_attn("sk", 16, keep_3x3=False).paths] == [(3, 3), (5, 5)]


@pytest.mark.parametrize("split, groups", [(True, 1), (False, 8)])
def test_matches_timm(split, groups):
    ours = convattn.create_attn("sk", 32, split_input=split, groups=groups, rd_channels=8)
    theirs = TimmSelectiveKernel(32, split_input=split, groups=groups, rd_channels=8)
    randomise(theirs)
    ours.load_state_dict({k.replace("attn.", ""): v for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 32, 6, 5)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    ours.train(), theirs.train()
    torch.testing.assert_close(ours(x), theirs(x))


def test_documented_default_difference_from_timm():
    # timm: d = make_divisible(C/16, 8) with no floor of 32, and the input split across branches.
    theirs = TimmSelectiveKernel(64)
    assert theirs.attn.fc_reduce.out_channels == 8 and theirs.split_input
    ours = convattn.create_attn("sk", 64)
    assert ours.fc_reduce.out_channels == 32 and not ours.split_input


def test_trains_at_batch_one():
    layer = convattn.create_attn("sk", 16).train()
    layer(torch.randn(1, 16, 3, 4)).sum().backward()


@pytest.mark.parametrize(
    "bad",
    [dict(kernel_sizes=(3,)), dict(kernel_sizes=(3, 4)), dict(groups=5), dict(rd_ratio=0),
     dict(split_input=True, kernel_sizes=(3, 5, 7)), dict(norm_layer="bnn")],
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SelectiveKernel"):
        convattn.create_attn("sk", 16, **bad)
