"""Transfer: pretrain on cluttered digits, fine-tune on a few hundred plain digits, with attention inserted or not.

1. Pretrain ``resnet20`` (CIFAR-style, 0.27 M parameters) once on ``cluttered-digits`` (40×40 canvases,
   6,000 training images, 5 epochs, AdamW 5e-3 cosine, batch 32, channels_last; seed ``--pretrain-seed``):
   one pretrained checkpoint, as users start from one set of ImageNet weights.
2. Fine-tune it on ``digits`` (the plain 8×8 scans, upscaled to 20×20) with ``--target-size`` (300)
   training images and a new classifier, for each seed, four ways:

   * ``scratch``: no pretraining (resnet20's default recipe, batch 32, the same epochs);
   * ``plain``: the pretrained network (``--weights``; the ``finetune`` recipe: head alone with the
     backbone and its BatchNorm statistics frozen for a third of the epochs, then everything at lr/10);
   * ``identity``: ``--attention se`` inserted after each block's last norm with ``identity_init``
     (each layer blended in as ``x + γ·(SE(x) − x)``, γ = 0), the ``finetune`` recipe (attention trains
     with the head in the first stage);
   * ``naive``: the same layers inserted as they are (``identity_init=false``), the same recipe.

Reported per variant (mean ± std over seeds): test accuracy after 0 steps, on the source task with the
pretrained head (what inserting the layers does to the pretrained network) and on the target task with
the new head, and after fine-tuning; the first epoch's training loss; runs that diverged (a non-finite
loss stops a run). The script checks that ``identity`` computes exactly what ``plain`` does before
fine-tuning (the same logits on every test image) and says so.

No image of the fine-tuning test split is seen in pretraining: ``digits`` and ``cluttered-digits`` split
the 1,797 scikit-learn scans once, by the same fixed stratified 70/15/15 split (``scan_split``, the same
for every seed), and every cluttered image - digit and clutter - is drawn from its split's scans only.
Pretraining uses the train and val scans; the target's test split is the test scans; the script checks
that the two sets of scans are disjoint. (The target's 300 training images are train scans, which
pretraining also saw, cluttered.)

The pretrained weights go to the fine-tuning runs as a state-dict file without the classifier (so the
head is new, as with ImageNet weights on your own classes) and with the 1-channel stem repeated over
three channels at a third of the weight (``--weights`` feeds grayscale sets as three identical channels;
the stem computes the same thing).

Runs go to ``--out/pretrain-s<seed>`` and ``--out/<variant>-s<seed>`` (``scratch`` trains beside the
pretraining run); finished runs with the same settings are reused, so a re-run prints the table at once
and an interrupted one continues.

Examples::

    python benchmarks/transfer.py --jobs 2 --threads 1 --markdown     # the table of docs/benchmarks.md
    python benchmarks/transfer.py --seeds 1 --pretrain-size 600 --pretrain-epochs 1 --epochs 3   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

from convattn._io import atomic_write_bytes
from convattn.data import build_dataset
from convattn.data.cluttered import scan_split
from convattn.engine import resolve_config
from convattn.engine.build import build_model, checkpoint_state, init_weights
from convattn.engine.data import build_datasets, make_eval_loader, seed_everything
from convattn.experiments import train_runs
from convattn.models import create_model

VARIANTS = ("scratch", "plain", "identity", "naive")
MODEL = "resnet20"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="3", help="number of seeds (3 -> 0,1,2) or a comma list (default: 3)")
    p.add_argument("--attention", default="se", help="gate layer inserted for identity / naive (default: se)")
    p.add_argument("--pretrain-size", type=int, default=6000, help="cluttered-digits training images (default: 6000)")
    p.add_argument("--pretrain-epochs", type=int, default=5, help="pretraining epochs (default: 5)")
    p.add_argument("--pretrain-seed", type=int, default=0, help="seed of the one pretraining run (default: 0)")
    p.add_argument("--pretrain-image-size", type=int, default=40, help="cluttered-digits canvas side (default: 40)")
    p.add_argument("--target-size", type=int, default=300, help="digits training images (default: 300)")
    p.add_argument("--target-image-size", type=int, default=20, help="digits image side (default: 20)")
    p.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (default: 15)")
    p.add_argument("--out", default="runs/bench_transfer", help="run directories (default: runs/bench_transfer)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the cores shared out)")
    p.add_argument("--markdown", action="store_true", help="print a GitHub Markdown table")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    args = p.parse_args(argv)
    args.seed_list = list(range(int(args.seeds))) if args.seeds.isdigit() else [int(s) for s in args.seeds.split(",")]
    sizes = (args.pretrain_size, args.pretrain_epochs, args.target_size, args.epochs, args.jobs)
    if min(sizes) < 1 or (args.threads is not None and args.threads < 1):
        p.error("sizes, epochs, --jobs and --threads take integers >= 1")
    return args


def check_disjoint() -> str:
    """The scans pretraining draws from (train, val) against the fine-tuning test split's; raises if they meet."""
    seen = set(scan_split("train").tolist()) | set(scan_split("val").tolist())
    test = set(scan_split("test").tolist())
    shared = seen & test
    if shared:
        raise SystemExit(f"pretraining scans and the digits test split share {len(shared)} scans; expected none")
    return f"{len(test)} test scans of digits, {len(seen)} train/val scans behind cluttered-digits: 0 shared"


