"""``convattn eval RUN_DIR|CKPT``: accuracy, per-class accuracy and a confusion-matrix PNG."""

from __future__ import annotations

import argparse

ORDER = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained run: accuracy, per-class accuracy, confusion matrix",
        description=run.__doc__,
    )
    p.add_argument("path", metavar="RUN_DIR|CKPT", help="run directory (uses best.pt, else last.pt) or a .pt checkpoint")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one the run was trained on)")
    p.add_argument("--data-dir", help="directory holding the dataset files (default: the run's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default: test)")
    p.add_argument("--size", type=int, metavar="N", help="evaluate on only the first N images of the split")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per batch (default: the run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--out", metavar="DIR", help="where to write confusion_<split>.png and eval_<split>.json (default: next to the checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate a trained run on a dataset split.

    Prints the accuracy and loss and a per-class accuracy table; writes the
    confusion matrix as confusion_<split>.png and everything as eval_<split>.json.
    """
    from tabulate import tabulate

    from ..engine.inference import evaluate_run
    from ..exceptions import ConfigError

    for name in ("size", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    r = evaluate_run(
        args.path, dataset=args.dataset, data_dir=args.data_dir, split=args.split, size=args.size,
        batch_size=args.batch_size, device=args.device, workers=args.workers, out_dir=args.out,
    )
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  ({r['count']} images, {args.split} split)")
    totals = r["confusion_matrix"].sum(1).tolist()
    rows = [(name, n, "-" if n == 0 else f"{acc:.4f}") for name, n, acc in zip(r["class_names"], totals, r["per_class_accuracy"])]
    print(tabulate(rows, headers=["class", "images", "accuracy"], disable_numparse=True))
    print(f"confusion matrix: {r['confusion_png']}")
    print(f"results: {r['json']}")
    return 0
