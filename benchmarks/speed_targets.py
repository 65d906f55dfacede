"""Speed targets, each a ratio of two timings taken in this one run on this machine.

    python benchmarks/speed_targets.py [--quick] [--threads N] [--clock wall|process] [--malloc keep|default]
                                       [--no-compile]

``--quick`` takes fewer 224x224 training steps (about 2-3 minutes on one thread);
``--clock process`` (the default with ``--threads 1``) counts this process's CPU
time, which holds up better than wall time on a machine shared with other jobs.

1. cbam and se forward (B=8, C=64, 56x56), NCHW and channels_last, against timm's CbamModule / SEModule
   and against ``x.clone()`` of the same input (the memory floor: one read, one write), the three calls
   interleaved: cbam <= 0.25x timm and <= 3x a clone, se <= 0.7x timm and <= 1.6x a clone
2. cbam with norm_layer="bn" (timm's configuration) forward+backward vs timm's CbamModule,
   NCHW and channels_last                                                          (target <= 0.5x)
3. resnet18 SGD training step, batch 32 at 224x224 and batch 64 at 64x64, with se and with cbam:
   vs timm's same model (target <= 1.0x) and vs plain resnet18 (target <= 1.05x se, <= 1.10x cbam)
4. simple_cnn + cbam on 1x28x28, batch 128, SGD step vs plain simple_cnn          (target < 1.20x)
5. simple_cnn + cbam (identity_init) on 1x60x60, batch 32, channels_last, AdamW step (the demo's
   training step) vs plain simple_cnn                                              (target <= 1.10x)

Then, without targets, which path to use for SE and CBAM (B=8, C=64, 56x56, NCHW and
channels_last, inference and a forward+backward training pass): convattn's default
(the C++ kernels in eager mode), ``torch.compile`` of the layer (which compiles
convattn's plain PyTorch-op path; the first call's compile time is not counted) and
timm's module in eager mode. ``--no-compile`` leaves this table out.

Timings alternate between the two sides of a ratio (A B A B ...) so that load from
other processes hits both alike; the median of each side is used.

``--malloc keep`` (the default on glibc) asks malloc to keep freed memory in the heap
(no trimming, no mmap for large blocks), as PyTorch's CPU performance guide suggests
by way of jemalloc/tcmalloc. With glibc's defaults, whichever layer runs after the other
one freed its tensors pays about 1,500-3,000 page faults per call (1-2 ms here) for
re-touching memory returned to the system, so alternating single calls measure the
allocator as much as the layers; ``--malloc default`` keeps glibc's behaviour.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import platform
import statistics
import sys
import time

import torch
from torch import nn

from convattn import create_attn
from convattn.models import create_model


CLOCK = time.perf_counter


def keep_heap() -> bool:
    """glibc only: stop malloc from trimming the heap or serving large blocks with mmap. True if applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_max, 0))


