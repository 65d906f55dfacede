"""The toolchain matrix: every registered layer in every workflow users run with an ``nn.Module``.

Mixed precision, low-precision parameters, second-order gradients (gradgradcheck and a
gradient penalty against plain autograd), ``torch.func`` per-sample gradients,
``torch.compile``, ``torch.export`` with dynamic shapes, ``torch.fx``, ``torch.jit.trace``,
ONNX (both exporters, checked with onnxruntime) and deterministic mode. Each layer is
built with its defaults, as in the contract tests. docs/compatibility.md is the table
these tests keep true.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import convattn
from convattn.layers import functional as attn_functional

NAMES = convattn.list_attn()
C = 16

# Layers with a fast path: the C++/fused kernels of SE and CBAM, and the fused SDPA of the
# self-attention layers. "off" runs them on their plain PyTorch paths.
_FAST_MODULES = {"se", "cbam", "self_attn", "non_local", "danet", "halo_attn", "mhsa", "aa_conv", "bottleneck_attn"}
FAST = [n for n in NAMES if convattn.get_attn_info(n).cls.__module__.rsplit(".", 1)[-1] in _FAST_MODULES]
FAST_SWITCH = [(n, mode) for n in NAMES for mode in (("on", "off") if n in FAST else ("on",))]


# Open gaps (docs/compatibility.md): strict, so that a fix shows up as XPASS and the mark goes.
_GAPS = {
    ("halo", "onnx-dynamo"): "the exporter catches HaloNet's refusal of a dynamic H×W and falls back to a static trace",
    ("halo", "onnx-torchscript"): "the TorchScript ONNX exporter cannot unfold a dynamic-size input",
}
# Combinations a layer refuses with a clear error (asserted instead of the workflow).
_REFUSED = {
    ("halo", "export"): "expects a static H×W under torch.export",
}


def _with_gaps(workflow: str, names=NAMES) -> list:
    return [
        pytest.param(n, marks=pytest.mark.xfail(reason=_GAPS[n, workflow], strict=True))
        if (n, workflow) in _GAPS else n
        for n in names
    ]


# Every layer compiles with AOTAutograd (Dynamo's full graph, functionalised forward and
# backward; about a second each). Inductor's code generation costs 6-23 s of CPU per layer
# with a cold cache, so the default run compiles four layers that between them cover gates
# with a pooled MLP and a k×k convolution, a 1-D convolution, SDPA and sampling; with
# CONVATTN_FULL_MATRIX=1 (`make test-full`) it also compiles one layer for each further kind
# (batch norm, coordinate pooling, relative positions, blocked windows, SE's kernel op).
INDUCTOR = ["cbam", "eca", "self_attn", "stn"]
INDUCTOR_FULL = ["se", "bam", "coord", "non_local", "mhsa", "halo"]
FULL_MATRIX = os.environ.get("CONVATTN_FULL_MATRIX", "").strip().lower() in ("1", "true", "yes", "on")
COMPILE_CASES = (
    [pytest.param(n, "aot_eager") for n in NAMES]
    + [pytest.param(n, "inductor", marks=pytest.mark.slow) for n in INDUCTOR]
    + [
        pytest.param(n, "inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
            not FULL_MATRIX, reason="Inductor for every kind of layer: set CONVATTN_FULL_MATRIX=1 (make test-full)")])
        for n in INDUCTOR_FULL
    ]
)


def _shape(info, b: int, spatial: tuple[int, int], c: int = C) -> tuple[int, ...]:
    n = info.ndim - 2
    sizes = (tuple(spatial) + (spatial[-1],) * n)[:n]
    if n == 3:  # (T, H, W): a short clip
        sizes = (2, *spatial)
    return (b, c, *sizes)


def _build(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    layer = convattn.create_attn(name, C)
    with torch.no_grad():  # move every parameter off its initial value (γ = 0 gates pass gradients)
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer.to(dtype)


def _conv(info, dtype: torch.dtype = torch.float32) -> nn.Module:
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[info.ndim]
    return conv(3, C, 3, padding=1).to(dtype)


@contextlib.contextmanager
def _plain(monkeypatch):
    """Every fast path off: no C++ kernels, SDPA's math backend through plain autograd."""
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    monkeypatch.setattr(attn_functional, "double_backward_wrapper_may_run", lambda *t: False)
    with sdpa_kernel([SDPBackend.MATH]):
        yield
    monkeypatch.undo()


def _fast_mode(mode: str, monkeypatch):
    if mode == "on":
        return contextlib.nullcontext()
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    return sdpa_kernel([SDPBackend.MATH])


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖``, ``‖b‖`` floored at 1e-2 (some gradients are zero but for rounding)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-2))


