"""A student with an outlier activation channel, for the QAD test (tests/test_qad.py).

After the first conv block, channel 0 is replaced by a large constant (`outlier`); the next convolution's
weights on that channel stay zero, so the float student is a plain CNN (in training and with fake
quantization alike). But the per-tensor INT8 range of the tensor between them is set by the outlier:
the other channels get a few quantization levels and PTQ loses accuracy.
"""
import torch
from torch import nn


class OutlierCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, outlier: float, widths=(32, 64, 72)):
        super().__init__()
        a, b, c = widths
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        shift = torch.zeros(1, a, 1, 1)
        shift[0, 0] = outlier
        self.register_buffer("shift", shift)
        keep = torch.ones(1, a, 1, 1)
        keep[0, 0] = 0  # channel 0 becomes the constant `outlier` exactly
        self.register_buffer("keep", keep)
        # No padding, and batch norm after: the constant channel adds a constant per output channel, which
        # training-mode batch norm removes, so its weights (zero from the start) get no gradient.
        self.block2 = nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=0, bias=False), nn.BatchNorm2d(b), nn.ReLU())
        with torch.no_grad():
            self.block2[0].weight[:, 0] = 0
        self.block3 = nn.Sequential(nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        y = self.block2(self.block1(x) * self.keep + self.shift)
        return self.fc(torch.flatten(self.pool(self.block3(y)), 1))


def build(in_channels: int = 1, num_classes: int = 10, outlier: float = 300.0) -> nn.Module:
    return OutlierCNN(in_channels, num_classes, outlier)
