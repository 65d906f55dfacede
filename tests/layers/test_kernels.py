"""The C++ kernels: building (cache key, lock, announcement, failures), loading, status, the
custom ops under ``torch.library.opcheck``, and when the layers take them or plain PyTorch ops."""

import io
import logging
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import convattn
from convattn.cli import main
from convattn.layers import kernels
from convattn.layers._kernel_cache import BuildLock
from convattn.layers import cbam as cbam_module
from convattn.layers import se as se_module
from kernel_checks import check_opcheck, fake_build, require

@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private kernel cache and no library loaded yet, so builds can be staged without compiling."""
    monkeypatch.setenv("CONVATTN_KERNELS_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_LOADED", {})
    monkeypatch.setattr(kernels, "_ERRORS", {})
    return tmp_path


# --- building -----------------------------------------------------------------------------
def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert not kernels.extensions_enabled()
    assert se_module.se_ops() is None and cbam_module.cbam_ops() is None
    assert {row["state"] for row in kernels.status()} == {"disabled"}


def test_build_key_includes_torch_compiler_python_and_cpu(monkeypatch):
    base = kernels.build_dir("convattn_se")
    assert base == kernels.build_dir("convattn_se") and base != kernels.build_dir("convattn_cbam")
    for key, value in [("torch", "9.9.9"), ("compiler", "g++ 99.1"), ("python", "cpython-399"), ("cpu_flags", "x")]:
        monkeypatch.setitem(kernels._ENV_CACHE, key, value)
        assert kernels.build_dir("convattn_se") != base, key
        monkeypatch.undo()


def test_first_build_is_announced_once_and_cached(cache, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(kernels.subprocess, "run", fake_build(calls))
    folder = kernels.build_dir("convattn_se")
    folder.mkdir(parents=True)
    (folder / "lock").write_text("")  # torch's lock file, left by an interrupted build
    with caplog.at_level(logging.INFO, logger=kernels.__name__):
        assert kernels.build(["convattn_se"]) == {"convattn_se": folder / "convattn_se.so"}
        kernels.build(["convattn_se"])  # already built: nothing to do
    announcements = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(calls) == 1 and len(announcements) == 1
    assert "compiling its C++ CPU kernels convattn_se" in announcements[0].getMessage()
    assert "convattn kernels build" in announcements[0].getMessage()
    assert not (folder / "lock").exists()
    assert calls[0].split(os.pathsep)[0] == kernels._ninja_path()  # ninja found for the build, PATH untouched here
    kernels.build(["convattn_se"], force=True)
    assert len(calls) == 2


def test_failed_build_warns_falls_back_and_is_reported(cache, monkeypatch):
    monkeypatch.setattr(kernels.subprocess, "run", fake_build([], ok=False))
    with pytest.raises(kernels.KernelBuildError, match="building convattn_se failed: se_cpu.cpp:12:3: error"):
        kernels.build(["convattn_se"])
    (row,) = [r for r in kernels.status() if r["library"] == "convattn_se"]
    assert row["state"] == "failed" and "error: 'foo' was not declared" in row["reason"]
    with pytest.warns(RuntimeWarning, match="could not build or load its C\\+\\+ kernels .*error: 'foo'"):
        assert se_module.se_ops() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then quiet
        layer, x = convattn.create_attn("se", 8), torch.randn(2, 8, 5, 6)
        w = torch.sigmoid(layer.fc2(torch.relu(layer.fc1(x.mean((2, 3), keepdim=True)))))
        torch.testing.assert_close(layer(x), x * w)


def test_ci_fails_instead_of_skipping(cache, monkeypatch):
    monkeypatch.setattr(kernels.subprocess, "run", fake_build([], ok=False))
    monkeypatch.setenv("CI", "true")
    with pytest.warns(RuntimeWarning), pytest.raises(pytest.fail.Exception, match="did not build in CI.*error"):
        require("convattn_se")


def test_no_compiler_is_a_clear_error(cache, monkeypatch):
    kernels._environment()
    monkeypatch.setitem(kernels._ENV_CACHE, "compiler", None)
    with pytest.raises(kernels.KernelBuildError, match="no C\\+\\+ compiler"):
        kernels.build(["convattn_cbam"])
    assert "no C++ compiler" in kernels.status()[1]["reason"]


def test_build_lock_times_out_with_a_clear_message(tmp_path):
    with BuildLock(tmp_path, timeout=5):
        with pytest.raises(kernels.KernelBuildError, match=r"timed out after 0 s waiting for the kernel build lock .*pid"):
            with BuildLock(tmp_path, timeout=0.3):
                pass
    with BuildLock(tmp_path, timeout=0.3):  # released
        pass


def test_build_lock_of_a_killed_process_is_not_stale(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "convattn-build.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(kernels.KernelBuildError, match="timed out"):
            with BuildLock(tmp_path, timeout=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    with BuildLock(tmp_path, timeout=2):  # the OS released it with the process
        pass


def test_loading_is_thread_safe(cache, monkeypatch):
    calls = []

    def slow_load(library, register):
        calls.append(library)
        threading.Event().wait(0.2)
        return "ops"

    monkeypatch.setattr(kernels, "_load_library", slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kernels.load("convattn_se"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["convattn_se"] and results == ["ops"] * 4


def test_status_and_build_commands(cache, monkeypatch, capsys):
    monkeypatch.setattr(kernels.subprocess, "run", fake_build([]))
    assert main(["kernels", "status"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "compiler:" in out and "CPU:" in out
    assert out.count("not built") == 2 and "convattn kernels build" in out
    assert main(["kernels", "build"]) == 0
    out = capsys.readouterr().out
    assert "convattn_se: " in out and "convattn_cbam: " in out
    assert main(["kernels", "status", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count('"state": "built"') == 2 and str(cache) in out
    monkeypatch.setattr(kernels.subprocess, "run", fake_build([], ok=False))
    assert main(["kernels", "build", "--force"]) == 1
    assert "error: building convattn_se failed" in capsys.readouterr().out


# --- the custom ops -----------------------------------------------------------------------
def _se_args(dtype, bias, channels_last):
    se = convattn.create_attn("se", 8, rd_channels=3, bias=bias).to(dtype)
    x = torch.randn(2, 8, 5, 4, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), [se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias]


def _cbam_args(dtype, bias, channels_last):
    layer = convattn.create_attn("cbam", 8, rd_channels=3, bias=bias, kernel_size=3).to(dtype)
    x = torch.randn(2, 8, 5, 4, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ch, sp = layer.channel, layer.spatial
    return x.requires_grad_(), [ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias]


@pytest.mark.parametrize(
    "library,dtype,bias,channels_last",
    [("convattn_se", torch.float32, True, False), ("convattn_cbam", torch.float64, False, True)],
)
def test_opcheck(library, dtype, bias, channels_last):
    ops = require(library)
    x, params = (_se_args if library == "convattn_se" else _cbam_args)(dtype, bias, channels_last)
    check_opcheck(ops, x, params)


@pytest.mark.parametrize(
    "library,dtype,bias,channels_last",
    [("convattn_se", torch.float64, False, True), ("convattn_cbam", torch.float32, True, False)],
)
def test_opcheck_other_dtype_bias_and_layout(library, dtype, bias, channels_last):
    ops = require(library)
    x, params = (_se_args if library == "convattn_se" else _cbam_args)(dtype, bias, channels_last)
    torch.library.opcheck(ops.forward.default, (x, *params), test_utils=("test_schema", "test_faketensor"))


def test_ops_check_parameter_dtype_and_device():
    require("convattn_se")
    x, params = _se_args(torch.float64, True, False)
    params = [p.detach() for p in params]
    with pytest.raises(RuntimeError, match="expected parameters of the input's dtype"):
        torch.ops.convattn_se.forward(x.detach(), params[0].float(), *params[1:])
    with pytest.raises(RuntimeError, match="expected a 4-D"):
        torch.ops.convattn_se.forward(x.detach()[0], *params)


# --- when the layers take the kernels -----------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Records the kernel ops the layers call."""
    calls = []
    for library, module, name in [("convattn_se", se_module, "se_ops"), ("convattn_cbam", cbam_module, "cbam_ops")]:
        ops = require(library)

        class Spy:
            def __init__(self, ops, library):
                self.ops, self.library = ops, library

            def __getattr__(self, op):
                calls.append(f"{self.library}.{op}")
                return getattr(self.ops, op)

        monkeypatch.setattr(module, name, lambda s=Spy(ops, library): s)
    return calls


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_kernels_taken_for_cpu_float_input_and_parameters_of_one_dtype(name, spy):
    layer, x = convattn.create_attn(name, 8), torch.randn(2, 8, 5, 6, requires_grad=True)
    layer(x).sum().backward()
    layer.double()(x.detach().double().contiguous(memory_format=torch.channels_last))
    assert len(spy) == 2
    spy.clear()
    with pytest.raises(RuntimeError):  # float64 parameters, float32 input: PyTorch ops, torch's own error
        layer(x.detach())
    layer(x.detach().double()[:, :, ::2])  # strided
    layer.bfloat16()(x.detach().bfloat16())  # bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.float()(x)
    torch.jit.trace(layer.eval(), x.detach(), check_trace=False)
    torch.func.vmap(layer)(x.detach().unsqueeze(1))
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():  # forward-mode AD: PyTorch ops have its formulas
        out = layer(fwad.make_dual(x.detach(), torch.randn_like(x)))
        assert fwad.unpack_dual(out).tangent is not None
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        layer(x)
    assert spy == []


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_fx_symbolic_trace_records_pytorch_ops(name, spy, monkeypatch):
    # the layers' own dispatch on an FX Proxy (input validation is checked with the other layers)
    for module in (se_module, cbam_module):
        monkeypatch.setattr(module, "check_input", lambda *args, **kwargs: None)
    layer, x = convattn.create_attn(name, 8), torch.randn(2, 8, 5, 6)
    traced = torch.fx.symbolic_trace(layer)
    assert "convattn_" not in traced.code
    torch.testing.assert_close(traced(x), layer(x))
    assert spy == ["convattn_%s.forward" % name]  # the eager call above; the trace took PyTorch ops


