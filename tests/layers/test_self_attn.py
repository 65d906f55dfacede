"""SAGAN self-attention against a transcription of Zhang et al. (ICML 2019), Sec. 3."""

import pytest
import torch

import convattn
import convattn.layers.functional as functional


def ref_sagan(x, wf, bf, wg, bg, wh, bh, gamma):
    # f(x) = W_f x, g(x) = W_g x, h(x) = W_h x per position; s_ij = f(x_i)ᵀ g(x_j);
    # β_{j,i} = exp(s_ij) / Σ_i exp(s_ij); o_j = Σ_i β_{j,i} h(x_i); y = γ o + x.
    b, c, hh, ww = x.shape
    xs = x.reshape(b, c, hh * ww)  # columns are positions
    f = torch.einsum("dc,bcn->bdn", wf, xs) + bf[None, :, None]
    g = torch.einsum("dc,bcn->bdn", wg, xs) + bg[None, :, None]
    h = torch.einsum("dc,bcn->bdn", wh, xs) + bh[None, :, None] if wh is not None else xs
    s = torch.einsum("bdi,bdj->bij", f, g)  # s[b, i, j]
    beta = torch.softmax(s, dim=1)  # normalised over i, for each j
    o = torch.einsum("bij,bci->bcj", beta, h)
    return gamma * o.reshape(b, c, hh, ww) + x, beta.transpose(1, 2)  # map[b, j, i] = β_{j,i}


def weights(layer):
    q, k, v = layer.query, layer.key, layer.value
    vw = (v.weight.flatten(1), v.bias) if v is not None else (None, None)
    # In the paper's s_ij = f(x_i)ᵀ g(x_j) with the softmax over i, position j queries:
    # f is the key projection and g the query projection.
    return (k.weight.flatten(1), k.bias, q.weight.flatten(1), q.bias, *vw, layer.gamma)


@pytest.mark.parametrize("value_proj", [True, False])
def test_matches_paper(value_proj):
    layer = convattn.create_attn("self_attn", 32, value_proj=value_proj)
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(2, 32, 5, 7)
    expected, beta = ref_sagan(x, *weights(layer))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with convattn.record_attention(layer) as maps:
        recorded = layer(x)
    torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-5)  # explicit path == fused path
    torch.testing.assert_close(maps["SelfAttention"], beta, rtol=1e-5, atol=1e-6)
    assert maps["SelfAttention"].shape == (2, 35, 35)


def test_query_key_width_is_c_over_8_and_value_is_c():
    layer = convattn.create_attn("self_attn", 64)
    assert layer.query.out_channels == layer.key.out_channels == 8
    assert layer.value.out_channels == 64
    assert convattn.create_attn("self_attn", 64, value_proj=False).value is None


def test_identity_at_init():
    layer = convattn.create_attn("self_attn", 16)
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(layer(x), x)
    assert layer.gamma.item() == 0.0


def test_default_path_never_builds_the_attention_matrix(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("explicit N×N attention built outside recording")

    monkeypatch.setattr(functional, "attention_explicit", refuse)
    layer = convattn.create_attn("self_attn", 16)
    layer(torch.randn(1, 16, 12, 12)).sum().backward()


def test_gradients_match_paper():
    layer = convattn.create_attn("self_attn", 16, rd_channels=4)
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(2, 16, 4, 5, requires_grad=True)
    ours = torch.autograd.grad(layer(x).square().sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad(ref_sagan(x, *weights(layer))[0].square().sum(), [x, *layer.parameters()])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
