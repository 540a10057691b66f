"""A registry of model constructors by name (timm style): `builtin:NAME` in a recipe.

Every constructor takes `in_channels` and `num_classes`, so one registry serves any dataset.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_constructor(name: str) -> Callable[..., nn.Module]:
    return _REGISTRY[name]


def conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """CIFAR ResNet block with a 1x1 projection shortcut (option B).

    Option A (zero-padding the channels with F.pad) is not followed by torch-pruning's
    dependency graph (docs/TOOLCHAIN.md), so the built-ins use projections.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, 110)")
        n = (depth - 2) // 6
        widths = [width, width * 2, width * 4]
        self.stem = conv_bn_relu(in_channels, widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register
def resnet8(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """The default teacher: small enough to train on the spot, about 12 MMACs at 32x32."""
    return CifarResNet(8, in_channels, num_classes, width)


@register
def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes, width)


@register
def resnet32(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return CifarResNet(32, in_channels, num_classes, width)


@register
def resnet56(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes, width)


class SmallCNN(nn.Module):
    """The default student: a plain stride-2 conv stack, friendly to every INT8 runtime."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 72)):
        super().__init__()
        layers, cin = [], in_channels
        for i, w in enumerate(widths):
            layers.append(conv_bn_relu(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register
def small_cnn(in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] | list[int] = (32, 64, 72)) -> nn.Module:
    return SmallCNN(in_channels, num_classes, tuple(widths))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


@register
def mobilenet_tiny(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """A MobileNetV2-style edge student (depthwise convs: the hard case for INT8)."""
    w = width
    return nn.Sequential(
        conv_bn_relu(in_channels, w),
        InvertedResidual(w, w, 1, 2),
        InvertedResidual(w, 2 * w, 2, 4),
        InvertedResidual(2 * w, 2 * w, 1, 4),
        InvertedResidual(2 * w, 4 * w, 2, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(4 * w, num_classes),
    )
