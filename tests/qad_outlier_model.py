"""A student with an outlier activation channel, for the QAD test (tests/test_qad.py).

Channel 0 of the first block's output is multiplied by `outlier` and the next convolution divides its
weights on that channel by the same factor: the float function (and its training) is that of a plain
CNN, but the per-tensor INT8 range of the tensor between them is set by the outlier channel, so the
other channels get a few quantization levels and PTQ loses accuracy.
"""
import torch
import torch.nn.functional as F
from torch import nn


class OutlierCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, outlier: float, widths=(16, 32)):
        super().__init__()
        a, b = widths
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        scale = torch.ones(1, a, 1, 1)
        scale[0, 0] = outlier
        self.register_buffer("scale", scale)
        self.conv2 = nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False)
        self.block2 = nn.Sequential(nn.BatchNorm2d(b), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(b, num_classes)

    def forward(self, x):
        y = self.block1(x) * self.scale
        y = F.conv2d(y, self.conv2.weight / self.scale, stride=2, padding=1)
        return self.fc(torch.flatten(self.pool(self.block2(y)), 1))


def build(in_channels: int = 1, num_classes: int = 10, outlier: float = 200.0) -> nn.Module:
    return OutlierCNN(in_channels, num_classes, outlier)
