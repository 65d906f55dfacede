"""``bench_layers`` and ``bench_models``: cost tables over registered layers and models.

Each row is a flat dict (one implementation of one layer or model), ready for
:mod:`convattn.bench.tables`. Rows of timm's implementations (``compare="timm"``)
are measured in the same run, right after convattn's, on the same input, and the
convattn row gets ``vs_timm`` = convattn latency / timm latency.
"""

from __future__ import annotations

import fnmatch
import math
import os
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from .measure import measure_module
from .tables import human_bytes

__all__ = ["bench_layers", "bench_models", "check_fits", "layer_input", "resolve_dtype", "resolve_names"]

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "half": torch.float16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/... or a ``torch.dtype`` -> ``torch.dtype`` (``ConfigError`` otherwise)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"bench expects dtype in {sorted(_DTYPES)}, got {dtype!r}") from None


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench: --device cuda was asked for, but no CUDA device is available")
    return device


def check_fits(what: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
               tensor: str = "an input") -> None:
    """Refuse a tensor larger than the machine's memory before allocating it.

    It is made in float32 on the host, then cast and moved: the host needs ``numel × 4`` bytes
    (of its physical memory), a CUDA device ``numel × dtype size`` (of its total memory).
    """
    numel = math.prod(int(n) for n in shape)
    asked = " × ".join(str(int(n)) for n in shape)
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    needs = [(numel * 4, pages, "this machine")]
    if device.type == "cuda":
        itemsize = torch.empty((), dtype=dtype).element_size()
        needs.append((numel * itemsize, torch.cuda.get_device_properties(device).total_memory, str(device)))
    for need, have, where in needs:
        if have is not None and need > have:
            raise ConfigError(f"{what}: {tensor} of {asked} values needs {human_bytes(need)}, more than the "
                              f"{human_bytes(have)} of memory {where} has; use a smaller batch, width or size")


