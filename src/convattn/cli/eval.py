"""``convattn eval RUN_DIR|CKPT``: accuracy, per-class accuracy and a confusion-matrix PNG;
with ``--localization``, whether each attention map points at the object."""

from __future__ import annotations

import argparse

from ._options import add_batch_size, add_command, add_device, add_num_images, add_out, check_out_dir

ORDER = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", help="evaluate a trained run: accuracy, per-class accuracy, confusion matrix",
                    description=run.__doc__, examples=(
                        "convattn eval runs/simple_cnn-cbam-cluttered-digits-20250101-120000",
                        "convattn eval runs/my-run/best.pt --split val --num-images 500 --device cpu",
                        "convattn eval runs/my-run --localization --num-images 200 --out eval-out"))
    p.add_argument("path", metavar="RUN_DIR|CKPT", help="run directory (uses best.pt, else last.pt) or a .pt checkpoint")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one the run was trained on)")
    p.add_argument("--data-dir", help="directory holding the dataset files (default: the run's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default: test)")
    add_num_images(p, help="evaluate on a fixed random subset of N images of the split: the same images on every "
                           "call, a smaller N's among a larger one's (default: the whole split)", deprecated=["--size"])
    add_batch_size(p, help="images per batch (default: the run's)")
    add_device(p)
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--localization", action="store_true",
                   help="also score every spatial attention map, spatial-transformer window and Grad-CAM against "
                        "the objects' boxes (pointing game, energy in box, window IoU); needs a dataset with boxes "
                        "(cluttered-digits); stored in the run's results.json")
    p.add_argument("--no-cam", dest="cam", action="store_false", help="with --localization: leave out Grad-CAM")
    p.add_argument("--cam-layer", metavar="PATH", help="with --localization: Grad-CAM target module (default: found)")
    add_out(p, None, "where to write confusion_<split>.png and eval_<split>.json (default: the checkpoint's folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate a trained run on a dataset split.

    Prints the accuracy and loss and a per-class accuracy table; writes the
    confusion matrix as confusion_<split>.png and everything as eval_<split>.json.

    With --localization, each spatial attention map (CBAM's spatial gate, attention-pooling
    heads, self-attention averaged over queries), each spatial transformer's sampling
    window and Grad-CAM for the true class are scored against the object boxes: the
    pointing game (the map's maximum within 15/224 of the image side of the box), the
    share of the map's mass inside the box beside the box's share of the image (what a
    uniform map scores), and for windows their IoU with the box. The numbers go to
    eval_<split>.json and under "localization" in the run's results.json.
    """
    from tabulate import tabulate

    from ..engine.inference import evaluate_run
    from ..exceptions import ConfigError

    for name in ("num_images", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.out is not None:
        check_out_dir(args.out)
    r = evaluate_run(
        args.path, dataset=args.dataset, data_dir=args.data_dir, split=args.split, size=args.num_images,
        batch_size=args.batch_size, device=args.device, workers=args.workers, out_dir=args.out,
    )
    print(f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  ({r['count']} images, {args.split} split)")
    totals = r["confusion_matrix"].sum(1).tolist()
    rows = [(name, n, "-" if n == 0 else f"{acc:.4f}") for name, n, acc in zip(r["class_names"], totals, r["per_class_accuracy"])]
    print(tabulate(rows, headers=["class", "images", "accuracy"], disable_numparse=True))
    print(f"confusion matrix: {r['confusion_png']}")
    if args.localization:
        import json
        from pathlib import Path

        from .._io import atomic_write_text
        from ..eval import format_localization, localize_run

        loc = localize_run(
            args.path, dataset=args.dataset, data_dir=args.data_dir, split=args.split, size=args.num_images,
            batch_size=args.batch_size, device=args.device, workers=args.workers, cam=args.cam,
            cam_layer=args.cam_layer,
        )
        print(f"\nlocalisation on {loc['images']} {args.split} images: box covers {100 * loc['box_share']:.1f}% of "
              f"the image (a uniform map's energy in box); a constant map points {100 * loc['pointing_chance']:.1f}% "
              f"(tolerance {loc['tolerance_px']:.1f} px)")
        print(format_localization(loc))
        record = json.loads(Path(r["json"]).read_text())
        record["localization"] = {k: v for k, v in loc.items() if k != "results_json"}
        atomic_write_text(r["json"], json.dumps(record, indent=2) + "\n")
        if loc["results_json"]:
            print(f"localisation stored in {loc['results_json']}")
    print(f"results: {r['json']}")
    return 0
