"""``convattn train``: train a model; every ``TrainConfig`` field is a flag.

Precedence: defaults < the model's recipe (``--recipe``) < ``--config FILE.yaml`` <
explicit flags. With ``--resume RUN_DIR`` the run's own config is the base (with the
result-free fields edited in its config.yaml) and only fields that do not change the numbers
(``TrainConfig.RESULT_FREE_FIELDS``: ``--workers``, ``--device``, ``--no-progress`` ...) may
differ; the run continues in RUN_DIR (``--out`` elsewhere is refused).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from ..exceptions import ConfigError
from ._options import examples_epilog
from ._train_options import add_config_arguments, explicit_overrides

ORDER = 10

EXAMPLES = (
    "convattn train --model simple_cnn --attention cbam --epochs 5",
    "convattn train --model resnet18 --attention se --placement stage --dataset cifar10 --print-config",
    "convattn train --model resnet18 --weights IMAGENET1K_V1 --attention cbam --dataset folder:pets --lr-mult attention=10",
    "convattn train --resume runs/simple_cnn-cbam-cluttered-digits-20250101-120000",
)

_NOTES = """
Without optimiser flags a model trains with its recipe (convattn.engine.recipes:
gated_cnn / simple_cnn / stn_cnn: AdamW 5e-3, batch 32; gated_mlp: AdamW 1e-3, batch 32;
aacn: staged; resnet*: SGD 0.1, batch 128); with --weights the default is finetune (every model
has it: head and attention with the backbone frozen for a third of the epochs, then everything at
a tenth of the rate); --recipe none gives the bare defaults (first value in brackets above).
Parameter groups (--lr-mult, --freeze, stages): backbone, attention, head on every network, or the
model's own param_groups(). torchrun --nproc_per_node N -m convattn train ... trains with DDP.

YAML files hold the same fields with underscores (batch_size: 128). dict-valued
options take KEY=VALUE pairs whose values are read as YAML (rd_ratio=0.25,
act_layer=gelu); --stages takes a YAML list, e.g.
  --stages '[{name: att, epochs: 2, train: [attention]}, {name: all, epochs: 3}]'
"""


def config_and_sources(args: argparse.Namespace):
    """Resolve the config and where each value came from.

    Resuming: checkpoint config < --config YAML < explicit flags. Otherwise:
    defaults < recipe < --config YAML < explicit flags (``convattn.engine.recipes``).
    """
    from ..engine.config import TrainConfig
    from ..engine.recipes import resolve_config

    overrides = explicit_overrides(args)
    file_fields: dict[str, Any] = {}
    if args.config:
        if not os.path.isfile(args.config):
            raise ConfigError(f"config file {args.config!r} does not exist")
        file_fields = _yaml_fields(args.config)
    if getattr(args, "resume", None):
        from ..engine.rundir import resume_config

        base = resume_config(args.resume)
        config = TrainConfig.from_dict({**base, **file_fields, **overrides}, source="train options")
        sources = {k: "flag" if k in overrides else f"config file {args.config}" if k in file_fields else f"run {args.resume}"
                   for k in TrainConfig.field_names()}
        return config, sources
    return resolve_config(overrides, file_fields=file_fields, file_name=args.config)


def format_config(config, sources: dict[str, str]) -> str:
    """The config as YAML, each field followed by a ``# source`` comment."""
    lines = []
    for key, value in config.to_dict().items():
        text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=10_000).rstrip("\n")
        first, sep, rest = text.partition("\n")
        lines.append(f"{first}  # {sources.get(key, 'default')}" + (sep + rest if sep else ""))
    return "\n".join(lines) + "\n"


def _yaml_fields(path: str) -> dict[str, Any]:
    from ..engine.config import check_names

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of fields")
    check_names(data, f"config file {path!r}")
    return data


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (with an attention layer) on a dataset", description=run.__doc__,
        epilog=examples_epilog(*EXAMPLES) + "\n" + _NOTES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of TrainConfig fields; explicit flags override it")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or a last.pt) exactly where it stopped, in RUN_DIR itself "
                        "(to branch a run, copy its directory and resume the copy)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML, each value with its source (default, recipe, config file, flag), and exit")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train a model and write a run directory (config.yaml, metrics.jsonl/.csv, last.pt, best.pt, results.json).

    Launch with torchrun for DistributedDataParallel (gloo on CPU, nccl on CUDA);
    only rank 0 logs and writes checkpoints.
    """
    config, sources = config_and_sources(args)
    if args.print_config:
        print(format_config(config, sources), end="")
        return 0
    from ..engine import train

    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        from tabulate import tabulate

        rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in result.items() if not isinstance(v, (dict, list))]
        print(tabulate(rows, headers=["metric", "value"]))
        if result.get("init_from"):
            label = "init_from" if config.init_from else "weights  "
            print(f"{label}     {result['init_from']['checkpoint']} ({result['init_from']['epochs']} epochs)")
        for st in result.get("stages") or []:
            print(f"stage {st['name']}: epochs {st['first_epoch']}-{st['first_epoch'] + st['epochs'] - 1}, "
                  f"trains {', '.join(st['train'] or [])}; frozen {', '.join(st['frozen'] or []) or 'none'}")
        sys.stdout.flush()
    return 0