def resolve_names(spec: str | Sequence[str] | None, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand ``"all"``, wildcards and comma lists against ``available``.

    Returns ``(found, missing)``: names (in the order asked) that are available,
    and the names asked for that are not.
    """
    if spec is None or spec == "all" or spec == ["all"]:
        return list(available), []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    found: list[str] = []
    missing: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "all":
            found.extend(n for n in available if n not in found)
            continue
        matches = [n for n in available if fnmatch.fnmatchcase(n, item)]
        if matches:
            found.extend(n for n in matches if n not in found)
        else:
            missing.append(item)
    return found, missing


def layer_input(ndim: int, batch: int, channels: int, size: int) -> tuple[int, ...]:
    """Input shape of a layer taking ``ndim``-D input, with as many positions as ``size × size``.

    4-D: ``(B, C, size, size)``; 3-D: ``(B, C, size²)``; 5-D: ``(B, C, 4, size/2, size/2)``.
    """
    if ndim == 4:
        return (batch, channels, size, size)
    if ndim == 3:
        return (batch, channels, size * size)
    if ndim == 5:
        half = max(1, size // 2)
        return (batch, channels, 4, half, half)
    raise ConfigError(f"bench_layers: cannot build an input for ndim={ndim}")


def _prepare(module: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool):
    module = module.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    if channels_last and x.dim() == 4:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return module, x


def _measure_pair(module: nn.Module, x: torch.Tensor, *, repeats: int, warmup: int, train: bool, memory: bool) -> dict[str, Any]:
    """Inference and (optionally) forward+backward numbers of one layer, flattened into one row."""
    fwd = measure_module(module, x, train=False, repeats=repeats, warmup=warmup, memory=memory)
    row: dict[str, Any] = {
        "params": fwd["params"],
        "flops": fwd["flops"],
        "fwd_ms": fwd["latency_ms"],
        "fwd_min_ms": fwd["latency_min_ms"],
        "fwd_max_ms": fwd["latency_max_ms"],
        "throughput": fwd["throughput"],
        "fwd_mem": fwd["peak_memory"],
    }
    if train:
        # Inside a network a layer's input gradient is always wanted (and parameter-free layers have no other).
        xg = x.detach().requires_grad_(x.is_floating_point())
        bwd = measure_module(module, xg, train=True, repeats=repeats, warmup=warmup, memory=memory)
        row.update({
            "train_flops": bwd["flops"],
            "fwdbwd_ms": bwd["latency_ms"],
            "fwdbwd_min_ms": bwd["latency_min_ms"],
            "fwdbwd_max_ms": bwd["latency_max_ms"],
            "train_mem": bwd["peak_memory"],
        })
    row["memory_method"] = fwd["memory_method"]
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def bench_layers(
    names: str | Sequence[str] | None = "all",
    channels: int = 64,
    size: int = 56,
    batch: int = 8,
    dtype: str | torch.dtype = "float32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    compare: str | None = None,
    *,
    repeats: int = 10,
    warmup: int = 2,
    train: bool = True,
    memory: bool = True,
    layer_kwargs: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Cost of attention layers at one width and size, next to a 3×3 convolution of the same width.

    Args:
        names: layer names, wildcards, a comma-separated string, or ``"all"``
            (every registered layer). Names not registered get a row with a
            ``note`` and no numbers (layers are still being added).
        channels: width C.
        size: spatial size (``size × size``; 3-D / 5-D layers get as many positions,
            see :func:`layer_input`).
        batch: batch size B.
        dtype: ``"float32"`` or ``"bfloat16"`` (or a ``torch.dtype``).
        channels_last: use the channels-last memory format (4-D inputs).
        device: ``"cpu"`` or ``"cuda"``.
        compare: ``"timm"`` to measure timm's implementation of every layer it
            also has, in the same run on the same input.
        repeats: timed calls per measurement (median, min, max reported).
        warmup: untimed calls before them.
        train: also time forward + backward.
        memory: also measure peak memory.
        layer_kwargs: per-layer constructor options ``{name: {option: value}}``.
        progress: show a tqdm bar.

    Returns:
        One dict per row: ``layer``, ``impl`` (``"convattn"``, ``"timm"`` or
        ``"torch"`` for the ``conv3x3`` baseline), ``kind``, ``params``, ``flops``,
        ``fwd_ms`` (+ ``_min``/``_max``), ``throughput`` (samples/s), ``fwd_mem``
        (bytes), with ``train``: ``train_flops``, ``fwdbwd_ms`` (+ min/max),
        ``train_mem``; ``vs_conv3x3`` (forward latency / the conv's), ``vs_timm``
        (convattn / timm forward latency), ``vs_timm_fwdbwd``, and ``note``.

    Example:
        >>> rows = bench_layers("se", channels=16, size=8, batch=2, repeats=1, warmup=0)
        >>> [(r["layer"], r["impl"]) for r in rows]
        [('conv3x3', 'torch'), ('se', 'convattn')]
    """
    from ..registry import get_attn_info, list_attn

    dt = resolve_dtype(dtype)
    dev = _resolve_device(device)
    if compare not in (None, "none", "timm"):
        raise ConfigError(f"bench_layers expects compare in (None, 'timm'), got {compare!r}")
    if compare == "timm":
        from .peers import create_timm_layer, require_timm

        require_timm()
    check_fits("bench layers", (batch, channels, size, size), dt, dev)
    check_fits("bench layers", (channels, channels, 3, 3), dt, dev, "the 3×3 convolution's weight")
    found, missing = resolve_names(names, list_attn())
    layer_kwargs = layer_kwargs or {}
    common = {"repeats": repeats, "warmup": warmup, "train": train, "memory": memory}

    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    x4 = torch.randn(batch, channels, size, size, generator=gen)
    conv, xc = _prepare(nn.Conv2d(channels, channels, 3, padding=1, bias=False), x4, dev, dt, channels_last)
    base = {"layer": "conv3x3", "impl": "torch", "kind": "conv", **_measure_pair(conv, xc, **common), "note": ""}
    base["vs_conv3x3"] = 1.0
    rows.append(base)

    iterator: Iterable[str] = found
    if progress:
        from tqdm import tqdm

        iterator = tqdm(found, desc="bench layers", unit="layer")
    for name in iterator:
        info = get_attn_info(name)
        shape = layer_input(info.ndim, batch, channels, size)
        x = torch.randn(*shape, generator=gen)
        row: dict[str, Any] = {"layer": name, "impl": "convattn", "kind": info.kind}
        try:
            from ..registry import create_attn

            layer, xi = _prepare(create_attn(name, channels, **layer_kwargs.get(name, {})), x, dev, dt, channels_last)
            row.update(_measure_pair(layer, xi, **common))
            row["note"] = "" if info.ndim == 4 else f"input {tuple(shape)}"
        except Exception as exc:  # a layer that fails here must not end the table
            row["note"] = f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            continue
        row["vs_conv3x3"] = _ratio(row.get("fwd_ms"), base["fwd_ms"])
        rows.append(row)
        if compare == "timm":
            try:
                peer = create_timm_layer(name, channels, (size, size), layer_kwargs.get(name))
            except Exception as exc:
                peer = None
                row["note"] = (row["note"] + f"; timm build failed: {type(exc).__name__}: {exc}").strip("; ")[:200]
            if peer is not None and info.ndim == 4:
                peer, xp = _prepare(peer, x, dev, dt, channels_last)
                prow: dict[str, Any] = {"layer": name, "impl": "timm", "kind": info.kind}
                try:
                    prow.update(_measure_pair(peer, xp, **common))
                    prow["note"] = type(peer).__name__
                    prow["vs_conv3x3"] = _ratio(prow.get("fwd_ms"), base["fwd_ms"])
                    row["vs_timm"] = _ratio(row.get("fwd_ms"), prow.get("fwd_ms"))
                    row["vs_timm_fwdbwd"] = _ratio(row.get("fwdbwd_ms"), prow.get("fwdbwd_ms"))
                except Exception as exc:
                    prow["note"] = f"failed: {type(exc).__name__}: {exc}"[:200]
                rows.append(prow)
    for name in missing:
        rows.append({"layer": name, "impl": "convattn", "note": "not registered (skipped)"})
    return rows


def bench_models(
    models: str | Sequence[str] = "resnet18",
    attention: str | Sequence[str] = "none",
    *,
    size: int = 224,
    batch: int = 32,
    num_classes: int = 1000,
    in_chans: int = 3,
    train: bool = False,
    dtype: str | torch.dtype = "float32",
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    compare: str | None = None,
    repeats: int = 5,
    warmup: int = 2,
    memory: bool = True,
    lr: float = 0.01,
    progress: bool = False,
    placement: str | None = None,
) -> list[dict[str, Any]]:
    """Cost of whole models, with and without attention, for inference or an SGD training step.

    Args:
        models: model names (``convattn.models.list_models()``), comma list or wildcards.
        attention: attention layer names for ``create_model(attention=...)``;
            ``"none"`` is the plain model.
        size: input ``size × size``.
        batch: batch size.
        num_classes: classifier width.
        in_chans: input channels.
        train: time an SGD training step (forward, cross-entropy, backward,
            ``SGD(lr, momentum=0.9).step()``) instead of an inference forward.
        placement: where the attention goes (``attn_where`` of models built with
            ``insert_attn``: ``"block"``, ``"stage"``, ``"conv"``, ``"replace"``);
            the model's default when None.
        compare: ``"timm"``: also timm's model with the same attention in every
            block (resnet18/34/50/101), measured in the same run.
        repeats, warmup, memory, dtype, channels_last, device: as in :func:`bench_layers`.

    Returns:
        One dict per row: ``model``, ``attention``, ``impl``, ``params``,
        ``flops``, ``ms`` (+ ``min_ms``/``max_ms``), ``throughput``, ``mem``,
        ``mode`` (``"infer"``/``"train"``), ``vs_plain`` (latency / the same
        implementation's plain model), ``vs_timm`` and ``note``.
    """
    try:
        from ..models import create_model, list_models
    except ImportError as exc:
        raise ConfigError(f"bench models needs convattn.models, which failed to import: {exc}") from None
    from ..registry import list_attn

    dt = resolve_dtype(dtype)
    dev = _resolve_device(device)
    if compare not in (None, "none", "timm"):
        raise ConfigError(f"bench_models expects compare in (None, 'timm'), got {compare!r}")
    if compare == "timm":
        from .peers import create_timm_model, require_timm

        require_timm()
    check_fits("bench models", (batch, in_chans, size, size), dt, dev)
    model_names, missing_models = resolve_names(models, list_models())
    att_spec = attention.split(",") if isinstance(attention, str) else list(attention)
    att_names = [a.strip() for a in att_spec if a.strip()]
    registered = set(list_attn())

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_chans, size, size, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    rows: list[dict[str, Any]] = []
    plain_ms: dict[tuple[str, str], float] = {}

    jobs = [(m, a) for m in model_names for a in att_names]
    iterator: Iterable[tuple[str, str]] = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="bench models", unit="model")

    def run(model: nn.Module) -> dict[str, Any]:
        model, xi = _prepare(model, x, dev, dt, channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if train else None
        r = measure_module(model, xi, train=train, repeats=repeats, warmup=warmup,
                           target=target.to(dev), optimizer=opt, memory=memory)
        return {"params": r["params"], "flops": r["flops"], "ms": r["latency_ms"], "min_ms": r["latency_min_ms"],
                "max_ms": r["latency_max_ms"], "throughput": r["throughput"], "mem": r["peak_memory"],
                "mode": r["mode"]}

    for model_name, att in iterator:
        key_att = None if att == "none" else att
        row: dict[str, Any] = {"model": model_name, "attention": att, "impl": "convattn", "note": ""}
        if key_att is not None and key_att not in registered:
            row["note"] = "attention layer not registered (skipped)"
            rows.append(row)
            continue
        try:
            torch.manual_seed(0)
            where = {"attn_where": placement} if placement and key_att else {}
            model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, attention=key_att, **where)
            row.update(run(model))
            del model
        except Exception as exc:
            row["note"] = f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            continue
        if key_att is None:
            plain_ms[(model_name, "convattn")] = row["ms"]
        rows.append(row)
        if compare == "timm":
            try:
                peer = create_timm_model(model_name, key_att, num_classes=num_classes, in_chans=in_chans)
            except Exception as exc:
                peer = None
                row["note"] = f"timm build failed: {type(exc).__name__}: {exc}"[:200]
            if peer is not None:
                prow: dict[str, Any] = {"model": model_name, "attention": att, "impl": "timm", "note": ""}
                try:
                    prow.update(run(peer))
                    row["vs_timm"] = _ratio(row["ms"], prow["ms"])
                    if key_att is None:
                        plain_ms[(model_name, "timm")] = prow["ms"]
                except Exception as exc:
                    prow["note"] = f"failed: {type(exc).__name__}: {exc}"[:200]
                rows.append(prow)
                del peer
    for r in rows:
        if "ms" in r and (r["model"], r["impl"]) in plain_ms:
            r["vs_plain"] = _ratio(r["ms"], plain_ms[(r["model"], r["impl"])])
    for name in missing_models:
        rows.append({"model": name, "attention": "", "impl": "convattn", "note": "model not available (skipped)"})
    return rows
