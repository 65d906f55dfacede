"""convattn's C++ CPU kernels, compiled on first use with ``torch.utils.cpp_extension``.

The sources live in ``layers/csrc``. Building needs a C++ compiler (and ninja, which
PyTorch uses when present); it takes about half a minute once per machine, and the
result is cached by PyTorch (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) under a name that hashes the sources and this CPU's
instruction sets, since the code is built with ``-march=native``. Where the build fails, or with
``CONVATTN_EXTENSIONS=0`` in the environment, the layers use their PyTorch-op paths,
which compute the same result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["cbam_ops", "extensions_enabled", "fused_input", "se_ops", "tracing"]

_LOG = logging.getLogger(__name__)
_SRC = Path(__file__).with_name("csrc")
_LOADED: dict[str, Any] = {}


def extensions_enabled() -> bool:
    """False when ``CONVATTN_EXTENSIONS`` is ``0``/``false``/``no``/``off`` in the environment."""
    return os.environ.get("CONVATTN_EXTENSIONS", "1").strip().lower() not in ("0", "false", "no", "off")


def _build_tag() -> str:
    """A short hash of the kernel sources and of this CPU's model and instruction-set flags
    (the build uses ``-march=native``; PyTorch's own rebuild check does not look at headers)."""
    text = platform.machine() + "".join(f.read_text() for f in sorted(_SRC.iterdir()) if f.suffix in (".cpp", ".h"))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _load(source: str, library: str) -> Any:
    if not extensions_enabled():
        return None
    if library in _LOADED:
        return _LOADED[library]
    ops = None
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    try:
        torch_log.setLevel(logging.ERROR)  # its "no CUDA runtime found" notice on CPU-only machines
        from torch.utils.cpp_extension import load

        _LOG.info("building convattn's %s kernels (once per machine, about 30 s)", library)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load(
                name=f"{library}_{_build_tag()}",
                sources=[str(_SRC / source)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
        ops = getattr(torch.ops, library)
    except Exception as e:  # no compiler, missing headers, ...: fall back to PyTorch ops
        warnings.warn(
            f"convattn could not build its C++ kernels ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "using the PyTorch-op paths (same results, slower on CPU). Set CONVATTN_EXTENSIONS=0 to skip the build.",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        torch_log.setLevel(level)
    _LOADED[library] = ops
    return ops


def cbam_ops() -> Any:
    """The ``torch.ops.convattn_cbam`` namespace (fused CBAM passes), or ``None`` where unavailable."""
    return _load("cbam_cpu.cpp", "convattn_cbam")


def se_ops() -> Any:
    """The ``torch.ops.convattn_se`` namespace (whole-layer SE), or ``None`` where unavailable."""
    return _load("se_cpu.cpp", "convattn_se")


def tracing() -> bool:
    """Inside ``torch.compile``/``torch.export`` tracing or a dispatch mode (``FlopCounterMode``, fake
    tensors, memory trackers): layers then run plain PyTorch ops, so such tools see what is computed."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


def fused_input(x: torch.Tensor, params) -> bool:
    """Whether the CPU kernels take ``x``: a CPU float32/float64 tensor, contiguous or channels-last,
    with the layer's parameters in the same dtype, outside ``torch.compile``/``torch.export`` tracing
    and outside dispatch modes (``FlopCounterMode``, fake tensors, ...), which then see PyTorch ops."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        and not tracing()
        and all(q.dtype == x.dtype for q in params)
    )
