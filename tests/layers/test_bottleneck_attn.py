"""BoTNet MHSA against a transcription of Srinivas et al. (CVPR 2021), Fig. 4, and against timm."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_botnet(x, m, scale_pos_embed=False):
    """Per head: softmax(s·q kᵀ + q r^Hᵀ + q r^Wᵀ) v, offsets clipped to the table."""
    b, c, h, w = x.shape
    nh, dqk, dv = m.num_heads, m.dim_qk, m.dim_v
    qkv = torch.einsum("oc,bchw->bohw", m.qkv.weight[:, :, 0, 0], x)
    q, k, v = qkv.split([nh * dqk, nh * dqk, nh * dv], dim=1)
    q = q.reshape(b, nh, dqk, h, w)
    k = k.reshape(b, nh, dqk, h, w)
    v = v.reshape(b, nh, dv, h * w)
    big = m.pos_embed.max_size
    rh, rw = m.pos_embed.height, m.pos_embed.width
    s = dqk**-0.5
    logits = torch.empty(b, nh, h * w, h * w)
    for yi in range(h):
        for xi in range(w):
            qi = q[..., yi, xi]  # (B, nh, d)
            for yj in range(h):
                for xj in range(w):
                    oy = min(max(yj - yi, -(big - 1)), big - 1) + big - 1
                    ox = min(max(xj - xi, -(big - 1)), big - 1) + big - 1
                    content = (qi * k[..., yj, xj]).sum(-1)
                    pos = qi @ rh[oy] + qi @ rw[ox]
                    logits[:, :, yi * w + xi, yj * w + xj] = (
                        s * (content + pos) if scale_pos_embed else s * content + pos
                    )
    out = torch.einsum("bhij,bhdj->bhdi", logits.softmax(-1), v)
    return out.reshape(b, nh * dv, h, w)


@pytest.mark.parametrize("scale_pos_embed", [False, True])
@pytest.mark.parametrize("max_size", [64, 3])
def test_matches_paper_equations(scale_pos_embed, max_size):
    m = convattn.create_attn("bottleneck_attn", 16, scale_pos_embed=scale_pos_embed, max_size=max_size)
    with torch.no_grad():
        m.pos_embed.height.normal_()
        m.pos_embed.width.normal_()
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(m(x), reference_botnet(x, m, scale_pos_embed), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale_pos_embed", [False, True])
@pytest.mark.parametrize("size", [(4, 6), (7, 5)])
def test_matches_timm(size, scale_pos_embed):
    timm_layers = pytest.importorskip("timm.layers.bottleneck_attn")
    h, w = size
    ref = timm_layers.BottleneckAttn(16, feat_size=size, num_heads=4, scale_pos_embed=scale_pos_embed).eval()
    m = convattn.create_attn("bottleneck_attn", 16, num_heads=4, scale_pos_embed=scale_pos_embed, max_size=8)
    assert (m.dim_qk, m.dim_v) == (ref.dim_head_qk, ref.dim_head_v)
    c = m.pos_embed.max_size - 1
    with torch.no_grad():
        m.qkv.weight.copy_(ref.qkv.weight)
        m.pos_embed.height.zero_()[c - (h - 1):c + h].copy_(ref.pos_embed.height_rel)
        m.pos_embed.width.zero_()[c - (w - 1):c + w].copy_(ref.pos_embed.width_rel)
    x = torch.randn(2, 16, h, w)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_fused_equals_explicit_and_records():
    m = convattn.create_attn("bottleneck_attn", 16, dim_head=6)
    x = torch.randn(2, 16, 5, 7)
    fused = m(x)
    with convattn.record_attention(m) as maps:
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    a = maps["BottleneckAttn"]
    assert a.shape == (2, 4, 35, 35)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 35))


def test_any_size_with_same_weights():
    m = convattn.create_attn("bottleneck_attn", 16, max_size=4)
    for size in [(1, 1), (3, 4), (9, 11)]:
        assert m(torch.randn(1, 16, *size)).shape == (1, 16, *size)


@pytest.mark.parametrize("bad", [dict(num_heads=3), dict(num_heads=0), dict(dim_head=0), dict(max_size=0)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="BottleneckAttn"):
        convattn.create_attn("bottleneck_attn", 16, **bad)
