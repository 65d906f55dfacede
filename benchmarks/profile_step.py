"""Where one training step of the demo's small CNN spends its time: torch.profiler's operator table.

    python benchmarks/profile_step.py [--attention cbam|se|none] [--no-identity-init] [--steps N] [--rows N]

One step as ``convattn train`` runs it on the cluttered digits: ``simple_cnn`` on B32 1x60x60,
channels_last, AdamW (the trainer's optimiser set-up), cross-entropy, the loop's running sums (three
small ops a step), one thread, glibc's heap kept (``engine.memory``). The attention layers are inserted
with ``identity_init`` (an ``IdentityBlend`` each) unless ``--no-identity-init``. Printed: the per-step
time of the network with and without the layer (median, interleaved), then the operators by self CPU
time over ``--steps`` profiled steps: what is the layer's own memory traffic and what is overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from convattn.engine.memory import keep_freed_memory
from convattn.engine.metrics import EpochLog
from convattn.engine.optim import build_optimizer
from convattn.models import create_model


def make_step(attention: str | None, identity_init: bool, x: torch.Tensor, y: torch.Tensor):
    """One training step of ``simple_cnn`` (+ ``attention``), as the trainer takes it."""
    torch.manual_seed(0)
    kwargs = {"identity_init": True} if attention and identity_init else {}
    model = create_model("simple_cnn", num_classes=10, in_chans=1, attention=attention, **kwargs)
    model = model.to(memory_format=torch.channels_last).train()
    opt = build_optimizer(model.named_parameters(), name="adamw", lr=1e-3, weight_decay=0.05)
    log = EpochLog()

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(0, 1e-3, logits, y, [loss])  # the loop's running sums, read back at the end

    step.log = log
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attention", default="cbam", help="layer to insert (default cbam; none for the plain network)")
    ap.add_argument("--no-identity-init", action="store_true", help="insert the layer without the identity blend")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (default 10)")
    ap.add_argument("--rows", type=int, default=25, help="operators listed (default 25)")
    args = ap.parse_args(argv)
    attention = None if args.attention.lower() == "none" else args.attention
    torch.set_num_threads(1)
    heap = "glibc heap kept" if keep_freed_memory() else "default malloc"
    x = torch.randn(32, 1, 60, 60).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    ours = make_step(attention, not args.no_identity_init, x, y)
    plain = make_step(None, False, x, y)
    times: list[list[float]] = [[], []]
    for i in range(3 + 15):  # 3 warm-up steps, then 15 interleaved
        for f, t in zip((ours, plain), times):
            t0 = time.process_time()
            f()
            if i >= 3:
                t.append(time.process_time() - t0)
    a, b = (statistics.median(t) * 1e3 for t in times)
    label = f"simple_cnn+{attention}{'' if args.no_identity_init or not attention else ' (identity_init)'}"
    print(f"torch {torch.__version__}, 1 thread, {heap}, B32 1x60x60 channels_last AdamW")
    print(f"{label}: {a:.2f} ms/step, plain: {b:.2f} ms/step, ratio {a / b:.3f}x (medians of 15 interleaved steps)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            ours()
    print(f"\n{label}: operators over {args.steps} steps, by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    (loss_sum, correct, count), _ = ours.log.read()
    print(f"running loss over its {count:.0f} samples: {loss_sum / count:.4f}, accuracy {correct / count:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
