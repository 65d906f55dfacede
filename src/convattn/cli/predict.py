"""``convattn predict CKPT IMAGE|DIR...``: top-k classes with probabilities for image files."""

from __future__ import annotations

import argparse

from ._options import add_command, add_device

ORDER = 30


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", help="classify image files with a trained run", description=run.__doc__, examples=(
        "convattn predict runs/simple_cnn-cbam-cluttered-digits-20250101-120000 digit.png",
        "convattn predict runs/my-run/best.pt photos/ --topk 3 --device cpu"))
    p.add_argument("path", metavar="RUN_DIR|CKPT", help="run directory (uses best.pt, else last.pt) or a .pt checkpoint")
    p.add_argument("images", metavar="IMAGE|DIR", nargs="+",
                   help="image files (PNG, JPEG, ... anything PIL reads) or folders (every image file directly inside)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="how many classes to show per image (default: 5)")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the top-k classes and their probabilities for each image.

    A folder stands for the image files directly inside it, in name order.

    Images are converted to the model's channels and input size and normalised
    with the training dataset's mean and std, all read from the checkpoint;
    16-bit images are scaled by 65535 and float images taken as 0-1 values.

    A file that cannot be read (corrupt, not an image, over PIL's decompression-bomb
    limit) gets one error line on stderr and the others are still predicted.
    Exit status: 0 all predicted; 1 some files could not be read; 2 none could
    (or another error).
    """
    import sys

    from ..engine import load_run
    from ..engine.distributed import resolve_device
    from ..engine.inference import predict_images
    from ..exceptions import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    model, _ = load_run(args.path)
    results = predict_images(model, model.data_info, args.images, topk=args.topk, device=resolve_device(args.device),
                             skip_unreadable=True)
    for r in results:
        if "error" in r:
            print(f"convattn predict: error: {r['error']}", file=sys.stderr)
            continue
        print(r["image"])
        for name, prob in r["top"]:
            print(f"  {prob:7.2%}  {name}")
    failed = sum("error" in r for r in results)
    return 0 if not failed else 2 if failed == len(results) else 1