def test_cbam_other_configurations_run_pytorch_ops_and_batchnorm_its_kernels(spy):
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    convattn.create_attn("cbam", 8, act_layer="gelu")(x).sum().backward()
    assert spy == []
    convattn.create_attn("cbam", 8, norm_layer="bn")(x).sum().backward()  # BatchNorm in training: its kernels
    with torch.no_grad():  # eval-mode BatchNorm: the running statistics inside the kernel
        convattn.create_attn("cbam", 8, norm_layer="bn").eval()(x)
    assert spy == ["convattn_cbam.bn_forward", "convattn_cbam.bn_forward"]


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_module_on_another_device_never_reaches_the_kernels(name, spy):
    layer = convattn.create_attn(name, 8).to("meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        layer(torch.randn(2, 8, 5, 6)).sum().item()
    assert spy == []


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_jit_trace_and_onnx_see_pytorch_ops(name):
    require(f"convattn_{name}")
    layer, x = convattn.create_attn(name, 8).eval(), torch.randn(2, 8, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and tracer notices
        traced = torch.jit.trace(layer, x)
        assert "convattn_" not in str(traced.inlined_graph)
        other = torch.randn(3, 8, 7, 4)
        torch.testing.assert_close(traced(other), layer(other))
        f = io.BytesIO()
        torch.onnx.export(layer, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    assert b"convattn_" not in f.getvalue() and b"Sigmoid" in f.getvalue()


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_flop_counter_sees_pytorch_ops(name, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    layer, x = convattn.create_attn(name, 16), torch.randn(2, 16, 8, 8)

    def flops():
        with FlopCounterMode(display=False) as counter:
            layer(x)
        return counter.get_total_flops()

    with_kernels = flops()
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert with_kernels == flops() > 0


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_parameter_gradients_are_reproducible_with_threads(name):
    require(f"convattn_{name}")
    layer, x = convattn.create_attn(name, 16, bias=True), torch.randn(9, 16, 6, 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # uneven chunks over the batch
    try:
        first = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
        for _ in range(3):
            again = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
            for u, v in zip(first, again):
                assert torch.equal(u, v)
    finally:
        torch.set_num_threads(threads)


def _plain_cbam(layer, x):
    g = layer.channel.weights(x)
    refined = x * g[:, :, None, None]
    return refined * layer.spatial.weights(refined)


@pytest.mark.parametrize("kernel_size", [1, 3, 7, 9])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 6, 1, 13), (3, 20, 9, 11)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_layer_kernels_match_autograd(kernel_size, bias, shape, channels_last):
    require("convattn_cbam")
    torch.manual_seed(0)
    layer = convattn.create_attn("cbam", shape[1], rd_channels=3, bias=bias, kernel_size=kernel_size).double()
    with torch.no_grad():
        for q in layer.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)
    ours = layer(x)
    ref = _plain_cbam(layer, x)
    torch.testing.assert_close(ours, ref)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref)
    params = list(layer.parameters())
    for u, v in zip(torch.autograd.grad(ours, [x, *params], dy), torch.autograd.grad(ref, [x, *params], dy)):
        torch.testing.assert_close(u, v)


def test_whole_layer_kernels_with_frozen_parts():
    require("convattn_cbam")
    layer = convattn.create_attn("cbam", 12, rd_channels=3, bias=True)
    layer.channel.fc1.requires_grad_(False)
    x = torch.randn(2, 12, 6, 5)  # no input gradient wanted: the backward skips it
    ours = torch.autograd.grad(layer(x).square().sum(), [q for q in layer.parameters() if q.requires_grad])
    ref = torch.autograd.grad(_plain_cbam(layer, x).square().sum(), [q for q in layer.parameters() if q.requires_grad])
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v)


def test_eval_batchnorm_is_folded_exactly():
    require("convattn_cbam")
    torch.manual_seed(0)
    layer = convattn.create_attn("cbam", 16, norm_layer="bn").double()
    with torch.no_grad():
        for q in layer.parameters():
            q.copy_(torch.randn_like(q) * 0.5)
        bn = layer.spatial.norm
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    layer.eval()
    x = torch.randn(3, 16, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _plain_cbam(layer, x))


@pytest.mark.parametrize("name", ["se", "cbam"])
def test_kernel_gates_are_recorded_detached_and_leave_the_gradients_alone(name):
    """The ops' gate outputs are not differentiable (layers record them detached); recording on the
    kernel path gives the plain path's maps and gradients."""
    require(f"convattn_{name}")
    layer, x = convattn.create_attn(name, 8, bias=True).double(), torch.randn(2, 8, 5, 6, dtype=torch.float64)
    x.requires_grad_(True)
    ops = getattr(torch.ops, f"convattn_{name}")
    params = [p for p in layer.parameters()]
    out, *rest = ops.forward(x, *params)
    assert out.requires_grad and rest and not any(t.requires_grad for t in rest)

    def run():
        with convattn.record_attention(layer) as maps:
            y = layer(x)
        assert maps and not any(m.requires_grad for m in maps.values())
        return maps, torch.autograd.grad(y.square().sum(), [x, *params])

    maps, grads = run()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVATTN_EXTENSIONS", "0")
        ref_maps, ref_grads = run()
    assert maps.keys() == ref_maps.keys()
    for k in maps:
        torch.testing.assert_close(maps[k], ref_maps[k])
    for u, v in zip(grads, ref_grads):
        torch.testing.assert_close(u, v)
