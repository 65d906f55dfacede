"""CBAM and SE against timm's CbamModule / SEModule on CPU: inference, training, and a ResNet-18 step.

Both CBAMs are in timm's configuration (a BatchNorm after the spatial convolution): inference
normalises with the running statistics, forward+backward (training mode) with the batch's. Inference
is also compared with ``x.clone()`` of the same input (one read and one write of it: the memory floor
of a layer that returns a new tensor). glibc's heap is kept (freed memory is not returned to the
system, as ``convattn train`` keeps it) unless ``--malloc default``.

Usage::

    python benchmarks/cbam_vs_timm.py                   # 1 thread, B=8, C=64, 56×56
    python benchmarks/cbam_vs_timm.py --threads 2 --clock wall
    python benchmarks/cbam_vs_timm.py --resnet          # + ResNet-18 training step with CBAM in every block

Each case runs in blocks of consecutive calls (so every implementation sees its own
steady-state allocator behaviour), blocks alternate between implementations, and
the median over all calls is reported. ``--clock process`` (the default with one
thread) counts CPU time of this process, which is robust to other jobs on a
shared machine; use ``--clock wall`` with several threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

import convattn
from convattn.engine.memory import keep_freed_memory

try:
    from timm.layers.cbam import CbamModule
    from timm.layers.squeeze_excite import SEModule
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"this benchmark compares against timm: pip install timm ({e})")


def timeit(fns: dict, *, rounds: int, block: int, clock) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f(), f()
    for _ in range(rounds):
        for name, f in fns.items():
            for _ in range(block):
                t0 = clock()
                f()
                times[name].append(clock() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def resnet18_with(kind: str) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    if kind != "plain":
        for block in model.modules():
            if isinstance(block, torchvision.models.resnet.BasicBlock):
                c = block.bn2.num_features
                attn = CbamModule(c) if kind == "timm" else convattn.create_attn("cbam", c)
                block.bn2 = nn.Sequential(block.bn2, attn)  # CBAM on the residual branch, before the sum
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--clock", choices=["process", "wall"], default=None)
    p.add_argument("--resnet", action="store_true", help="also time a ResNet-18 training step")
    p.add_argument("--resnet-size", type=int, default=112)
    p.add_argument("--malloc", choices=["keep", "default"], default="keep", help="keep glibc's freed memory (default)")
    args = p.parse_args()
    heap = "glibc heap kept" if args.malloc == "keep" and keep_freed_memory() else "default malloc"
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("process" if args.threads == 1 else "wall")
    clock = time.process_time if clock_name == "process" else time.perf_counter
    torch.manual_seed(0)
    c = args.channels
    kw = dict(rounds=args.rounds, block=args.block, clock=clock)
    rows = []
    layers = {
        "cbam": (CbamModule(c), convattn.create_attn("cbam", c, norm_layer="bn")),
        "se": (SEModule(c), convattn.create_attn("se", c)),
    }
    x0 = torch.randn(args.batch, c, args.size, args.size)
    grad = torch.randn_like(x0)
    for fmt, x in [("NCHW", x0), ("channels_last", x0.contiguous(memory_format=torch.channels_last))]:
        for name, (theirs, ours) in layers.items():
            theirs.eval(), ours.eval()
            with torch.no_grad():
                t = timeit({"timm": lambda: theirs(x), "convattn": lambda: ours(x), "clone": x.clone}, **kw)
            rows.append((f"{name} inference", fmt, t["timm"], t["convattn"], t["clone"]))
        theirs, ours = (m.train() for m in layers["cbam"])
        xg = x.detach().requires_grad_()
        t = timeit(
            {"timm": lambda: theirs(xg).backward(grad), "convattn": lambda: ours(xg).backward(grad)}, **kw
        )
        rows.append(("cbam forward+backward", fmt, t["timm"], t["convattn"], None))

    print(f"B={args.batch} C={c} {args.size}x{args.size}, threads={args.threads}, clock={clock_name}, {heap}, "
          f"median of {args.rounds * args.block} calls, torch {torch.__version__}")
    print(f"{'case':24s} {'layout':14s} {'timm ms':>9s} {'convattn ms':>12s} {'ratio':>7s} {'clone ms':>9s} "
          f"{'x clone':>8s}")
    for case, fmt, a, b, cl in rows:
        vs_clone = f"{cl:9.3f} {b / cl:8.2f}" if cl is not None else ""
        print(f"{case:24s} {fmt:14s} {a:9.3f} {b:12.3f} {b / a:7.3f} {vs_clone}")

    if args.resnet:
        s = args.resnet_size
        xb = torch.randn(args.batch, 3, s, s)
        yb = torch.randint(0, 10, (args.batch,))
        models = {k: resnet18_with(k) for k in ("plain", "convattn", "timm")}
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}

        def step(k):
            def run():
                opts[k].zero_grad(set_to_none=True)
                nn.functional.cross_entropy(models[k](xb), yb).backward()
                opts[k].step()
            return run

        t = timeit({k: step(k) for k in models}, rounds=max(2, args.rounds // 2), block=2, clock=clock)
        print(f"\nResNet-18 training step, B={args.batch}, {s}x{s}, CBAM in every BasicBlock:")
        for k, v in t.items():
            print(f"  {k:9s} {v:9.1f} ms  ({v / t['plain']:.3f}x plain)")


if __name__ == "__main__":
    main()
