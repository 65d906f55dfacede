"""``convattn train``: train a model; every ``TrainConfig`` field is a flag.

Precedence: defaults < the model's recipe (``--recipe``) < ``--config FILE.yaml`` <
explicit flags. With ``--resume RUN_DIR`` the run's own config is the base and only
fields that do not change the numbers (``--out``, ``--workers``, ``--device``,
``--no-progress`` ...) may differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

import yaml

from ..exceptions import ConfigError

ORDER = 10

_EPILOG = """\
examples:
  convattn train --model simple_cnn --attention cbam --epochs 5
  convattn train --model efficientnet_b0 --attention cbam --placement replace --dataset cifar10
  convattn train --config run.yaml --lr 0.1 --attn-kwargs rd_ratio=0.25
  convattn train --resume runs/simple_cnn-cbam-cluttered-digits-20250101-120000
  convattn train --model aacn --recipe staged --epochs 6 --print-config
  convattn train --model aacn --init-from runs/plain --epochs 2   # feature branch from a plain run
  torchrun --nproc_per_node 2 -m convattn train --model resnet20 --dataset cifar10 --device cpu

Without optimiser flags a model trains with its recipe (convattn.engine.recipes:
gated_cnn / simple_cnn / stn_cnn: AdamW 5e-3, batch 32; gated_mlp: AdamW 1e-3, batch 32;
aacn: staged; resnet*: SGD 0.1, batch 128); --recipe none gives the bare defaults in
brackets below.

YAML files hold the same fields with underscores (batch_size: 128). dict-valued
options take KEY=VALUE pairs whose values are read as YAML (rd_ratio=0.25,
act_layer=gelu); --stages takes a YAML list, e.g.
  --stages '[{name: att, epochs: 2, train: [attention]}, {name: all, epochs: 3}]'
"""


def _kind(field: dataclasses.Field) -> str:
    t = str(field.type).replace(" ", "")
    if t.startswith("dict"):
        return "dict"
    if t.startswith("list"):
        return "list"
    for name in ("bool", "int", "float"):
        if t.split("|")[0] == name:
            return name
    return "str"


def _parse_scalar(kind: str, name: str):
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null") and kind in ("int", "float", "str"):
            return None
        try:
            return {"int": int, "float": float, "str": str}[kind](text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')} expects {kind}, got {text!r}") from None

    parse.__name__ = kind
    return parse


class _KeyValues(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        out: dict[str, Any] = {}
        for item in values:
            if item.lower() in ("none", "{}"):
                continue
            if "=" not in item:
                parser.error(f"{option_string} expects KEY=VALUE pairs, got {item!r}")
            key, _, raw = item.partition("=")
            try:
                out[key.strip()] = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError:
                out[key.strip()] = raw
        setattr(namespace, self.dest, out)


def _yaml_list(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"--stages expects a YAML list of mappings: {exc}") from None
    if value is not None and not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"--stages expects a YAML list of mappings, got {text!r}")
    return value


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default: not given, so YAML / checkpoint values stay)."""
    from ..engine.config import AMP_MODES, DEVICES, OPTIMIZERS, SCHEDULES, STAGE_MODES, TrainConfig

    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": DEVICES, "stage_mode": STAGE_MODES}
    defaults = TrainConfig()
    group = p.add_argument_group("run options (TrainConfig fields; default in brackets)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind(f)
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata.get('help', '')} [{default if default not in ({}, None) else 'none'}]"
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind == "dict":
            group.add_argument(flag, dest=f.name, nargs="+", metavar="KEY=VALUE", action=_KeyValues, default=argparse.SUPPRESS, help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=f.name, type=_yaml_list, metavar="YAML", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(
                flag, dest=f.name, type=_parse_scalar(kind, f.name), default=argparse.SUPPRESS,
                metavar=kind.upper() if f.name not in choices else "{" + ",".join(choices[f.name]) + "}",
                help=help_text,
            )


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..engine.config import TrainConfig

    names = set(TrainConfig.field_names())
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace):
    """The resolved config (see :func:`config_and_sources`)."""
    return config_and_sources(args)[0]


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
        from ..engine.checkpoint import load_checkpoint
        from ..engine.trainer import _resume_file

        base = dict(load_checkpoint(_resume_file(args.resume))["config"])
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
    from ..engine.config import _check_names

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of fields")
    _check_names(data, f"config file {path!r}")
    return data


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (with an attention layer) on a dataset",
        description=run.__doc__, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of TrainConfig fields; explicit flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (or a last.pt) exactly where it stopped")
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
            print(f"init_from     {result['init_from']['checkpoint']} ({result['init_from']['epochs']} epochs)")
        for st in result.get("stages") or []:
            print(f"stage {st['name']}: epochs {st['first_epoch']}-{st['first_epoch'] + st['epochs'] - 1}, "
                  f"trains {', '.join(st['train'] or [])}; frozen {', '.join(st['frozen'] or []) or 'none'}")
        sys.stdout.flush()
    return 0
