"""One training step of ``simple_cnn`` with CBAM against the plain network, on CPU.

A batch of the demo's data (cluttered digits, 1×60×60), AdamW, channels-last, one thread and
glibc's heap kept, as ``convattn train`` runs on a CPU. The networks with CBAM:

- ``cbam identity_init``: each CBAM in an ``IdentityBlend`` (``x + γ·(CBAM(x) − x)``, γ = 0 at
  first, as ``identity_init=True`` builds it), the blend computed inside CBAM's kernels;
- ``cbam identity_init, blend in ops``: the same with the blend in PyTorch ops around the layer;
- ``cbam``: CBAM without the blend.

Steps of the networks are interleaved (A B C D A B C D ...) and the median of each is reported.

Usage::

    python benchmarks/cbam_step.py [--steps 30] [--batch 32] [--threads 1] [--format channels_last]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from convattn.data import build_dataset
from convattn.engine.memory import keep_freed_memory
from convattn.models import IdentityBlend, create_model


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--format", choices=["channels_last", "nchw"], default="channels_last")
    args = p.parse_args()
    heap = "glibc heap kept" if keep_freed_memory() else "default malloc"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = build_dataset("cluttered-digits", "train", train_size=args.batch)
    x = torch.stack([data[i][0] for i in range(args.batch)])
    y = torch.tensor([int(data[i][1]) for i in range(args.batch)])
    fmt = torch.channels_last if args.format == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)

    def build(**kw):
        return create_model("simple_cnn", num_classes=10, in_chans=1, **kw).to(memory_format=fmt).train()

    models = {
        "plain": build(),
        "cbam identity_init": build(attention="cbam", identity_init=True),
        "cbam identity_init, blend in ops": build(attention="cbam", identity_init=True),
        "cbam": build(attention="cbam"),
    }
    for m in models["cbam identity_init, blend in ops"].modules():
        if isinstance(m, IdentityBlend):
            m.layer.forward_blended = None  # IdentityBlend then blends around layer(x)
    steps = {k: step_fn(m, x, y) for k, m in models.items()}
    for f in steps.values():  # warm-up
        f(), f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.steps):
        for k, f in steps.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"simple_cnn training step, B={args.batch} 1x{x.shape[-2]}x{x.shape[-1]} cluttered digits, AdamW, "
          f"{args.format}, threads={args.threads}, {heap}, median of {args.steps} steps (process time), "
          f"torch {torch.__version__}")
    for k, v in med.items():
        print(f"  {k:34s} {v:8.2f} ms  ({v / med['plain']:.3f}x plain)")


if __name__ == "__main__":
    main()
