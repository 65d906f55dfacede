"""Every convattn layer on a GPU: correctness, the fused attention kernels, and cost against timm.

One command, a few minutes on one GPU::

    python benchmarks/gpu_check.py                 # CUDA; exits 0 with a message where there is none
    python benchmarks/gpu_check.py --device cpu    # dry run of every check on tiny sizes on the CPU

Five parts, each printed as a table:

1. **Correctness**: every registered layer (defaults, as in the contract tests; eval mode,
   since batch statistics over two samples amplify rounding beyond any fixed limit), forward
   and backward (input and parameter gradients) in float32 and under float16 and
   bfloat16 autocast, against the same layer in float64 on the CPU. Reported: the
   largest relative error (``‖a − b‖ / ‖b‖``) over the output and all gradients.
   Limits: 1e-4 in float32 (TF32 is switched off), 5e-2 under float16 and 1e-1 under
   bfloat16 autocast (8 bits of mantissa against float16's 11).
2. **Fused attention**: each self-attention layer runs forward and backward with SDPA
   restricted to the flash and memory-efficient kernels (``sdpa_kernel``); SDPA raises
   if it would have to fall back to its O(N²) math path. The profiler's kernel names
   are listed as well.
3. **Layer cost against timm**: forward + backward time of SE, CBAM and non-local at a
   ResNet-50 stage-2 shape against timm's ``SEModule``, ``CbamModule`` and
   ``NonLocalAttn`` (timm's non-local scales its logits by default; convattn's does not,
   as in the paper, which does not change the cost).
4. **Network training step**: torchvision's ResNet-50 with convattn SE (or CBAM) inserted
   in every bottleneck against timm's ``seresnet50`` (and timm's ResNet-50 with
   ``attn_layer="cbam"``): one SGD step, channels-last, float16 autocast.
5. **Host syncs of the training loop**: ``convattn.engine.train`` runs two epochs of ``simple_cnn`` +
   CBAM on a few hundred cluttered digits with the progress bar off, under
   ``torch.cuda.set_sync_debug_mode("warn")``; each warning (a point where the host waits for the
   GPU) is counted by the file that caused it. Target: one per epoch in the loop (its running sums,
   read at the epoch's end), plus the weights check before each checkpoint; evaluation and the
   optimiser's own are listed apart.

The script exits 1 if a correctness or fused-kernel check fails, or if the loop syncs per step.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import convattn
from convattn.bench.measure import time_fn

SELF_ATTENTION = ["self_attn", "non_local", "non_local1d", "non_local3d", "danet", "danet_pam", "mhsa",
                  "halo", "aa_conv", "bottleneck_attn"]
# Layers whose SDPA call carries a learned additive bias (HaloNet's relative logits).
LEARNED_BIAS = {"halo"}
C = 16
LIMITS = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1}  # bfloat16 keeps 8 bits of mantissa, float16 11


def _shape(info, b: int, spatial: tuple[int, int], c: int) -> tuple[int, ...]:
    n = info.ndim - 2
    if n == 1:
        return (b, c, spatial[0] * spatial[1])
    if n == 3:
        return (b, c, 2, *spatial)
    return (b, c, *spatial)


def _rel(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """``‖a − b‖ / ‖b‖``, with ``‖b‖`` floored at ``1e-3 · scale`` (the largest norm among the
    layer's output and gradients): some gradients are zero in exact arithmetic (a
    convolution's bias before batch norm) and only rounding noise otherwise."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-3 * scale))


def _fwd_bwd(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = layer(x)
    weight = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    (out.float() * weight).sum().backward()
    return [out, x.grad, *(p.grad for p in layer.parameters() if p.requires_grad)]


def check_correctness(device: torch.device, spatial: tuple[int, int]) -> list[str]:
    print("\n1. correctness against float64 on the CPU (relative error; limits fp32 1e-4, fp16 5e-2, bf16 1e-1)")
    print(f"{'layer':<16}{'float32':>10}{'fp16 amp':>10}{'bf16 amp':>10}")
    failures = []
    for name in convattn.list_attn():
        info = convattn.get_attn_info(name)
        torch.manual_seed(0)
        layer = convattn.create_attn(name, C).eval()
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(_shape(info, 2, spatial, C))
        ref = _fwd_bwd(layer.double(), x.double())
        errors = []
        for mode in ("fp32", "fp16", "bf16"):
            dev_layer = layer.float().to(device)
            amp = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
            try:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    got = _fwd_bwd(dev_layer, x.to(device))
                scale = max(float(r.detach().norm()) for r in ref)
                err = max(_rel(g, r, scale) for g, r in zip(got, ref))
            except Exception as e:  # reported in the table, counted as a failure
                err, mode = float("nan"), f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
            errors.append(err)
            limit = LIMITS[mode.split(":")[0]]
            if not err <= limit:
                failures.append(f"{name} {mode}: relative error {err:.2e} > {limit:.0e}")
        print(f"{name:<16}" + "".join(f"{e:>10.1e}" for e in errors), flush=True)
    return failures


def check_fused_attention(device: torch.device, spatial: tuple[int, int]) -> list[str]:
    print("\n2. self-attention layers on the fused SDPA kernels only (flash / memory-efficient)")
    failures = []
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    dtypes = [torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    for name in SELF_ATTENTION:
        info = convattn.get_attn_info(name)
        layer = convattn.create_attn(name, 64).to(device)
        x = torch.randn(_shape(info, 2, spatial, 64), device=device)
        for dtype in dtypes:
            try:
                with sdpa_kernel(backends), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                    with torch.profiler.profile(activities=_activities(device)) as prof:
                        _fwd_bwd(layer, x)
                kernels = sorted({e.key for e in prof.key_averages() if _is_attention_kernel(e.key)})
                print(f"{name:<16}{str(dtype).split('.')[-1]:<10} ok   {', '.join(k[:60] for k in kernels[:3])}")
            except RuntimeError as e:
                if device.type == "cpu" and name in LEARNED_BIAS:
                    print(f"{name:<16}{str(dtype).split('.')[-1]:<10} math (a learned bias: the CPU flash kernel has no mask gradient)")
                    continue
                failures.append(f"{name} {dtype}: {str(e).splitlines()[0][:160]}")
                print(f"{name:<16}{str(dtype).split('.')[-1]:<10} FAIL {str(e).splitlines()[0][:100]}")
    return failures


def _activities(device: torch.device) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def _is_attention_kernel(name: str) -> bool:
    low = name.lower()
    return any(k in low for k in ("flash", "efficient_attention", "fmha", "mem_eff", "attention_forward", "attention_backward"))


def layer_cost(device: torch.device, shape: tuple[int, ...], repeats: int) -> None:
    from timm.layers import NonLocalAttn, SEModule
    from timm.layers.cbam import CbamModule

    c = shape[1]
    amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    print(f"\n3. layer cost, forward + backward, input {shape}, {str(amp).split('.')[-1]} autocast on {device.type} "
          f"(ms, median of {repeats})")
    print(f"{'layer':<12}{'convattn':>10}{'timm':>10}{'ratio':>8}")
    pairs = [
        ("se", convattn.create_attn("se", c), SEModule(c, rd_ratio=1 / 16)),
        ("cbam", convattn.create_attn("cbam", c), CbamModule(c, rd_ratio=1 / 16)),
        ("non_local", convattn.create_attn("non_local", c), NonLocalAttn(c)),
    ]
    x = torch.randn(shape, device=device).to(memory_format=torch.channels_last).requires_grad_()
    for name, ours, theirs in pairs:
        res = []
        for m in (ours, theirs):
            m = m.to(device).to(memory_format=torch.channels_last)

            def step(m=m):
                with torch.autocast(device.type, dtype=amp):
                    out = m(x)
                out.float().mean().backward()

            res.append(time_fn(step, repeats=repeats, device=device)["median"])
        print(f"{name:<12}{res[0]:>10.2f}{res[1]:>10.2f}{res[0] / res[1]:>8.2f}", flush=True)


def network_step(device: torch.device, batch: int, size: int, repeats: int) -> list[str]:
    import timm
    import torchvision

    amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    print(f"\n4. training step, ResNet-50, batch {batch} at {size}x{size}, channels-last, {str(amp).split('.')[-1]} "
          f"autocast on {device.type} (ms, median of {repeats})")
    nets = {
        "torchvision resnet50 + convattn se": convattn.insert_attn(torchvision.models.resnet50(), "se"),
        "timm seresnet50": timm.create_model("seresnet50"),
        "torchvision resnet50 + convattn cbam": convattn.insert_attn(torchvision.models.resnet50(), "cbam"),
        "timm resnet50 attn_layer=cbam": timm.create_model("resnet50", block_args={"attn_layer": "cbam"}),
        "torchvision resnet50 (no attention)": torchvision.models.resnet50(),
    }
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    failures = []
    for label, net in nets.items():
        net = net.to(device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp):
                loss = nn.functional.cross_entropy(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        try:
            ms = time_fn(step, repeats=repeats, warmup=2, device=device)["median"]
            print(f"{label:<40}{ms:>10.1f} ms{batch / ms * 1e3:>10.0f} img/s", flush=True)
        except RuntimeError as e:
            failures.append(f"{label}: {str(e).splitlines()[0][:160]}")
            print(f"{label:<40} FAIL {str(e).splitlines()[0][:100]}", flush=True)
        net.cpu()
    return failures


def loop_syncs(device: torch.device) -> list[str]:
    """Host syncs per epoch of the training loop, by the file that caused them (CUDA only)."""
    import collections
    import tempfile
    import warnings
    from pathlib import Path

    from convattn.engine import TrainConfig, train

    print("\n5. host syncs of the training loop (simple_cnn + cbam, 2 epochs, progress bar off), by file")
    if device.type != "cuda":
        print("skipped: torch.cuda.set_sync_debug_mode needs CUDA")
        return []
    epochs, batch, train_size = 2, 32, 320  # 10 steps per epoch
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model="simple_cnn", attention="cbam", epochs=epochs, batch_size=batch, lr=1e-3,
                          optimizer="adamw", train_size=train_size, val_size=64, test_size=64, progress=False,
                          device="cuda", channels_last=True, out=str(Path(out) / "run"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(cfg)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    files = collections.Counter(Path(w.filename).name for w in caught if "synchroniz" in str(w.message).lower())
    loop = sum(n for f, n in files.items() if f in ("trainer.py", "metrics.py", "guard.py"))
    for f, n in files.most_common():
        print(f"{f:<28}{n / epochs:>8.1f} per epoch")
    steps = train_size // batch
    print(f"training loop (trainer, metrics, guard): {loop / epochs:.1f} per epoch of {steps} steps "
          "(target: 1, the running sums, + 1 weights check before the checkpoint)")
    return [f"the training loop syncs {loop / epochs:.1f} times per epoch of {steps} steps"] if loop / epochs >= steps else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run on tiny sizes")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device available; nothing to check (use --device cpu for a dry run)")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        spatial, cost_shape, batch, size, repeats = (8, 7), (32, 256, 56, 56), 64, 224, 20
    else:
        torch.set_num_threads(1)
        print(f"gpu_check dry run on the CPU (tiny sizes), torch {torch.__version__}")
        spatial, cost_shape, batch, size, repeats = (6, 5), (2, 64, 8, 8), 2, 32, 2
    failures = check_correctness(device, spatial)
    failures += check_fused_attention(device, (16, 16) if device.type == "cuda" else spatial)
    layer_cost(device, cost_shape, repeats)
    failures += network_step(device, batch, size, repeats)
    failures += loop_syncs(device)
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
