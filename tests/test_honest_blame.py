"""Honest blame: a failure caused by the user's model is exit 2 with the cause and a fix, never "internal error"
(exit 4). Broken models of each kind go through the real CLI; the backward case through fit() directly (the
teacher's ONNX probe refuses a custom autograd.Function before training)."""
from __future__ import annotations

import pytest
from conftest import fast_args, run_cli

BROKEN = '''
import torch
from torch import nn


class Inplace(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        y = torch.sigmoid(self.conv(x))
        y.mul_(2)
        return self.head(y.mean((2, 3)))


class Text(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return "logits"


class Raises(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        raise RuntimeError("boom in forward")


class _NoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("backward not written for this layer")


class BadBackward(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(_NoGrad.apply(self.conv(x)).mean((2, 3)))


def inplace(num_classes, in_channels):
    return Inplace(num_classes, in_channels)


def text(num_classes, in_channels):
    return Text(num_classes, in_channels)


def raises(num_classes, in_channels):
    return Raises(num_classes, in_channels)


def needs_depth(num_classes, in_channels, depth):
    return Inplace(num_classes, in_channels)
'''

QUICK = ["teacher.kwargs={}", "teacher.train.epochs=1", "distill.epochs=1", "data.limit=200"]


@pytest.fixture
def broken_file(tmp_path):
    p = tmp_path / "broken_models.py"
    p.write_text(BROKEN)
    return p


@pytest.mark.parametrize("fn,words", [
    ("inplace", ["modifies in place", "broken_models.py:13", "out-of-place"]),
    ("text", ["returns a str"]),
    ("raises", ["boom in forward"]),
    ("needs_depth", ["depth"]),
])
def test_a_broken_model_is_the_users_error_not_ours(broken_file, tmp_path, fn, words):
    p = run_cli("run", "--target", "onnxruntime", "--out", str(tmp_path / "run"),
                *fast_args([*QUICK, f"teacher.model={broken_file}:{fn}"]), timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, err[-1500:])
    assert "internal error" not in err and err.startswith("error: "), err[-1500:]
    for w in words:
        assert w in err, (w, err)


def test_a_custom_backward_that_raises_names_the_users_line(broken_file):
    import importlib.util

    import numpy as np

    from pipeline.errors import ModelError
    from pipeline.train import fit

    spec = importlib.util.spec_from_file_location("broken_models", broken_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.BadBackward(3, 1)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 16)
    with pytest.raises(ModelError, match=r"backward pass raised RuntimeError: backward not written .*broken_models\.py:\d+"):
        fit(model, x, y, x, y, epochs=1, lr=0.01, batch_size=8, momentum=0.9, weight_decay=0.0, seed=0)


def test_clipped_settings_are_said_once_and_recorded(tmp_path):
    """A setting the data cannot honour is said once on the terminal and kept in run.json as what was used."""
    from conftest import read_run

    out = tmp_path / "clip"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *fast_args(["data.limit=120", "calibration.samples=5000", "distill.batch_size=4096",
                            "benchmark.enabled=false"]), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    said = p.stdout + p.stderr
    assert said.count("calibration.samples=5000 clipped to the 120 training images") == 1
    assert said.count("distill: batch_size 4096 is more than the 120 training images") == 1
    s = read_run(out)
    cal = next(st for st in s["stages"] if st["stage"] == "calibration")
    assert any("clipped to the 120" in n for n in cal["notes"])
