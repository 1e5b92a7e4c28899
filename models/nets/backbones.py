"""Convolutional backbones built from torchvision, never with pretrained downloads."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

__all__ = ["BACKBONES", "build_backbone"]

BACKBONES = ("resnet18", "resnet50", "densenet121")


def _first_conv_grey(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The stem convolution rebuilt for ``in_channels`` inputs (radiographs are grey)."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


def build_backbone(name: str, *, in_channels: int = 1, stages: int = 4) -> tuple[nn.Module, int]:
    """Feature extractor and its output channel count.

    Args:
        name: one of ``BACKBONES``. Weights are randomly initialised (``weights=None``): no
            download ever happens.
        in_channels: input channels (1 for radiographs).
        stages: for ResNets, how many residual stages to keep (1-4). Fewer stages keep a
            finer feature map (stride 8 or 16 instead of 32), which sharpens the CAM heatmap,
            and a smaller checkpoint. DenseNet-121 always keeps its four dense blocks.

    Returns:
        ``(module, channels)``: the module maps (N, in_channels, H, W) to (N, channels, h, w).
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if not 1 <= stages <= 4:
        raise ValueError(f"stages must be between 1 and 4, got {stages}")
    if name.startswith("resnet"):
        net = tvm.resnet18(weights=None) if name == "resnet18" else tvm.resnet50(weights=None)
        net.conv1 = _first_conv_grey(net.conv1, in_channels)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4][:stages]
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *layers)
        last = layers[-1][-1]
        channels = last.bn3.num_features if hasattr(last, "bn3") else last.bn2.num_features
        return body, int(channels)
    net = tvm.densenet121(weights=None)
    net.features.conv0 = _first_conv_grey(net.features.conv0, in_channels)
    return nn.Sequential(net.features, nn.ReLU(inplace=True)), int(net.classifier.in_features)
