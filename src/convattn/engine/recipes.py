"""Per-model training recipes, and resolving a run's config from defaults, a recipe, a file and flags.

A recipe is a named set of ``TrainConfig`` values that works for a model (like
timm's per-model configs). ``convattn train --model X`` with no optimiser flags
uses X's ``default`` recipe (``finetune``, which every model has, when ``weights`` is
set); ``--recipe NAME`` picks another (``aacn``'s ``staged``), ``--recipe none`` the bare
``TrainConfig`` defaults. Precedence: ``TrainConfig`` defaults < recipe < the weights'
``preprocessing`` (folder datasets) < ``--config FILE.yaml`` < explicit flags; the mapping
fields (``model_kwargs``, ``attn_kwargs``, ``lr_mult``, ``preprocessing``) are merged key by
key in the same order. :func:`resolve_config` returns the config and where each
value came from (``convattn train --print-config`` prints it).

Example:
    >>> cfg, sources = resolve_config({"model": "gated_cnn", "epochs": 3})
    >>> cfg.optimizer, cfg.recipe, sources["optimizer"], sources["epochs"], sources["seed"]
    ('adamw', 'default', 'recipe gated_cnn/default', 'flag', 'default')
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

from ..exceptions import ConfigError
from .config import TrainConfig

__all__ = [
    "RECIPES", "GENERIC_RECIPES", "DEFAULT_RECIPES", "default_recipe", "list_recipes", "get_recipe", "resolve_config",
    "MAPPING_FIELDS", "AACN_FEATURE_SHARE", "aacn_feature_epochs", "finetune_stages",
]

#: Fields merged key by key (recipe < file < flags) instead of replaced.
MAPPING_FIELDS = ("model_kwargs", "attn_kwargs", "lr_mult", "preprocessing")

# AdamW at 5e-3 with a short warm-up, cosine, batch 32: what trains the small CNNs of
# this package on the cluttered-digits and digits sets in a few epochs on a CPU
# (the demo's recipe; docs/training.md has the measurements). channels_last: a CPU
# training step of these models takes about 1.4x less time (max-pooling and the oneDNN
# convolutions are faster in that layout; docs/training.md).
_SMALL_CNN = {
    "optimizer": "adamw",
    "lr": 5e-3,
    "weight_decay": 1e-4,
    "warmup_epochs": 0.2,
    "schedule": "cosine",
    "batch_size": 32,
    "channels_last": True,
}

# SGD as in "Deep Residual Learning for Image Recognition" (He et al., CVPR 2016), §4.2
# (lr 0.1, momentum 0.9, batch 128), with a cosine schedule after one warm-up epoch.
_RESNET_SGD = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_epochs": 1.0,
    "schedule": "cosine",
    "batch_size": 128,
}

#: Share of the epochs the staged ``aacn`` recipe spends on the feature branch.
AACN_FEATURE_SHARE = 2 / 3


def aacn_feature_epochs(epochs: int) -> int:
    """Epochs of AACN's feature branch (stage (a), or the plain run it starts from) in an ``epochs``
    budget: ``AACN_FEATURE_SHARE`` of it rounded up, at least 1, leaving at least 1 for the heads."""
    return max(1, min(epochs - 1, math.ceil(AACN_FEATURE_SHARE * epochs)))


def _aacn_staged(fields: dict[str, Any]) -> dict[str, Any]:
    """AACN's staged recipe for the ``epochs`` budget in ``fields``.

    Attention heads on the backbone's last stage. (a) ``features``: the feature branch
    with the decision branch (the heads stay at their initialisation, where they
    average-pool), ``AACN_FEATURE_SHARE`` of the
    epochs, once; skipped when ``init_from`` gives trained backbone weights;
    (b) ``attention``: heads + decision with the feature branch frozen, with
    ``α·L_attn``; (c) ``decision``: the decision branch with the attention branch frozen
    (the feature branch trains on with it). (b) and (c) alternate, one epoch each, until
    the validation loss stops improving for ``patience`` stage runs or the epochs run out.
    """
    epochs = int(fields.get("epochs", TrainConfig.__dataclass_fields__["epochs"].default))
    stages = [
        {"name": "attention", "epochs": 1, "train": ["attention", "decision"], "alpha": 0.1},
        {"name": "decision", "epochs": 1, "train": ["backbone", "decision"], "alpha": 0.0},
    ]
    if not fields.get("init_from"):
        stages.insert(0, {"name": "features", "epochs": aacn_feature_epochs(epochs), "train": ["backbone", "decision"], "once": True})
    # heads on the last stage only: on cluttered digits the earlier stages' heads neither point at
    # the digit nor help (mean best validation accuracy, seeds 0-2, 12 epochs: all three stages
    # 86.4 %, the last two 86.4 %, the last one 87.6 %; docs/training.md)
    return {**_SMALL_CNN, "model_kwargs": {"attn_stages": [-1]}, "stages": stages, "stage_mode": "alternate",
            "patience": 2}


def _resnet_imagenet(fields: dict[str, Any]) -> dict[str, Any]:
    """ResNet-18/34/50/101: SGD; the small-input stem (3×3 conv, no max-pool) for images under 64 px."""
    recipe = dict(_RESNET_SGD)
    size = _image_side(fields)
    if size is not None and size < 64 and not fields.get("weights"):  # pretrained weights need the 7x7 stem
        recipe["model_kwargs"] = {"small_input": True}
    return recipe


def _image_side(fields: dict[str, Any]) -> int | None:
    try:
        from ..data import get_dataset_info

        info = get_dataset_info(
            fields.get("dataset", TrainConfig.__dataclass_fields__["dataset"].default),
            data_dir=fields.get("data_dir"), image_size=fields.get("image_size"), distort=fields.get("distort"),
        )
    except Exception:  # unknown / missing dataset: the run itself reports it
        return None
    return min(info.image_size)


def finetune_stages(epochs: int, lr: float) -> list[dict[str, Any]]:
    """The ``finetune`` recipe's stages for an ``epochs`` budget: ``new`` (head and attention, the
    backbone frozen with its BatchNorm statistics) for a third of the epochs (at least 1), then ``all``
    (everything) at a tenth of ``lr``."""
    first = max(1, epochs // 3)
    stages = [{"name": "new", "epochs": first, "freeze": ["backbone"], "lr": lr}]
    if epochs > first:
        stages.append({"name": "all", "epochs": epochs - first, "lr": lr / 10})
    return stages


def _finetune(fields: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning pretrained weights: SGD 0.01 with momentum, batch 32, no warm-up, cosine per stage;
    the new layers first, then the whole network at a tenth of the rate (:func:`finetune_stages`)."""
    epochs = int(fields.get("epochs", TrainConfig.__dataclass_fields__["epochs"].default))
    lr = float(fields.get("lr", 0.01))
    return {"optimizer": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
            "warmup_epochs": 0.0, "schedule": "cosine", "batch_size": 32, "stages": finetune_stages(epochs, lr)}