# --------------------------------------------------------------------------- precision


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16_after_a_convolution(name):
    info = convattn.get_attn_info(name)
    conv, layer = _conv(info), _build(name)
    x = torch.randn(_shape(info, 4, (6, 5), c=3))
    # Training mode: forward and backward run and stay finite.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(conv(x))
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    for p in (*conv.parameters(), *layer.parameters()):
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()
    # Eval mode (batch statistics of a few pooled values would amplify rounding): the numbers
    # are float32's to bfloat16 accuracy (the spatial transformer's sampling grid is the most
    # sensitive: 10% measured).
    conv.eval(), layer.eval()
    results = []
    for amp in (False, True):
        conv.zero_grad(), layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = layer(conv(x))
        out.float().square().sum().backward()
        results.append([out, *(p.grad for p in (*conv.parameters(), *layer.parameters()))])
    scale = max(float(t.norm()) for t in results[0])
    for got, want in zip(*results):
        # Gradients that vanish but for rounding (a bias before batch norm) are compared
        # against the largest gradient's scale.
        err = float((got.double() - want.double()).norm()) / max(float(want.norm()), 1e-3 * scale)
        assert err < 0.2, f"{name}: relative error {err:.3f} in a tensor of shape {tuple(want.shape)}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_parameters(name, dtype):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    x = torch.randn(_shape(info, 2, (6, 5)))
    ref = layer(x)
    low = layer.to(dtype)
    xl = x.to(dtype).requires_grad_()
    out = low(xl)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert xl.grad is not None and xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()
    assert _rel_err(out, ref) < 0.05


# --------------------------------------------------------------------------- second order


@pytest.mark.parametrize("name,fast", FAST_SWITCH)
def test_gradgradcheck_float64(name, fast, monkeypatch):
    info = convattn.get_attn_info(name)
    layer = _build(name, torch.float64).eval()
    side = max(3, info.min_size)
    x = torch.randn(_shape(info, 1, (side, side + 1)), dtype=torch.float64, requires_grad=True)
    with _fast_mode(fast, monkeypatch):
        assert torch.autograd.gradgradcheck(layer, (x,), eps=1e-6, atol=1e-4, nondet_tol=1e-7, fast_mode=True)


def _penalty_step(conv: nn.Module, layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor | None]:
    """R1-style penalty: the squared norm of d(output)/d(input), backpropagated to the parameters."""
    for p in (*conv.parameters(), *layer.parameters()):
        p.grad = None
    xi = x.clone().requires_grad_()
    out = layer(conv(xi))
    (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(), xi, create_graph=True)
    g.square().sum().backward()
    return [p.grad for p in (*conv.parameters(), *layer.parameters())]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_penalty_equals_plain_autograd(name, monkeypatch):
    info = convattn.get_attn_info(name)
    conv, layer = _conv(info, torch.float64), _build(name, torch.float64)
    x = torch.randn(_shape(info, 2, (5, 4), c=3), dtype=torch.float64)
    fast = _penalty_step(conv, layer, x)
    with _plain(monkeypatch):
        plain = _penalty_step(conv, layer, x)
    names = [f"conv.{n}" for n, _ in conv.named_parameters()] + [n for n, _ in layer.named_parameters()]
    for n, gf, gp in zip(names, fast, plain):
        if gp is None:
            assert gf is None, n
            continue
        assert gf is not None, f"{name}: the penalty does not reach {n}"
        torch.testing.assert_close(gf, gp, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}.{n}: {m}")


# --------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize("name", NAMES)
def test_vmap_grad_per_sample_gradients_equal_a_loop(name):
    from torch.func import functional_call, grad, vmap

    info = convattn.get_attn_info(name)
    layer = _build(name, torch.float64).eval()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = dict(layer.named_buffers())
    x = torch.randn(_shape(info, 3, (5, 4)), dtype=torch.float64)

    def loss(p, xi):
        return functional_call(layer, (p, buffers), (xi.unsqueeze(0),)).square().sum()

    per_param, per_input = vmap(grad(loss, argnums=(0, 1)), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        layer.zero_grad()
        xi = x[i : i + 1].clone().requires_grad_()
        layer(xi).square().sum().backward()
        torch.testing.assert_close(per_input[i], xi.grad[0], rtol=1e-7, atol=1e-9)
        for k, p in layer.named_parameters():
            torch.testing.assert_close(per_param[k][i], p.grad, rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}.{k}: {m}")


# --------------------------------------------------------------------------- compilers and tracers


@pytest.mark.parametrize("name,backend", COMPILE_CASES)
def test_compile_fullgraph_forward_backward_equal_eager(name, backend):
    info = convattn.get_attn_info(name)
    layer = _build(name, torch.float64)  # float64: reordered sums stay far below the tolerance
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    x = torch.randn(_shape(info, 2, (6, 5)), dtype=torch.float64)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    # One after the other: training-mode batch norm updates its running statistics in place.
    out_e = layer(xe)
    out_e.square().sum().backward()
    grads_e = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    out_c = compiled(xc)
    out_c.square().sum().backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-7, atol=1e-9)
    for p, g in zip(layer.parameters(), grads_e):
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-9)