def pretrain_config(args: argparse.Namespace):
    seed = args.pretrain_seed
    cfg, _ = resolve_config({
        "model": MODEL, "dataset": "cluttered-digits", "image_size": args.pretrain_image_size,
        "train_size": args.pretrain_size, "val_size": 500, "test_size": 1000, "epochs": args.pretrain_epochs,
        "optimizer": "adamw", "lr": 5e-3, "weight_decay": 1e-4, "warmup_epochs": 0.2, "batch_size": 32,
        "schedule": "cosine", "channels_last": True, "seed": seed, "out": str(Path(args.out) / f"pretrain-s{seed}"),
        "progress": False, "tensorboard": False,
    })
    return cfg


def backbone_file(args: argparse.Namespace) -> Path:
    return Path(args.out) / "backbones" / f"pretrain-s{args.pretrain_seed}-3ch-nohead.pt"


def write_backbone(args: argparse.Namespace, state: dict[str, torch.Tensor]) -> Path:
    """Save the pretrained weights ``state`` without ``fc`` and with the stem over 3 identical channels."""
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    out["conv1.weight"] = state["conv1.weight"].repeat(1, 3, 1, 1) / 3
    buf = io.BytesIO()
    torch.save(out, buf)
    return atomic_write_bytes(backbone_file(args), buf.getvalue())


def finetune_config(args: argparse.Namespace, variant: str, seed: int):
    flags = {
        "model": MODEL, "dataset": "digits", "image_size": args.target_image_size, "train_size": args.target_size,
        "epochs": args.epochs, "seed": seed, "out": str(Path(args.out) / f"{variant}-s{seed}"),
        "progress": False, "tensorboard": False,
    }
    if variant == "scratch":
        flags["batch_size"] = 32
    else:
        flags["weights"] = str(backbone_file(args))
    if variant in ("identity", "naive"):
        flags["attention"] = args.attention
        flags["model_kwargs"] = {"identity_init": variant == "identity"}
    cfg, _ = resolve_config(flags)
    return cfg


def _logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            outs.append(model(x))
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def initial_logits(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Test logits of ``cfg``'s run before its first step: built as ``convattn.engine.train`` builds it."""
    seed_everything(cfg.seed)
    datasets, info = build_datasets(cfg)
    model = build_model(cfg, info)
    init_weights(model, cfg)
    return _logits(model, make_eval_loader(datasets["test"], cfg))


def source_accuracy(args: argparse.Namespace, variant: str, seed: int, state: dict) -> float:
    """Cluttered-digits test accuracy of the pretrained network (its own head) with the variant's layers inserted."""
    pre = pretrain_config(args)
    attention = args.attention if variant in ("identity", "naive") else None
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=10, in_chans=1, attention=attention, weights=state,
                         identity_init=variant != "naive")
    test = build_dataset("cluttered-digits", "test", test_size=pre.test_size, seed=pre.seed, image_size=pre.image_size)
    logits, labels = _logits(model, make_eval_loader(test, pre))
    return float((logits.argmax(1) == labels).float().mean())


