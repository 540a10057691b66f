"""Property test over model loading (issue 10.7, model half): generated model wrappers and checkpoints.

Every generated example ends in a correct setup - the right logits selected, the weights loaded equal to
the source - or in a PipelineError with exit code 2 and a message; never another exception (which the CLI
would show as an internal error). Tiny models, in-process: 240 examples in well under 2 minutes.
"""
from __future__ import annotations

import collections
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.models.checkpoints import load_into  # noqa: E402
from pipeline.stages.teacher import check_accepts_input  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
N_CLASSES = 5
X = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class HasLogits:  # neither dict nor dataclass: only a .logits attribute
    def __init__(self, logits):
        self.logits = logits


Pair = collections.namedtuple("Pair", "feats logits")


class Tiny(nn.Module):
    """A conv, a BatchNorm and two heads; `kind` decides how forward packs its outputs."""

    def __init__(self, kind: str, pos: int, extras: int, distractor: bool):
        super().__init__()
        self.kind, self.pos, self.extras, self.distractor = kind, pos, extras, distractor
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, N_CLASSES)
        self.other = nn.Linear(4, N_CLASSES)

    def logits(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    def forward(self, x):
        f = self.bn(self.conv(x)).mean((2, 3))
        y = self.fc(f)
        extra = [f[:, :2] * (i + 1) for i in range(self.extras)]  # (N, 2): never logits-shaped
        if self.distractor:
            extra.append(self.other(f))  # a second (N, classes) tensor
        if self.kind == "tensor":
            return y
        if self.kind in ("tuple", "list"):
            items = list(extra)
            items.insert(min(self.pos, len(items)), y)
            return tuple(items) if self.kind == "tuple" else items
        if self.kind == "dict":
            d = {f"aux{i}": t for i, t in enumerate(extra)}
            d["logits" if self.pos % 2 == 0 else "scores"] = y
            return d
        if self.kind == "namedtuple":
            return Pair(extra[0] if extra else f, y)
        if self.kind == "dataclass":
            return Output(logits=y, hidden=extra[0] if extra else f)
        return HasLogits(y)


def _true_path(m: Tiny):
    if m.kind == "tensor":
        return None
    if m.kind in ("tuple", "list"):
        n = m.extras + int(m.distractor)
        return min(m.pos, n)
    if m.kind == "dict":
        return "logits" if m.pos % 2 == 0 else "scores"
    return "logits"


def _ambiguous(m: Tiny) -> bool:
    """auto cannot choose: two (N, classes) tensors and the logits are not under a field named 'logits'."""
    if not m.distractor or m.kind in ("tensor", "namedtuple", "dataclass", "object"):
        return False
    return not (m.kind == "dict" and m.pos % 2 == 0)


@SETTINGS
@given(kind=st.sampled_from(["tensor", "tuple", "list", "dict", "namedtuple", "dataclass", "object"]),
       pos=st.integers(0, 3), extras=st.integers(0, 2), distractor=st.booleans(),
       choice=st.sampled_from(["auto", "true", "wrong"]))
def test_generated_wrappers_select_the_logits_or_refuse(kind, pos, extras, distractor, choice):
    torch.manual_seed(0)
    m = Tiny(kind, pos, extras, distractor).eval()
    with torch.no_grad():
        ref = m.logits(torch.from_numpy(X))
    output = {"auto": "auto", "true": _true_path(m), "wrong": "no_such_field"}[choice]
    if output is None:
        output = "auto"
    try:
        sel = check_accepts_input(m, X, N_CLASSES, "student", "gen:Tiny", output)
    except PipelineError as e:
        assert e.exit_code == 2 and e.message and e.hint
        expected_refusal = choice == "wrong" or (choice == "auto" and _ambiguous(m)) or \
            (choice == "wrong" and kind == "tensor")
        assert expected_refusal, e.message
        if choice == "auto":
            assert "ambiguous" in e.message and "student.output" in e.hint
        return
    assert not (choice == "wrong"), "a path that does not exist was accepted"
    assert not (choice == "auto" and _ambiguous(m)), "an ambiguous output was resolved silently"
    with torch.no_grad():
        got = sel(torch.from_numpy(X))
    assert isinstance(got, torch.Tensor) and torch.equal(got, ref)


# --------------------------------------------------------------------------- checkpoints


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential()
    m.add_module("stem", nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    m.add_module("pool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flat", nn.Flatten())
    m.add_module("fc", nn.Linear(4, N_CLASSES))
    with torch.no_grad():
        m.stem[1].running_mean.uniform_(-1, 1)
    return m


class HParams(dict):
    """A dict subclass of 'the training code' (like Lightning's AttributeDict)."""


class Config:
    def __init__(self):
        self.lr, self.arch = 0.1, "tiny"


PREFIXES = ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "model.", "net."]
WRAPPERS = [None, "state_dict", "model", "net", "model_state_dict", "ema", "params", "state_dict_ema"]
DAMAGE = [None, None, None, "shape", "drop_weight", "extra_key", "num_classes"]


@SETTINGS
@given(prefix=st.sampled_from(PREFIXES), wrapper=st.sampled_from(WRAPPERS), drop_nbt=st.booleans(),
       half=st.booleans(), legacy=st.booleans(), with_optimizer=st.booleans(), damage=st.sampled_from(DAMAGE),
       with_objects=st.booleans())
def test_generated_checkpoints_load_equal_or_refuse(prefix, wrapper, drop_nbt, half, legacy, with_optimizer,
                                                    damage, with_objects):
    src = _model(1)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if drop_nbt:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    if damage == "shape":
        sd["stem.0.weight"] = torch.zeros(8, 1, 3, 3)
    elif damage == "drop_weight":
        del sd["fc.weight"]
    elif damage == "extra_key":
        sd["head2.weight"] = torch.zeros(3, 4)
    elif damage == "num_classes":
        sd["fc.weight"], sd["fc.bias"] = torch.zeros(7, 4), torch.zeros(7)
    sd = {prefix + k: v for k, v in sd.items()}
    obj = sd if wrapper is None else {wrapper: sd}
    if with_optimizer and isinstance(obj, dict) and wrapper is not None:
        obj["optimizer"] = {"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}
        obj["epoch"] = 7
    if with_objects and wrapper is not None:  # training-code objects beside the weights (read as inert stubs)
        obj["hyper_parameters"] = HParams(lr=0.1, config=Config())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ck.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        dst = _model(2)
        try:
            out = load_into(dst, path)
        except PipelineError as e:
            assert e.exit_code == 2 and "does not match the model" in e.message, e.message
            assert damage is not None, f"a loadable checkpoint was refused: {e.message}"
            if damage == "num_classes":
                assert "num_classes=7" in e.hint
            return
    assert damage is None, f"a damaged checkpoint ({damage}) was accepted"
    got = out.state_dict()
    want = src.state_dict()
    for k, v in want.items():
        if k.endswith("num_batches_tracked"):
            continue
        expect = v.half().to(v.dtype) if half and v.is_floating_point() else v
        assert torch.equal(got[k], expect), k

