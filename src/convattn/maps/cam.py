"""Class activation maps: a built-in Grad-CAM (Selvaraju et al., ICCV 2017; https://arxiv.org/abs/1610.02391)
and the other methods of ``pytorch-grad-cam`` (Grad-CAM++, Score-CAM, Eigen-CAM, Ablation-CAM, XGrad-CAM, LayerCAM).

The target layer is found automatically: the largest module around the last
``Conv2d`` the forward pass runs (not counting the convolutions inside attention
gates) whose output keeps that convolution's spatial size (``layer4`` of a ResNet, the last conv block of a plain CNN), unless named.
Models returning dicts (``{"logits": ...}``, ``{"out": ...}``) are wrapped so that
Grad-CAM sees logits; segmentation outputs ``(B, K, H, W)`` are averaged over
positions into class scores.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError

__all__ = ["CAM_METHODS", "cam_title", "find_cam_layer", "grad_cam", "LogitsOnly"]

#: ``--cam`` names -> ``(pytorch-grad-cam class, title)``; ``gradcam`` is built in and needs no package.
CAM_METHODS = {
    "gradcam": ("GradCAM", "Grad-CAM"),
    "gradcam++": ("GradCAMPlusPlus", "Grad-CAM++"),
    "scorecam": ("ScoreCAM", "Score-CAM"),
    "eigencam": ("EigenCAM", "Eigen-CAM"),
    "ablationcam": ("AblationCAM", "Ablation-CAM"),
    "xgradcam": ("XGradCAM", "XGrad-CAM"),
    "layercam": ("LayerCAM", "LayerCAM"),
}


def cam_title(method: str) -> str:
    """The display name of a :data:`CAM_METHODS` entry (``"gradcam++"`` -> ``"Grad-CAM++"``)."""
    return CAM_METHODS[method][1]


class LogitsOnly(nn.Module):
    """Wraps a model so that it returns ``(B, K)`` class scores (for Grad-CAM)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict):
            for key in ("logits", "out"):
                if isinstance(out.get(key), torch.Tensor):
                    out = out[key]
                    break
            else:
                out = next(v for v in out.values() if isinstance(v, torch.Tensor))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() > 2:
            out = out.flatten(2).mean(-1)
        return out


