"""Global context block against a transcription of GCNet (Cao et al., 2019), Eq. 3, and timm."""

import pytest
import torch
from timm.layers.global_context import GlobalContext as TimmGlobalContext

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


def transform(ctx, w1, b1, g, beta, w2, b2, eps):
    # W_v2 ReLU(LN(W_v1 ctx)), LN over the C·r bottleneck channels.
    t = ctx @ w1.T + b1
    mu = t.mean(1, keepdim=True)
    var = ((t - mu) ** 2).mean(1, keepdim=True)
    t = (t - mu) / torch.sqrt(var + eps) * g + beta
    return torch.relu(t) @ w2.T + b2


def reference_gc(x, wk, bk, add=None, mul=None, eps=1e-5):
    # Eq. 3: z_i = x_i + W_v2 ReLU(LN(W_v1 Σ_j [exp(W_k x_j) / Σ_m exp(W_k x_m)] x_j))
    b, c, h, w = x.shape
    xs = x.reshape(b, c, h * w)  # x_j as columns
    logits = torch.einsum("c,bcj->bj", wk, xs) + bk
    alpha = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    ctx = (xs * alpha[:, None, :]).sum(2)  # (B, C)
    out = x
    if mul is not None:
        out = out * torch.sigmoid(transform(ctx, *mul, eps))[:, :, None, None]
    if add is not None:
        out = out + transform(ctx, *add, eps)[:, :, None, None]
    return out, alpha.reshape(b, 1, h, w)


def params(seq):
    return (seq[0].weight.flatten(1), seq[0].bias, seq[1].weight.flatten(), seq[1].bias.flatten(),
            seq[3].weight.flatten(1), seq[3].bias)


@pytest.mark.parametrize("fusion", ["add", "mul", "both"])
def test_matches_paper_equations(fusion):
    layer = convattn.create_attn("gc", 32, fusion=fusion, rd_ratio=1 / 4)
    randomise(layer)
    x = torch.randn(2, 32, 5, 7)
    ref, alpha = reference_gc(
        x, layer.conv_attn.weight.flatten(), layer.conv_attn.bias,
        add=params(layer.transform_add) if layer.transform_add is not None else None,
        mul=params(layer.transform_mul) if layer.transform_mul is not None else None,
    )
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(maps[next(iter(maps))], alpha)


def test_identity_at_initialisation_with_add_fusion():
    layer = convattn.create_attn("gc", 16)
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(layer(x), x)
    # The context branch still receives gradients through the zero-initialised last conv.
    layer(x).sum().backward()
    assert layer.transform_add[3].weight.grad.abs().sum() > 0


def test_mul_fusion_starts_at_half():
    layer = convattn.create_attn("gc", 16, fusion="mul")
    x = torch.randn(2, 16, 3, 4)
    torch.testing.assert_close(layer(x), x / 2)


def test_avg_pooling_is_se_like():
    layer = convattn.create_attn("gc", 16, pooling="avg")
    randomise(layer)
    x = torch.randn(2, 16, 4, 5)
    ref = x + transform(x.mean((2, 3)), *params(layer.transform_add), 1e-5)[:, :, None, None]
    torch.testing.assert_close(layer(x), ref)


def test_bottleneck_width():
    assert convattn.create_attn("gc", 256).transform_add[0].out_channels == 16
    assert convattn.create_attn("gc", 256, rd_ratio=1 / 4).transform_add[0].out_channels == 64
    assert convattn.create_attn("gc", 16).transform_add[0].out_channels == 2  # floor: LN of one channel is constant


@pytest.mark.parametrize(
    "fusion, timm_kw", [("add", dict(fuse_add=True, fuse_scale=False)), ("mul", {}),
                        ("both", dict(fuse_add=True, fuse_scale=True))]
)
def test_matches_timm(fusion, timm_kw):
    ours = convattn.create_attn("gc", 32, fusion=fusion, rd_ratio=1 / 8, eps=1e-6)
    theirs = TimmGlobalContext(32, rd_ratio=1 / 8, **timm_kw)
    randomise(theirs)
    sd = theirs.state_dict()
    mapped = {}
    for k, v in sd.items():
        k = k.replace("mlp_add.", "transform_add.").replace("mlp_scale.", "transform_mul.")
        k = k.replace(".fc1.", ".0.").replace(".norm.", ".1.").replace(".fc2.", ".3.")
        mapped[k] = v.reshape(ours.state_dict()[k].shape)
    ours.load_state_dict(mapped)
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(
    "bad", [dict(fusion="cat"), dict(pooling="max"), dict(rd_ratio=2.0), dict(gate_layer="sigmoid"),
            dict(act_layer="rleu"), dict(rd_channels=1)]
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="GlobalContext"):
        convattn.create_attn("gc", 16, **bad)