def _fixed(values: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def recipe(fields: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(values)

    recipe.__doc__ = ", ".join(f"{k}={v}" for k, v in values.items())
    return recipe


#: ``{model: {recipe name: fn(fields given so far) -> TrainConfig values}}``; ``default`` is used when none is named.
RECIPES: dict[str, dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "simple_cnn": {"default": _fixed(_SMALL_CNN)},
    # the model's two 32/64 blocks under-fit digits (83 % training accuracy after 10 epochs):
    # three blocks, as simple_cnn; no dropout in the head (higher validation accuracy on digits
    # and cluttered digits in these short schedules; docs/training.md)
    "gated_cnn": {"default": _fixed({**_SMALL_CNN, "model_kwargs": {"widths": [32, 64, 128], "dropout": 0.0}})},
    "gated_mlp": {"default": _fixed({**_SMALL_CNN, "lr": 1e-3, "model_kwargs": {"hidden": [512, 256]}})},
    # the spatial-transformer paper trains the localisation network at a lower rate
    "stn_cnn": {"default": _fixed({**_SMALL_CNN, "lr_mult": {"localization": 0.1}})},
    "aacn": {"staged": _aacn_staged, "joint": _fixed(_SMALL_CNN)},
    **{name: {"default": _fixed(_RESNET_SGD)} for name in ("resnet20", "resnet32", "resnet56")},
    **{name: {"default": _resnet_imagenet} for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
}


#: Recipes every model has (a model's own recipe of the same name wins).
GENERIC_RECIPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"finetune": _finetune}

#: Models whose default recipe has another name than ``default``.
DEFAULT_RECIPES = {"aacn": "staged"}


def default_recipe(model: str, fields: dict[str, Any] | None = None) -> str:
    """The recipe ``model`` trains with when none is named: ``finetune`` when ``fields`` set ``weights``."""
    if (fields or {}).get("weights"):
        return "finetune"
    return DEFAULT_RECIPES.get(model, "default")


def _recipes_of(model: str) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    return {**GENERIC_RECIPES, **RECIPES.get(model, {})}


def list_recipes(model: str | None = None) -> dict[str, list[str]]:
    """Recipe names per model (of ``model`` only, when given; ``*``: the recipes every model has)."""
    if model is not None:
        return {model: sorted(_recipes_of(model))}
    return {"*": sorted(GENERIC_RECIPES), **{m: sorted(r) for m, r in sorted(RECIPES.items())}}


def get_recipe(model: str, name: str | None = None, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``TrainConfig`` values of ``model``'s recipe ``name`` (default: its default) given the run's other ``fields``.

    A model without recipes has an empty ``default``; an unknown name raises ``ConfigError``.

    Example:
        >>> get_recipe("stn_cnn")["lr_mult"]
        {'localization': 0.1}
        >>> [s["name"] for s in get_recipe("aacn", "staged", {"epochs": 6})["stages"]]
        ['features', 'attention', 'decision']
    """
    recipes = _recipes_of(model)
    name = default_recipe(model, fields) if name is None else name
    if name not in recipes:
        if name == "default":
            return {}
        known = ", ".join(sorted(recipes)) or "only none"
        raise ConfigError(f"model {model!r} has no recipe {name!r}; it has {known}")
    return recipes[name](dict(fields or {}))


def resolve_config(
    flags: dict[str, Any] | None = None,
    *,
    file_fields: dict[str, Any] | None = None,
    file_name: str | None = None,
) -> tuple[TrainConfig, dict[str, str]]:
    """Build a ``TrainConfig`` from defaults < recipe < config-file fields < flags.

    The recipe is the one named by ``recipe`` (in the flags, else the file), else the
    model's default (``default``; ``staged`` for ``aacn``); ``recipe: none`` uses no recipe.

    Args:
        flags: explicitly given values (command-line flags).
        file_fields: values from a YAML file.
        file_name: the file's name, for the sources.

    Returns:
        ``(config, sources)`` where ``sources[field]`` is ``"default"``, ``"recipe
        MODEL/NAME"``, ``"weights NAME"`` (the weights' preprocessing), ``"config file NAME"``,
        ``"flag"`` or a ``" + "``-joined mix for merged mappings.
    """
    flags = dict(flags or {})
    file_fields = dict(file_fields or {})
    layers = [(f"config file {file_name or ''}".strip(), file_fields), ("flag", flags)]
    given = {**file_fields, **flags}
    model = given.get("model", TrainConfig.__dataclass_fields__["model"].default)
    name = given["recipe"] if "recipe" in given else default_recipe(model, given)
    if isinstance(name, str) and name.lower() in ("", "none", "null"):
        name = None
    recipe_source = f"recipe {model}/{name}"
    recipe = get_recipe(model, name, given) if name is not None else {}
    if name == "default" and not recipe:
        name = None
    layers.insert(0, (recipe_source, recipe))
    weights = given.get("weights", recipe.get("weights"))
    if weights and str(given.get("dataset", "")).startswith("folder:"):
        from ..models import get_model_info
        from ..models.weights import weights_preprocessing

        source = get_model_info(model).pretrained
        layers.insert(1, (f"weights {weights}", {"preprocessing": weights_preprocessing(model, str(weights), source)}))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key in MAPPING_FIELDS and isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
                sources[key] = f"{sources[key]} + {source}"
            else:
                values[key] = value
                sources[key] = source
    if "recipe" not in given:
        values["recipe"] = name
        sources["recipe"] = "default" if name is None else recipe_source
    config = TrainConfig.from_dict(values, source="train options")
    for key in TrainConfig.field_names():
        sources.setdefault(key, "default")
    return config, sources
