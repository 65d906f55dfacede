"""``convattn.layers.functional``: the fused path equals softmax(Q Kᵀ · scale + bias) V."""

import math

import pytest
import torch

from convattn.layers.functional import attention, attention_explicit


def reference(q, k, v, scale=None, bias=None):
    # Vaswani et al. Eq. 1, written out with an explicit loop over queries.
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows = []
    for i in range(q.shape[-2]):
        logits = (q[..., i : i + 1, :] * k).sum(-1) * s  # (..., Nk)
        if bias is not None:
            logits = logits + bias.expand(*q.shape[:-2], q.shape[-2], k.shape[-2])[..., i, :]
        w = torch.exp(logits - logits.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        rows.append((w[..., :, None] * v).sum(-2))
    return torch.stack(rows, dim=-2)


CASES = [
    # (d_qk, d_v, scale, bias shape or None)
    (8, 8, None, None),
    (4, 12, None, None),  # values wider than queries (q/k padded)
    (12, 4, None, None),  # values narrower (v padded, output sliced)
    (8, 8, 1.0, None),  # no scaling (SAGAN / non-local / DANet)
    (6, 10, 0.3, "full"),
    (10, 6, None, "heads"),
]


@pytest.mark.parametrize("d,dv,scale,bias_kind", CASES)
def test_fused_equals_explicit_equals_reference(d, dv, scale, bias_kind):
    torch.manual_seed(0)
    b, h, nq, nk = 2, 3, 11, 7
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, dv)
    bias = None
    if bias_kind == "full":
        bias = torch.randn(b, h, nq, nk)
    elif bias_kind == "heads":
        bias = torch.randn(1, h, nq, nk)  # broadcast over the batch
    fused, none = attention(q, k, v, scale=scale, bias=bias)
    explicit, attn = attention(q, k, v, scale=scale, bias=bias, need_weights=True)
    assert none is None
    assert fused.shape == explicit.shape == (b, h, nq, dv)
    assert attn.shape == (b, h, nq, nk)
    torch.testing.assert_close(attn.sum(-1), torch.ones(b, h, nq))
    ref = reference(q, k, v, scale, bias)
    torch.testing.assert_close(explicit, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d,dv", [(4, 12), (12, 4), (8, 8)])
def test_gradients_of_both_paths_agree(d, dv):
    torch.manual_seed(1)
    shapes = [(2, 2, 9, d), (2, 2, 5, d), (2, 2, 5, dv)]
    base = [torch.randn(s, dtype=torch.float64) for s in shapes]
    bias0 = torch.randn(2, 2, 9, 5, dtype=torch.float64)
    grads = []
    for need in (False, True):
        ins = [t.clone().requires_grad_() for t in base]
        bias = bias0.clone().requires_grad_()
        out, _ = attention(*ins, bias=bias, need_weights=need)
        (out * torch.arange(dv, dtype=out.dtype)).sum().backward()
        grads.append([t.grad for t in ins] + [bias.grad])
    for g_fused, g_explicit in zip(*grads):
        torch.testing.assert_close(g_fused, g_explicit, rtol=1e-7, atol=1e-9)


def test_float32_bias_with_float64_queries_is_cast():
    q = k = v = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    bias = torch.randn(1, 1, 4, 4)
    fused, _ = attention(q, k, v, bias=bias)
    explicit, _ = attention_explicit(q, k, v, bias=bias.double())
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, explicit)


def test_explicit_path_is_softmax_of_scaled_logits():
    q, k, v = torch.randn(3, 5, 4), torch.randn(3, 6, 4), torch.eye(6).expand(3, 6, 6)
    out, attn = attention_explicit(q, k, v, scale=0.5)
    torch.testing.assert_close(attn, torch.softmax(q @ k.transpose(1, 2) * 0.5, dim=-1))
    torch.testing.assert_close(out, attn)  # identity values return the weights


def test_strided_head_dimension_still_uses_the_fused_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # (B, C, N) feature maps viewed as (B, 1, N, C): the layout non_local / SAGAN / DANet pass in.
    q = torch.randn(2, 8, 20).transpose(1, 2)[:, None]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        attention(q, q, q)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("d,dv,scale,bias_kind", CASES)
def test_forward_mode_ad_equals_the_explicit_path(d, dv, scale, bias_kind, requires_grad):
    """Dual tensors (``torch.autograd.forward_ad``) and ``torch.func.jvp`` through the fused path give
    the explicit path's tangents; the fused kernels have no forward-AD formulas, so SDPA's math backend runs."""
    import torch.autograd.forward_ad as fwad

    torch.manual_seed(2)
    b, h, nq, nk = 2, 3, 7, 5
    shapes = [(b, h, nq, d), (b, h, nk, d), (b, h, nk, dv)]
    if bias_kind is not None:
        shapes.append((b, h, nq, nk) if bias_kind == "full" else (1, h, nq, nk))
    primals = [torch.randn(s, dtype=torch.float64).requires_grad_(requires_grad) for s in shapes]
    tangents = [torch.randn(s, dtype=torch.float64) for s in shapes]

    def run(fn, *ts):
        return fn(*ts[:3], scale=scale, bias=ts[3] if len(ts) > 3 else None)[0]

    def dual(fn):
        with fwad.dual_level():
            return fwad.unpack_dual(run(fn, *map(fwad.make_dual, primals, tangents)))

    ref_out, ref_tangent = dual(attention_explicit)
    out, tangent = dual(attention)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)
    jvp_out, jvp_tangent = torch.func.jvp(lambda *ts: run(attention, *ts), tuple(primals), tuple(tangents))
    torch.testing.assert_close(jvp_out, ref_out)
    torch.testing.assert_close(jvp_tangent, ref_tangent)
    jac = torch.func.jacfwd(lambda q: run(attention, q, *primals[1:]))(primals[0])
    ref_jac = torch.func.jacrev(lambda q: run(attention_explicit, q, *primals[1:]))(primals[0])
    torch.testing.assert_close(jac, ref_jac)


@pytest.mark.parametrize("name", ["self_attn", "non_local", "danet_pam", "mhsa"])
def test_forward_mode_ad_through_a_self_attention_layer_equals_the_explicit_path(name):
    """A layer's jvp (``torch.func.jvp`` and dual tensors) equals the one of its explicit
    ``softmax(QKᵀ)V`` path (taken while recording), with an input that requires a gradient."""
    import torch.autograd.forward_ad as fwad

    import convattn

    torch.manual_seed(0)
    layer = convattn.create_attn(name, 8).double().eval()  # eval: BatchNorm's statistics stay put
    with torch.no_grad():
        for p in layer.parameters():  # off the identity at initialisation (γ = 0)
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn_like(x)

    def dual():
        with fwad.dual_level():
            return fwad.unpack_dual(layer(fwad.make_dual(x, t)))

    with convattn.record_attention(layer):
        ref_out, ref_tangent = dual()
    out, tangent = dual()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)
    assert tangent.abs().max() > 0
    jvp_out, jvp_tangent = torch.func.jvp(layer, (x,), (t,))
    torch.testing.assert_close(jvp_out, ref_out)
    torch.testing.assert_close(jvp_tangent, ref_tangent)
