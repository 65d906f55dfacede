"""Exporting a trained run for deployment: ``export(run, format="onnx" | "pt2")``.

The run's model (through :func:`~convattn.engine.load_run`) is traced once with ``torch.export`` at
a dynamic batch, height and width, written as ONNX (torch's ``torch.export``-based exporter) or as a
``torch.export`` program (``.pt2``), run again from the written bytes (onnxruntime; the loaded
program) at two batch sizes and input sizes, and compared with the PyTorch model before the file
is put in place. The preprocessing and class names go with it: in the ONNX file's
``metadata_props`` or the ``.pt2`` archive's ``convattn.json``, and in a JSON file beside it.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._io import atomic_write_bytes, atomic_write_text
from ..exceptions import ConfigError, ConvattnError, ShapeError
from .build import load_run
from .checkpoint import resolve_checkpoint
from .evaluate import logits_of

__all__ = ["FORMATS", "ExportCheckError", "export", "export_metadata"]

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
_AXES = ("batch", None, "height", "width")
_FIXED = "export it at its training size with a dynamic batch: --fixed-size (fixed_size=True)"


class ExportCheckError(ConvattnError, ArithmeticError):
    """The exported model's outputs differ from the PyTorch model's (nothing was written)."""


class _Logits(nn.Module):
    """The run's model with its logits as the one output (models that return a dict give ``["logits"]``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(image))


def export_metadata(data_info: dict[str, Any], config: Any, *, dynamic: tuple[str, ...]) -> dict[str, Any]:
    """What a deployment needs besides the graph: the input's layout and preprocessing, the class
    names, the convattn version, and the run's config."""
    from .._version import __version__

    return {
        "format": "convattn.export/1",
        "convattn_version": __version__,
        "input": "image",
        "preprocessing": "resize to image_size (bilinear), scale to 0-1, then (x - mean) / std per channel; "
                         "input NCHW float32",
        "output": "logits",
        "dynamic_axes": list(dynamic),
        "channels": int(data_info["in_chans"]),
        "image_size": [int(s) for s in data_info["image_size"]],
        "mean": list(data_info["mean"]),
        "std": list(data_info["std"]),
        "class_names": list(data_info["class_names"]),
        "data_info": dict(data_info),
        "config": config.to_dict(),
    }