def _alternating(fa, fb, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = CLOCK(); fa(); ta.append(CLOCK() - t0)
        t0 = CLOCK(); fb(); tb.append(CLOCK() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def _interleaved(fns, repeats: int, warmup: int) -> list[float]:
    """Medians (ms) of each of ``fns``, called in turn (A B C A B C ...)."""
    for _ in range(warmup):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, times):
            t0 = CLOCK(); f(); t.append(CLOCK() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _layer_step(module: nn.Module, x: torch.Tensor):
    """Forward and backward of one layer (input and parameter gradients), as in training."""
    module.train()
    x = x.detach().requires_grad_()
    dy = torch.randn_like(x)

    def f():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(dy)
    return f


def compile_table(layer_reps: int) -> None:
    """SE and CBAM: the C++ kernels (eager), torch.compile of the plain path, timm (eager)."""
    from timm.layers.cbam import CbamModule
    from timm.layers.squeeze_excite import SEModule

    print()
    print("Which path: convattn eager (C++ kernels) vs torch.compile(convattn layer) (plain PyTorch ops) vs timm eager")
    print(f"{'':<44} {'kernels':>10} {'compiled':>10} {'timm':>10}")
    x = torch.randn(8, 64, 56, 56)
    makers = {
        "cbam": (lambda: create_attn("cbam", 64), lambda: CbamModule(64, rd_ratio=1 / 16, rd_divisor=1)),
        "se": (lambda: create_attn("se", 64), lambda: SEModule(64, rd_ratio=1 / 16, rd_divisor=1)),
    }
    for name, (ours, theirs) in makers.items():
        for fmt in ("NCHW", "channels_last"):
            xi = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
            for mode in ("inference", "training"):
                torch.manual_seed(0)
                mods = [ours(), ours(), theirs()]
                if fmt == "channels_last":
                    mods = [m.to(memory_format=torch.channels_last) for m in mods]
                mods[1] = torch.compile(mods[1])
                step = _forward if mode == "inference" else _layer_step
                fns = [step(m, xi) for m in mods]
                fns[1]()  # compile outside the timing
                a, b, c = _interleaved(fns, layer_reps, 3)
                label = f"{name} {mode} B8 C64 56x56 {fmt}"
                print(f"{label:<44} {a:7.2f} ms {b:7.2f} ms {c:7.2f} ms", flush=True)


def _forward(module: nn.Module, x: torch.Tensor):
    module.eval()

    def f():
        with torch.no_grad():
            module(x)
    return f


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def f():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return f


RESULTS: list[tuple[str, float, float, float, str]] = []


def report(name: str, a_ms: float, b_ms: float, target: float, strict: bool = False) -> None:
    ratio = a_ms / b_ms
    ok = ratio < target if strict else ratio <= target
    RESULTS.append((name, a_ms, b_ms, ratio, "ok" if ok else "MISSED"))
    print(f"{name:<58} {a_ms:9.2f} ms {b_ms:9.2f} ms  {ratio:5.2f}x  (target {'<' if strict else '<='} {target:.2f}x) "
          f"{'ok' if ok else 'MISSED'}", flush=True)


def report_floor(name: str, ours: float, timm: float, clone: float, timm_target: float, clone_target: float) -> None:
    """A layer's forward against timm's and against ``x.clone()`` (two targets, one row each in the summary)."""
    for ref, ms, target in (("timm", timm, timm_target), ("clone", clone, clone_target)):
        ratio = ours / ms
        ok = ratio <= target
        RESULTS.append((f"{name} vs {ref}", ours, ms, ratio, "ok" if ok else "MISSED"))
    r_timm, r_clone = ours / timm, ours / clone
    print(f"{name:<40} {ours:7.3f} ms  timm {timm:7.3f} ms {r_timm:5.2f}x (<= {timm_target:.2f}x "
          f"{'ok' if r_timm <= timm_target else 'MISSED'})  clone {clone:7.3f} ms {r_clone:5.2f}x "
          f"(<= {clone_target:.1f}x {'ok' if r_clone <= clone_target else 'MISSED'})", flush=True)


def _demo_step(attention: str | None, x: torch.Tensor, y: torch.Tensor):
    """The demo's training step: simple_cnn (+ attention, identity_init), channels_last, AdamW."""
    from convattn.engine.optim import build_optimizer

    torch.manual_seed(0)
    kwargs = {"attention": attention, "identity_init": True} if attention else {}
    model = create_model("simple_cnn", num_classes=10, in_chans=1, **kwargs).to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model.named_parameters(), name="adamw", lr=1e-3, weight_decay=0.05)

    def f():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return f


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=["wall", "process"], help="default: process with --threads 1, else wall")
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep",
                    help="keep: glibc keeps freed memory (no trim / mmap); default: glibc's settings")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile table")
    args = ap.parse_args()
    malloc = "glibc heap kept" if args.malloc == "keep" and keep_heap() else "default malloc"
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    clock = args.clock or ("process" if args.threads == 1 else "wall")
    CLOCK = time.process_time if clock == "process" else time.perf_counter
    try:
        import timm
        from timm.layers.cbam import CbamModule
        from timm.layers.squeeze_excite import SEModule
    except ImportError:
        print("speed_targets needs timm: pip install 'convattn[peers]'", file=sys.stderr)
        return 2
    # --quick (~2-3 min on one thread): fewer steps of the slow 224x224 models, layers and small models kept robust
    layer_reps, small_reps, big_reps = (15, 5, 3) if args.quick else (20, 7, 5)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {clock} clock, {malloc}; medians of {layer_reps} (layers) / {small_reps} (64x64 models) / "
          f"{big_reps} (224x224 models) alternating calls")
    print(f"{'':<58} {'convattn':>12} {'reference':>12}")

    x = torch.randn(8, 64, 56, 56)
    layers = {  # name: (convattn, timm, target vs timm, target vs a clone)
        "cbam": (lambda: create_attn("cbam", 64), lambda: CbamModule(64, rd_ratio=1 / 16, rd_divisor=1), 0.25, 3.0),
        "se": (lambda: create_attn("se", 64), lambda: SEModule(64, rd_ratio=1 / 16, rd_divisor=1), 0.7, 1.6),
    }
    for name, (make_ours, make_theirs, timm_target, clone_target) in layers.items():
        for fmt in ("NCHW", "channels_last"):
            xi = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
            ours, theirs = make_ours(), make_theirs()
            if fmt == "channels_last":
                ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
            a, b, c = _interleaved([_forward(ours, xi), _forward(theirs, xi), xi.clone], layer_reps, 3)
            report_floor(f"{name} fwd B8 C64 56x56 {fmt}", a, b, c, timm_target, clone_target)
    for fmt in ("NCHW", "channels_last"):
        xi = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
        ours, theirs = create_attn("cbam", 64, norm_layer="bn"), CbamModule(64, rd_ratio=1 / 16, rd_divisor=1)
        if fmt == "channels_last":
            ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
        a, b = _alternating(_layer_step(ours, xi), _layer_step(theirs, xi), layer_reps, 3)
        report(f"cbam bn fwd+bwd B8 C64 56x56 {fmt} vs timm CbamModule", a, b, 0.5)

    for batch, size, model_reps in ((32, 224, big_reps), (64, 64, small_reps)):
        xb = torch.randn(batch, 3, size, size)
        yb = torch.randint(0, 1000, (batch,))
        torch.manual_seed(0)
        plain = _train_step(create_model("resnet18", num_classes=1000), xb, yb)
        for att, limit in (("se", 1.05), ("cbam", 1.10)):
            from convattn.bench.peers import create_timm_model

            torch.manual_seed(0)
            ours = _train_step(create_model("resnet18", num_classes=1000, attention=att), xb, yb)
            theirs = _train_step(create_timm_model("resnet18", att, num_classes=1000), xb, yb)
            a, b = _alternating(ours, theirs, model_reps, 1)
            report(f"resnet18+{att} SGD step B{batch} {size}x{size} vs timm", a, b, 1.0)
            a, b = _alternating(ours, plain, model_reps, 1)
            report(f"resnet18+{att} SGD step B{batch} {size}x{size} vs plain", a, b, limit)

    x1 = torch.randn(128, 1, 28, 28)
    y1 = torch.randint(0, 10, (128,))
    torch.manual_seed(0)
    ours = _train_step(create_model("simple_cnn", num_classes=10, in_chans=1, attention="cbam"), x1, y1)
    plain = _train_step(create_model("simple_cnn", num_classes=10, in_chans=1), x1, y1)
    a, b = _alternating(ours, plain, layer_reps, 2)
    report("simple_cnn+cbam SGD step B128 1x28x28 vs plain", a, b, 1.20, strict=True)
    x2 = torch.randn(32, 1, 60, 60).contiguous(memory_format=torch.channels_last)
    y2 = torch.randint(0, 10, (32,))
    a, b = _alternating(_demo_step("cbam", x2, y2), _demo_step(None, x2, y2), layer_reps, 2)
    report("simple_cnn+cbam(identity_init) AdamW B32 1x60x60 vs plain", a, b, 1.10)
    missed = [r[0] for r in RESULTS if r[4] != "ok"]
    print(f"{len(RESULTS) - len(missed)}/{len(RESULTS)} targets met" + (f"; missed: {', '.join(missed)}" if missed else ""))
    if not args.no_compile:
        compile_table(layer_reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