def _dynamic(x: torch.Tensor) -> dict[int, object]:
    return {i: torch.export.Dim.DYNAMIC for i in [0, *range(2, x.dim())]}


@pytest.mark.parametrize("name", _with_gaps("export"))
def test_export_with_dynamic_batch_and_size(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    x = torch.randn(_shape(info, 2, (6, 5)))
    if (name, "export") in _REFUSED:
        with pytest.raises(Exception, match=_REFUSED[name, "export"]):
            torch.export.export(layer, (x,), dynamic_shapes=(_dynamic(x),))
        torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))  # a dynamic batch works
        return
    exported = torch.export.export(layer, (x,), dynamic_shapes=(_dynamic(x),)).module()
    for b, size in ((2, (6, 5)), (3, (9, 7)), (1, (5, 8))):
        x2 = torch.randn(_shape(info, b, size))
        torch.testing.assert_close(exported(x2), layer(x2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fx_symbolic_trace(name):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    for mode in (True, False):  # a graph bakes in the mode it was traced in (as torchvision's extractor knows)
        layer.train(mode)
        graph = torch.fx.symbolic_trace(layer)
        x = torch.randn(_shape(info, 2, (7, 5)))
        torch.manual_seed(1)
        want = layer(x)
        torch.manual_seed(1)
        torch.testing.assert_close(graph(x), want)


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "coord", "non_local", "self_attn", "halo"])
def test_create_feature_extractor_on_a_torchvision_resnet_with_layers(name):
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    net = resnet18(num_classes=10)
    convattn.insert_attn(net, name)
    net.eval()
    extractor = create_feature_extractor(net, return_nodes={"layer3": "c4", "layer4": "c5", "fc": "logits"})
    x = torch.randn(2, 3, 64, 48)
    feats = extractor(x)
    torch.testing.assert_close(feats["logits"], net(x))
    assert feats["c4"].shape == (2, 256, 4, 3) and feats["c5"].shape == (2, 512, 2, 2)
    graph_targets = {n.target for n in extractor.graph.nodes if n.op == "call_module"}
    assert any("attn" in str(t) for t in graph_targets)


@pytest.mark.parametrize("name", NAMES)
def test_jit_trace_eval_mode(name):
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    x = torch.randn(_shape(info, 2, (6, 5)))
    traced = torch.jit.trace(layer, (x,), check_trace=True)
    torch.testing.assert_close(traced(x), layer(x), rtol=1e-5, atol=1e-6)
    assert not [n.kind() for n in traced.inlined_graph.nodes() if n.kind().startswith("convattn")]


# --------------------------------------------------------------------------- ONNX


def _onnx_run(path, x: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize(
    "name,dynamo",
    [
        pytest.param(n, exporter == "dynamo", id=f"{n}-{exporter}",
                     marks=pytest.mark.xfail(reason=_GAPS[n, f"onnx-{exporter}"], strict=True)
                     if (n, f"onnx-{exporter}") in _GAPS else ())
        for n in NAMES
        for exporter in ("dynamo", "torchscript")
    ],
)
def test_onnx_export_matches_onnxruntime(name, dynamo, tmp_path):
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    info = convattn.get_attn_info(name)
    layer = _build(name).eval()
    x = torch.randn(_shape(info, 2, (6, 5)))
    path = tmp_path / "layer.onnx"
    spatial = {i: f"s{i}" for i in range(2, x.dim())}
    if dynamo:
        dyn = {i: torch.export.Dim.DYNAMIC for i in range(2, x.dim())}
        program = torch.onnx.export(layer, (x,), dynamo=True, dynamic_shapes=(dyn,), verbose=False)
        program.save(str(path))
    else:
        axes = {"x": spatial, "y": spatial} if info.kind != "pool" else {"x": spatial}
        torch.onnx.export(layer, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes=axes)
    for size in ((6, 5), (9, 7)):
        x2 = torch.randn(_shape(info, 2, size))
        torch.testing.assert_close(_onnx_run(path, x2), layer(x2), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_algorithms(name):
    info = convattn.get_attn_info(name)
    layer = _build(name)
    x = torch.randn(_shape(info, 2, (6, 5)), requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            layer.zero_grad()
            x.grad = None
            layer(x).square().sum().backward()
            runs.append([x.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
