"""``convattn train``'s run options: one flag per ``TrainConfig`` field, generated from the dataclass.

Each flag's help ends with the bare default in brackets and, where the default model's recipe
(what ``convattn train`` runs without flags) sets another value, that value too.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import yaml

__all__ = ["add_config_arguments", "explicit_overrides"]


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


def _shown(value: Any) -> str:
    return "none" if value in ({}, None) else str(value)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default: not given, so recipe / YAML / checkpoint values stay)."""
    from ..engine.config import AMP_MODES, DEVICES, OPTIMIZERS, SCHEDULES, STAGE_MODES, TrainConfig
    from ..engine.recipes import resolve_config

    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": DEVICES, "stage_mode": STAGE_MODES}
    defaults = TrainConfig()
    recipe, sources = resolve_config({})
    group = p.add_argument_group(
        f"run options (TrainConfig fields; [bare default; {sources['recipe']}'s value where it differs])")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind(f)
        default, value = getattr(defaults, f.name), getattr(recipe, f.name)
        shown = _shown(default)
        if sources[f.name].startswith("recipe") and value != default and f.name != "recipe":
            shown += f"; {sources[f.name]}: {_shown(value)}"
        help_text = f"{f.metadata.get('help', '')} [{shown}]"
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind == "dict":
            group.add_argument(flag, dest=f.name, nargs="+", metavar="KEY=VALUE", action=_KeyValues, default=argparse.SUPPRESS, help=help_text)
        elif kind == "list" and f.metadata.get("words"):  # --freeze backbone attention
            group.add_argument(flag, dest=f.name, nargs="+", metavar="NAME", default=argparse.SUPPRESS, help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=f.name, type=_yaml_list, metavar="YAML", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(
                flag, dest=f.name, type=_parse_scalar(kind, f.name), default=argparse.SUPPRESS,
                metavar=kind.upper() if f.name not in choices else "{" + ",".join(choices[f.name]) + "}",
                help=help_text,
            )


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as flags."""
    from ..engine.config import TrainConfig

    names = set(TrainConfig.field_names())
    return {k: v for k, v in vars(args).items() if k in names}