def first_loss(run_dir: str | None) -> float:
    path = Path(run_dir or "") / "metrics.jsonl"
    if not path.is_file():
        return math.nan
    first = json.loads(path.read_text().splitlines()[0])
    return float(first.get("train_loss", math.nan))


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    vals = [scale * v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{digits}f} ± {std:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    print(f"[transfer] {check_disjoint()}", file=sys.stderr, flush=True)

    def report(key, res, how, secs):
        acc = f"test acc {100 * res['test_acc']:.2f} %" if "test_acc" in res else res.get("status", "failed")
        print(f"[transfer] {' '.join(map(str, key))}: {acc} ({how}, {secs:.0f} s)", file=sys.stderr, flush=True)

    first = {("pretrain", args.pretrain_seed): [pretrain_config(args)],
             **{("scratch", s): [finetune_config(args, "scratch", s)] for s in args.seed_list}}
    done = train_runs(first, jobs=args.jobs, threads=args.threads, force=args.force, on_done=report, keep_going=True)
    pretrained = done.pop(("pretrain", args.pretrain_seed))[0]
    if "test_acc" not in pretrained:
        raise SystemExit(f"the pretraining run did not finish: {pretrained.get('reason', pretrained.get('status'))}")
    state, _ = checkpoint_state(pretrain_config(args).out)
    write_backbone(args, state)
    jobs = [(v, s) for s in args.seed_list for v in VARIANTS]
    done.update(train_runs({job: [finetune_config(args, *job)] for job in jobs if job[0] != "scratch"},
                           jobs=args.jobs, threads=args.threads, force=args.force, on_done=report, keep_going=True))

    rows, checks = [], []
    zero = {job: initial_logits(finetune_config(args, *job)) for job in jobs}
    for s in args.seed_list:
        (a, labels), (b, _) = zero[("plain", s)], zero[("identity", s)]
        same = torch.equal(a.argmax(1), b.argmax(1))
        checks.append(f"seed {s}: identity vs plain before fine-tuning, max |logit difference| "
                      f"{(a - b).abs().max().item():.2e}, same predictions: {'yes' if same else 'NO'}")
    for v in VARIANTS:
        results = [done[(v, s)][0] for s in args.seed_list]
        finals = [r.get("test_acc", math.nan) for r in results]
        zeros = [float((zero[(v, s)][0].argmax(1) == zero[(v, s)][1]).float().mean()) for s in args.seed_list]
        source = [math.nan] * len(finals) if v == "scratch" else \
            [source_accuracy(args, v, s, state) for s in args.seed_list]
        rows.append((
            v, MODEL + (f" + {args.attention}" + (" (identity_init)" if v == "identity" else " (random init)")
                        if v in ("identity", "naive") else "") + ("" if v == "scratch" else ", pretrained"),
            _mean_std(source), _mean_std(zeros), _mean_std(finals),
            " ".join("-" if math.isnan(a) else f"{100 * a:.1f}" for a in finals),
            _mean_std([first_loss(r.get("run_dir")) for r in results], scale=1.0, digits=3),
            f"{sum(r.get('status') == 'diverged' for r in results)}/{len(results)}",
        ))
    print(f"\npretrained {MODEL} (one run, seed {args.pretrain_seed}): cluttered-digits {args.pretrain_image_size}x"
          f"{args.pretrain_image_size}, {args.pretrain_size} training images, {args.pretrain_epochs} epochs; "
          f"test acc {100 * pretrained['test_acc']:.2f} %")
    print(f"fine-tuned: digits {args.target_image_size}x{args.target_image_size}, {args.target_size} training / "
          f"270 test images, {args.epochs} epochs, seeds {','.join(map(str, args.seed_list))}")
    headers = ["variant", "network", "0 steps: source acc % (pretrained head)", "0 steps: target acc % (new head)",
               "fine-tuned: target acc %", "per seed", "1st-epoch train loss", "diverged"]
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple", disable_numparse=True))
    print("\n" + "\n".join(checks))
    print(f"\ntotal {math.ceil(time.perf_counter() - start)} s")
    return 0 if all("same predictions: yes" in c for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