def _modules_by_name(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _is_gate(module: nn.Module) -> bool:
    """A registered attention layer that is not a convolution replacement (its convs are not the CAM layer)."""
    from ..registry import get_attn_info

    if getattr(type(module), "attn_name", None) is None:
        return False
    try:
        return get_attn_info(type(module)).kind != "conv"
    except ValueError:
        return False


def find_cam_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Module path of the Grad-CAM target layer of ``model`` (see the module docstring).

    Args:
        model: the model.
        example: an input batch (one forward pass is run, without gradients).

    Raises:
        ConfigError: the model runs no ``Conv2d`` with a spatial output.
    """
    order: list[tuple[str, tuple[int, ...] | None]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, _name=name):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            order.append((_name, shape))

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    modules = _modules_by_name(model)
    gates = [n for n, m in modules.items() if n and _is_gate(m)]

    def inside_gate(name: str) -> bool:
        return any(name.startswith(g + ".") for g in gates)

    last_conv = None
    for name, shape in order:
        if isinstance(modules[name], nn.Conv2d) and shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1 \
                and not inside_gate(name):
            last_conv = (name, shape)
    if last_conv is None:
        # fall back to any conv with a 4-D output (a 1x1 map still has a gradient)
        for name, shape in order:
            if isinstance(modules[name], nn.Conv2d) and shape is not None and len(shape) == 4:
                last_conv = (name, shape)
    if last_conv is None:
        raise ConfigError(f"Grad-CAM: {type(model).__name__} runs no Conv2d; name the target layer (--cam-layer)")
    conv_name, conv_shape = last_conv
    shapes = {}
    for name, shape in order:
        shapes[name] = shape  # the last call of a module wins
    parts = conv_name.split(".")
    for i in range(1, len(parts)):
        ancestor = ".".join(parts[:i])
        shape = shapes.get(ancestor)
        if shape is not None and len(shape) == 4 and shape[-2:] == conv_shape[-2:]:
            return ancestor
    return conv_name


def _builtin_grad_cam(wrapped: nn.Module, layer: nn.Module, images: torch.Tensor,
                      targets: Sequence[int] | None) -> np.ndarray:
    """Grad-CAM by hooks: ReLU of the activations weighted by their spatially averaged gradients,
    min-max scaled, resized (bilinear) to the input, min-max scaled again (as pytorch-grad-cam does)."""
    saved: dict[str, torch.Tensor] = {}

    def hook(mod, args, out):
        if isinstance(out, torch.Tensor):
            saved["act"] = out.detach().clone()  # before any in-place op that follows the layer
            out.register_hook(lambda g: saved.__setitem__("grad", g))

    handle = layer.register_forward_hook(hook)
    try:
        logits = wrapped(images)
    finally:
        handle.remove()
    if "act" not in saved or saved["act"].dim() != 4:
        raise ConfigError(f"Grad-CAM: the target layer must output (B, C, H, W), got "
                          f"{None if 'act' not in saved else tuple(saved['act'].shape)}")
    classes = logits.argmax(1) if targets is None else torch.as_tensor(list(targets), device=logits.device)
    logits.gather(1, classes.view(-1, 1).long()).sum().backward()
    act, grad = saved["act"], saved["grad"].detach()
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True).clamp_min(0).float()

    def scale(t: torch.Tensor) -> torch.Tensor:
        lo = t.amin((2, 3), keepdim=True)
        return (t - lo) / (1e-7 + (t - lo).amax((2, 3), keepdim=True))

    cam = F.interpolate(scale(cam), size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
    return scale(cam)[:, 0].cpu().numpy()


def _package_cam(method: str, wrapped: nn.Module, layer: nn.Module, images: torch.Tensor,
                 targets: Sequence[int] | None) -> np.ndarray:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise ConfigError(f"CAM method {method!r} needs pytorch-grad-cam, which is not installed: "
                          "pip install 'convattn[cam]' (or use the built-in --cam gradcam)") from None
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method][0])
    cam_targets: Any = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with cam_class(model=wrapped, target_layers=[layer]) as cam:
        if method == "scorecam":
            cam.batch_size = 16
        return cam(input_tensor=images, targets=cam_targets)


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    *,
    target_layer: str | None = None,
    targets: Sequence[int] | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, str]:
    """Class activation maps of ``images`` for the predicted (or given) classes.

    Args:
        model: a classifier (dict outputs are handled, see :class:`LogitsOnly`).
        images: normalised ``(B, C, H, W)`` inputs.
        target_layer: module path to take activations and gradients from;
            ``None`` finds it (:func:`find_cam_layer`).
        targets: class per image; ``None`` uses the predicted class.
        method: a :data:`CAM_METHODS` name; ``"gradcam"`` is built in, the others run
            ``pytorch-grad-cam`` (the ``cam`` extra).

    Returns:
        ``(cams, layer)``: ``(B, H, W)`` maps in ``[0, 1]`` and the layer used.

    Raises:
        ConfigError: an unknown method or layer name, or ``pytorch-grad-cam`` missing for a method other than ``gradcam``.
    """
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; expected one of {', '.join(CAM_METHODS)}")
    modules = _modules_by_name(model)
    if target_layer is None:
        target_layer = find_cam_layer(model, images)
    elif target_layer not in modules or not target_layer:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-3:]
        raise ConfigError(f"Grad-CAM: {type(model).__name__} has no module {target_layer!r} "
                          f"(module paths look like {convs})")
    if targets is not None and len(targets) != images.shape[0]:
        raise ConfigError(f"grad_cam: expected one target class per image ({images.shape[0]}), got {len(targets)}")
    wrapped = LogitsOnly(model).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if method == "gradcam":
                maps = _builtin_grad_cam(wrapped, modules[target_layer], images, targets)
            else:
                maps = _package_cam(method, wrapped, modules[target_layer], images, targets)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    return np.clip(maps, 0.0, 1.0), target_layer