def _trace(model: nn.Module, x: torch.Tensor, dims: dict[int, Any], name: str) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` at ``x``, with one line for a model that fixes its input size."""
    from torch._dynamo.exc import UserError

    try:
        return torch.export.export(model, (x,), dynamic_shapes=(dims,))
    except ShapeError as exc:
        reason = str(exc).splitlines()[0]
    except UserError as exc:
        if "Constraints violated" not in str(exc):
            raise
        reason = "its code fixes the input's height and width when traced"
    raise ConfigError(f"model {name!r} cannot be exported with a dynamic height and width ({reason}); {_FIXED}") from None


def _check_runs(model: nn.Module, shape: tuple[int, ...], name: str) -> None:
    """Refuse a dynamic size for a model that does not run at another input size than its training one."""
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"model {name!r} does not run at input size {'x'.join(map(str, shape))}, another than its "
                          f"training size ({str(exc).splitlines()[0]}); {_FIXED}") from None


def _sizes(x: torch.Tensor, fixed_size: bool) -> list[tuple[int, ...]]:
    """Two inputs to check the export at: the traced one and another batch (and size, when dynamic)."""
    b, c, h, w = x.shape
    return [tuple(x.shape), (b + 1, c, h, w) if fixed_size else (b + 1, c, h + max(8, h // 4), w + max(4, w // 8))]


def _onnx_bytes(program: torch.export.ExportedProgram, x: torch.Tensor, axes: dict[int, str], opset: int | None,
                meta: dict[str, Any]) -> bytes:
    """The ONNX file of ``program`` (torch's ``torch.export``-based exporter), ``meta`` in its ``metadata_props``."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"ONNX export needs {module} (pip install onnx onnxscript, or convattn's dev extra); "
                              "--format pt2 needs neither") from None
    import onnx

    kwargs = {} if opset is None else {"opset_version": opset}
    # the exporter logs an opset below 18 and a failed conversion to it; the error below says it in one line
    loggers = [logging.getLogger(n) for n in ("onnxscript.version_converter", "torch.onnx._internal.exporter._compat")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        onnx_program = torch.onnx.export(program, (x,), dynamo=True, verbose=False, input_names=["image"],
                                         output_names=["logits"], dynamic_shapes=(axes,), **kwargs)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    proto = onnx_program.model_proto
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise ConfigError(f"torch's ONNX exporter writes opset 18 and later and could not convert this model to "
                          f"opset {opset} (it holds opset {written}); choose --opset {written} or later")
    onnx.helper.set_model_props(proto, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return proto.SerializeToString()


def _onnx_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX model ``data`` in an onnxruntime session, as a function of the image batch."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("checking the ONNX file needs onnxruntime (pip install onnxruntime, or convattn's dev "
                          "extra); or export without the check (--no-check, check=False)") from None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def export(
    run: str | os.PathLike,
    format: str = "onnx",
    *,
    out: str | os.PathLike | None = None,
    opset: int | None = None,
    fixed_size: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export a trained run's model as ONNX or as a ``torch.export`` program, with its preprocessing.

    Args:
        run: a run directory (its ``best.pt``, else ``last.pt``) or a ``.pt`` checkpoint.
        format: ``"onnx"`` or ``"pt2"``.
        out: the file to write (default: ``model.onnx`` / ``model.pt2`` beside the checkpoint);
            the metadata goes beside it, its name with ``.json`` added (``model.onnx.json``).
        opset: the ONNX opset (default: the exporter's).
        fixed_size: export at the run's image size (a dynamic batch only), for models that fix
            their input size when traced (HaloNet).
        check: run the exported model (onnxruntime; the reloaded program) at two batch sizes and
            input sizes and compare it with the PyTorch model; a difference over 1e-4 (relative
            to the logits' scale) raises and writes nothing.

    Returns:
        ``{"path", "metadata", "format", "dynamic_axes", "checked": [input shapes], "max_abs_diff"}``
        (``max_abs_diff`` is None without ``check``).

    Raises:
        ConfigError: unknown format, a bad opset, a model that cannot take a dynamic size, a
            missing onnx / onnxscript / onnxruntime.
        ExportCheckError: the exported model computes something else.
        CheckpointError: a missing, corrupt or unsafe checkpoint.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if opset is not None and (format != "onnx" or isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset applies to ONNX and must be an int >= 7, got opset={opset!r} for format {format!r}")
    path = None if out is None else Path(out)
    ckpt = resolve_checkpoint(run)
    model, config = load_run(ckpt, map_location="cpu")
    info = model.data_info
    net = _Logits(model).eval()
    h, w = (int(s) for s in info["image_size"])
    x = torch.randn(2, int(info["in_chans"]), h, w, generator=torch.Generator().manual_seed(0))
    axes = {i: a for i, a in enumerate(_AXES) if a is not None and not (fixed_size and i > 0)}
    shapes = _sizes(x, fixed_size)
    traced = x
    if not fixed_size:
        _check_runs(net, shapes[1], config.model)
        # traced at twice the size: at the training size a network's last stage can be 1×1, and a trace
        # there specialises on it (a program valid only up to that size); checked at both sizes below
        traced = torch.randn(2, x.shape[1], 2 * h, 2 * w, generator=torch.Generator().manual_seed(0))
        _check_runs(net, tuple(traced.shape), config.model)
    program = _trace(net, traced, {i: torch.export.Dim.DYNAMIC for i in axes}, config.model)
    meta = export_metadata(info, config, dynamic=tuple(axes.values()))
    if format == "onnx":
        data = _onnx_bytes(program, traced, axes, opset, meta)
    else:
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files={"convattn.json": json.dumps(meta)})
        data = buf.getvalue()
    diff = None
    if check:
        run_exported = _onnx_runner(data) if format == "onnx" else torch.export.load(io.BytesIO(data)).module()
        g = torch.Generator().manual_seed(1)
        diff, scale = 0.0, 1.0
        with torch.no_grad():
            for shape in shapes:
                t = torch.randn(shape, generator=g)
                want = net(t)
                try:
                    got = run_exported(t)
                except Exception as exc:  # onnxruntime's or a program's guard: the export does not hold there
                    raise ExportCheckError(
                        f"the exported {format} model fails at input {'x'.join(map(str, shape))} "
                        f"({str(exc).strip().splitlines()[-1][:200]}); nothing written; {_FIXED}") from None
                diff = max(diff, float((want - got).abs().max()))
                scale = max(scale, float(want.abs().max()))
        if not diff <= 1e-4 * scale:
            raise ExportCheckError(f"the exported {format} model differs from the PyTorch model by {diff:.3g} "
                                   f"(logits up to {scale:.3g}, inputs {shapes}); nothing written")
    path = path or ckpt.parent / f"model{FORMATS[format]}"
    atomic_write_bytes(path, data)
    meta_path = atomic_write_text(path.with_name(path.name + ".json"), json.dumps(
        {**meta, "checkpoint": str(ckpt), "file": path.name, "max_abs_diff": diff}, indent=2) + "\n")
    return {"path": str(path), "metadata": str(meta_path), "format": format, "dynamic_axes": list(axes.values()),
            "checked": shapes if check else [], "max_abs_diff": diff}
