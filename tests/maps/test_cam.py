"""convattn.maps.cam: the Grad-CAM layer found automatically, dict outputs."""

import re

import pytest
import torch
from torch import nn

import convattn
from convattn.maps import find_cam_layer, grad_cam
from convattn.models import create_model


def test_cam_layer_found_automatically():
    resnet = create_model("resnet18", num_classes=5, attention="se")
    assert find_cam_layer(resnet, torch.randn(1, 3, 64, 64)) == "layer4"
    cnn = create_model("simple_cnn", num_classes=5, in_chans=1, attention="cbam")
    name = find_cam_layer(cnn, torch.randn(1, 1, 28, 28))
    assert "attn" not in name  # never a convolution inside an attention gate
    assert isinstance(dict(cnn.named_modules())[name], nn.Module)


def test_grad_cam_handles_dict_outputs():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return {"logits": self.head(self.features(x).mean((2, 3))), "maps": x}

    cams, layer = grad_cam(DictNet(), torch.randn(2, 1, 10, 12))
    assert layer == "features"
    assert cams.shape == (2, 10, 12) and cams.min() >= 0 and cams.max() <= 1
    with pytest.raises(convattn.ConfigError, match="no module"):
        grad_cam(DictNet(), torch.randn(1, 1, 8, 8), target_layer="nope")


def _cnn():
    torch.manual_seed(0)
    return create_model("simple_cnn", num_classes=5, in_chans=1, attention="cbam").eval()


def test_builtin_grad_cam_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convattn.maps import LogitsOnly

    model, x = _cnn(), torch.randn(3, 1, 28, 28)
    for targets in (None, [1, 2, 3]):
        ours, layer = grad_cam(model, x, targets=targets)
        assert all(p.grad is None for p in model.parameters())  # no gradients left behind
        with GradCAM(model=LogitsOnly(model), target_layers=[dict(model.named_modules())[layer]]) as cam:
            theirs = cam(input_tensor=x, targets=None if targets is None else [ClassifierOutputTarget(t) for t in targets])
        assert ours.shape == (3, 28, 28)
        assert abs(ours - theirs).max() < 1e-4


def test_cam_methods_differ_and_follow_the_target_class():
    model, x = _cnn(), torch.randn(2, 1, 28, 28)
    base, _ = grad_cam(model, x)
    for method in ("gradcam++", "eigencam", "xgradcam", "layercam"):
        cams, _ = grad_cam(model, x, method=method)
        assert cams.shape == base.shape and cams.min() >= 0 and cams.max() <= 1
        assert abs(cams - base).max() > 1e-3, method
    pred = model(x).argmax(1)
    other, _ = grad_cam(model, x, targets=[(int(p) + 1) % 5 for p in pred])
    assert abs(other - base).max() > 1e-3
    with pytest.raises(convattn.ConfigError, match=re.escape("unknown CAM method 'gradcam+'; expected one of gradcam, gradcam++, ")):
        grad_cam(model, x, method="gradcam+")
    with pytest.raises(convattn.ConfigError, match="one target class per image \\(2\\), got 1"):
        grad_cam(model, x, targets=[0])


def test_without_pytorch_grad_cam_gradcam_is_built_in(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    model, x = _cnn(), torch.randn(1, 1, 28, 28)
    cams, _ = grad_cam(model, x)
    assert cams.shape == (1, 28, 28)
    with pytest.raises(convattn.ConfigError, match=r"^CAM method 'scorecam' needs pytorch-grad-cam, which is not "
                                                   r"installed: pip install 'convattn\[cam\]'"):
        grad_cam(model, x, method="scorecam")
