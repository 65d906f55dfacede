"""HaloNet attention against a transcription of Vaswani et al. (CVPR 2021), Sec. 2.2, and against timm."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_halo(x, m, mask_padding=True):
    """Position by position: each query attends to its block's haloed window."""
    b, c, h, w = x.shape
    nh, dqk, dv = m.num_heads, m.dim_qk, m.dim_v
    bs, hs = m.block_size, m.halo_size
    q = torch.einsum("oc,bchw->bohw", m.q.weight[:, :, 0, 0], x).reshape(b, nh, dqk, h, w)
    kv = torch.einsum("oc,bchw->bohw", m.kv.weight[:, :, 0, 0], x).reshape(b, nh, dqk + dv, h, w)
    k, v = kv[:, :, :dqk], kv[:, :, dqk:]
    s = dqk**-0.5
    out = torch.zeros(b, nh, dv, h, w)
    for y in range(h):
        for xx in range(w):
            y0, x0 = (y // bs) * bs - hs, (xx // bs) * bs - hs
            logits, values = [], []
            for ky in range(y0, y0 + bs + 2 * hs):
                for kx in range(x0, x0 + bs + 2 * hs):
                    inside = 0 <= ky < h and 0 <= kx < w
                    if not inside and mask_padding:
                        continue
                    kk = k[..., ky, kx] if inside else torch.zeros(b, nh, dqk)
                    vv = v[..., ky, kx] if inside else torch.zeros(b, nh, dv)
                    qi = q[..., y, xx]
                    rel = qi @ m.height_rel[ky - y + hs + bs - 1] + qi @ m.width_rel[kx - xx + hs + bs - 1]
                    logits.append(s * (qi * kk).sum(-1) + rel)
                    values.append(vv)
            a = torch.stack(logits, -1).softmax(-1)  # (B, nh, n)
            out[..., y, xx] = torch.einsum("bhn,bhnd->bhd", a, torch.stack(values, -2))
    return out.reshape(b, nh * dv, h, w)


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize("size,block,halo", [((5, 6), 2, 1), ((4, 4), 4, 0), ((3, 5), 4, 2)])
def test_matches_paper_equations(size, block, halo, mask_padding):
    m = convattn.create_attn("halo", 8, num_heads=2, block_size=block, halo_size=halo, mask_padding=mask_padding)
    with torch.no_grad():
        m.height_rel.normal_()
        m.width_rel.normal_()
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(m(x), reference_halo(x, m, mask_padding), rtol=1e-4, atol=1e-5)


def _copy_from_timm(m, ref):
    hs = m.halo_size
    n = m.height_rel.shape[0]
    with torch.no_grad():
        m.q.weight.copy_(ref.q.weight)
        m.kv.weight.copy_(ref.kv.weight)
        m.height_rel.copy_(ref.pos_embed.height_rel[2 * hs:2 * hs + n])
        m.width_rel.copy_(ref.pos_embed.width_rel[2 * hs:2 * hs + n])


@pytest.mark.parametrize("scale_pos_embed", [False, True])
def test_matches_timm_without_masking(scale_pos_embed):
    timm_halo = pytest.importorskip("timm.layers.halo_attn")
    ref = timm_halo.HaloAttn(16, num_heads=4, block_size=4, halo_size=2, scale_pos_embed=scale_pos_embed).eval()
    m = convattn.create_attn(
        "halo", 16, num_heads=4, block_size=4, halo_size=2, scale_pos_embed=scale_pos_embed, mask_padding=False
    )
    assert (m.dim_qk, m.dim_v) == (ref.dim_head_qk, ref.dim_head_v)
    _copy_from_timm(m, ref)
    x = torch.randn(2, 16, 8, 12)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_masking_only_changes_border_blocks():
    timm_halo = pytest.importorskip("timm.layers.halo_attn")
    ref = timm_halo.HaloAttn(16, num_heads=4, block_size=2, halo_size=1).eval()
    m = convattn.create_attn("halo", 16, num_heads=4, block_size=2, halo_size=1)
    _copy_from_timm(m, ref)
    x = torch.randn(1, 16, 8, 8)
    ours, theirs = m(x), ref(x)
    torch.testing.assert_close(ours[..., 2:6, 2:6], theirs[..., 2:6, 2:6], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours[..., :2, :], theirs[..., :2, :], atol=1e-3)


def test_fused_equals_explicit_and_records():
    m = convattn.create_attn("halo", 16, block_size=4, halo_size=1)
    x = torch.randn(2, 16, 7, 9)
    fused = m(x)
    with convattn.record_attention(m) as maps:
        explicit = m(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    a = maps["HaloAttn"]
    assert a.shape == (2, 4, 2 * 3, 16, 36)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 6, 16))
    assert (a[:, :, 0, :, :6] == 0).all()  # the window row above the image is masked


def test_output_does_not_depend_on_what_lies_outside():
    m = convattn.create_attn("halo", 16, block_size=4, halo_size=2)
    x = torch.randn(1, 16, 6, 7)
    big = torch.randn(1, 16, 12, 12)
    # the same content at the top-left of a larger map changes only positions whose windows grew
    big[..., :6, :7] = x
    assert m(x).shape == x.shape
    torch.testing.assert_close(m(x)[..., :2, :2], m(big)[..., :2, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(num_heads=5), dict(block_size=0), dict(halo_size=-1), dict(dim_head=0)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="HaloAttn"):
        convattn.create_attn("halo", 16, **bad)
