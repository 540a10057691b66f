"""Users' own models and checkpoints: pipeline/models/spec.py and pipeline/models/checkpoints.py.

In-process unit tests plus one CLI run for the missing-dependency exit code (torchvision/timm are an
optional extra that does not import beside torch 2.13 here: only that path is tested).
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.errors import CheckpointError, ConfigError, MissingDependency  # noqa: E402
from pipeline.models import zoo  # noqa: E402
from pipeline.models.checkpoints import load_into, read_checkpoint  # noqa: E402
from pipeline.models.spec import build_model, spec_fingerprint  # noqa: E402

MODEL_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build(num_classes, in_channels, width=8):
    return Net(num_classes, in_channels, width)


def fixed(depth=2):
    """Takes neither in_channels nor num_classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(depth, 3))


def anything(**kw):
    return nn.Linear(kw["in_channels"], kw["num_classes"])


def broken(width=8):
    raise ValueError("width must be even")
'''


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "my_models.py"
    p.write_text(MODEL_FILE)
    return p


# --------------------------------------------------------------------------- model specs


def test_file_callable_gets_channels_classes_and_kwargs(model_file):
    m = build_model(f"{model_file}:build", {"width": 4}, in_channels=3, num_classes=7)
    assert m.features[0].in_channels == 3 and m.features[0].out_channels == 4 and m.head.out_features == 7
    assert m(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
    m2 = build_model(f"{model_file}:Net", {}, in_channels=1, num_classes=5)  # a class works too
    assert m2.head.out_features == 5
    # in_channels / num_classes are only passed when the callable takes them (or **kwargs)
    assert isinstance(build_model(f"{model_file}:fixed", {"depth": 4}, 1, 10), nn.Sequential)
    assert build_model(f"{model_file}:anything", {}, 2, 6).out_features == 6


def test_package_module_callable(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("userpkg.nets:build", {"width": 6}, in_channels=1, num_classes=4)
    assert m.head.in_features == 6 and m.head.out_features == 4
    assert spec_fingerprint("userpkg.nets:build") is not None


def test_file_may_import_its_siblings(tmp_path):
    (tmp_path / "blocks_helper.py").write_text("from torch import nn\ndef head(n):\n    return nn.Linear(4, n)\n")
    (tmp_path / "net.py").write_text("import blocks_helper\ndef build(num_classes):\n"
                                     "    return blocks_helper.head(num_classes)\n")
    assert build_model(f"{tmp_path / 'net.py'}:build", {}, 1, 3).out_features == 3


@pytest.mark.parametrize("spec,kwargs,error,text", [
    ("{f}:build", {"depth": 3}, ConfigError, "does not take the argument(s) ['depth']"),
    ("{f}:nope", {}, ConfigError, "has no callable 'nope'"),
    ("{d}/missing.py:build", {}, ConfigError, "does not exist"),
    ("{f}:broken", {}, ConfigError, "ValueError: width must be even"),
    ("no_such_pkg_xyz.models:build", {}, ConfigError, "cannot import 'no_such_pkg_xyz.models'"),
    ("builtin:resnet9", {}, ConfigError, "unknown builtin model"),
    ("resnet18", {}, ConfigError, "scheme:name"),
    ("{d}/syntax.py:build", {}, ConfigError, "SyntaxError"),
    ("{d}/needs_dep.py:build", {}, MissingDependency, "'a_module_that_is_not_installed'"),
])
def test_bad_model_specs(model_file, spec, kwargs, error, text):
    d = model_file.parent
    (d / "syntax.py").write_text("def build(:\n")
    (d / "needs_dep.py").write_text("import a_module_that_is_not_installed\n")
    with pytest.raises(error) as e:
        build_model(spec.format(f=model_file, d=d), kwargs, 1, 10)
    assert text in e.value.message and e.value.hint
    if error is MissingDependency:
        assert e.value.exit_code == 3


def test_unknown_kwargs_hint_mentions_the_teacher_default(model_file):
    with pytest.raises(ConfigError) as e:
        build_model(f"{model_file}:fixed", {"width": 32}, 1, 10)
    assert "teacher.kwargs={}" in e.value.hint


@pytest.mark.parametrize("scheme", ["torchvision", "timm"])
def test_vision_extras_missing_give_exit_code_3(monkeypatch, scheme):
    for mod in ("torchvision", "torchvision.models", "timm"):
        monkeypatch.setitem(sys.modules, mod, None)  # import of these now raises ImportError
    with pytest.raises(MissingDependency) as e:
        build_model(f"{scheme}:resnet18", {}, 3, 10)
    assert e.value.exit_code == 3 and "pip install" in e.value.hint and "[vision]" in e.value.hint


def test_broken_torchvision_gives_exit_3_on_the_cli(tmp_path):
    """docs/TOOLCHAIN.md: torchvision 0.28 beside torch 2.13 raises RuntimeError on import; a fake one reproduces it."""
    from conftest import cli_env, fast_args, run_cli

    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = cli_env()
    env["PYTHONPATH"] = str(tmp_path / "fake") + os.pathsep + env["PYTHONPATH"]
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *fast_args(["teacher.model=torchvision:resnet18", "teacher.kwargs={}", "data.limit=100"]), env=env)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    assert "torchvision is not usable here" in p.stderr and "torchvision::nms" in p.stderr
    assert "pip install" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "run.json").exists()


def test_spec_fingerprint_follows_the_file(model_file):
    spec = f"{model_file}:build"
    a = spec_fingerprint(spec)
    model_file.write_text(MODEL_FILE + "\n# edited\n")
    assert a and spec_fingerprint(spec) != a
    assert spec_fingerprint("builtin:resnet8") is None
    assert spec_fingerprint("torchvision:resnet18") is None


# --------------------------------------------------------------------------- checkpoints


def _net() -> nn.Module:
    torch.manual_seed(0)
    return zoo.get_constructor("small_cnn")(in_channels=1, num_classes=10)


def _fresh() -> nn.Module:
    torch.manual_seed(1)
    return zoo.get_constructor("small_cnn")(in_channels=1, num_classes=10)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict_with_extras", "dataparallel",
                                  "lightning_prefix"])
def test_state_dict_forms_load(tmp_path, wrap):
    src = _net()
    sd = src.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd},
        "model": {"model": sd, "epoch": 3},
        "model_state_dict_with_extras": {"epoch": 9, "model_state_dict": sd, "optimizer": {"lr": 0.1}},
        "dataparallel": nn.DataParallel(src).state_dict(),
        "lightning_prefix": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    }[wrap]
    if wrap == "dataparallel":
        assert all(k.startswith("module.") for k in obj)
    torch.save(obj, tmp_path / "ck.pt")
    dst = _fresh()
    assert not _same(src, dst)
    out = load_into(dst, tmp_path / "ck.pt")
    assert out is dst and _same(src, dst)


def test_mismatch_gives_a_readable_diff(tmp_path):
    sd = dict(_net().state_dict())
    first = next(iter(sd))
    sd.pop(first)
    sd["extra.weight"] = torch.zeros(2)
    fc = [k for k in sd if k.endswith("weight") and sd[k].ndim == 2][-1]
    sd[fc] = torch.zeros(3, sd[fc].shape[1])
    torch.save(sd, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_fresh(), tmp_path / "ck.pt")
    msg = e.value.message
    assert f"missing in checkpoint: {first}" in msg and "unexpected in checkpoint: extra.weight" in msg
    assert f"shape mismatch: {fc} model (10, " in msg and "vs checkpoint (3, " in msg
    assert "teacher.model" in e.value.hint


def test_torchscript_file_is_used_as_is(tmp_path):
    src = _net().eval()
    torch.jit.save(torch.jit.script(src), str(tmp_path / "m.ts"))
    out = load_into(_fresh(), tmp_path / "m.ts")
    assert isinstance(out, torch.jit.ScriptModule)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(out(x), src(x))


def test_pickled_full_model_needs_the_opt_in(tmp_path):
    src = _net()
    torch.save(src, tmp_path / "full.pt")  # pickles the whole module
    with pytest.raises(CheckpointError) as e:
        load_into(_fresh(), tmp_path / "full.pt")
    assert "pickled object" in e.value.message and "SmallCNN" in e.value.message
    assert "teacher.allow_pickle=true" in e.value.hint
    dst = _fresh()
    assert load_into(dst, tmp_path / "full.pt", allow_pickle=True) is dst and _same(src, dst)


def test_pickled_model_of_another_architecture_names_its_class(tmp_path):
    torch.save(zoo.get_constructor("resnet8")(in_channels=1, num_classes=10), tmp_path / "full.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_fresh(), tmp_path / "full.pt", allow_pickle=True)
    assert "does not match the model" in e.value.message and "pipeline.models.zoo" in e.value.hint


class RunsCode:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle", "inside_state_dict"])
def test_checkpoint_that_runs_code_is_not_run(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if fmt == "torch_zip":
        torch.save(RunsCode(marker), path)
    elif fmt == "raw_pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        sd = dict(_net().state_dict())
        sd["payload"] = RunsCode(marker)
        torch.save({"state_dict": sd}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as e:
        load_into(_fresh(), path)
    assert "could run code" in e.value.message and "system" in e.value.message
    assert "teacher.allow_pickle=true" in e.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("case,text", [
    ("missing", "does not exist"), ("empty", "is empty"), ("garbage", "not a PyTorch checkpoint"),
    ("truncated", "truncated"), ("no_state_dict", "top-level keys: epoch, optimizer"), ("folder", "not a file"),
    ("numpy_inside", "numpy"),
])
def test_bad_checkpoint_files(tmp_path, case, text):
    p = tmp_path / "ck.pt"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "garbage":
        p.write_text("hello, not a checkpoint")
    elif case == "truncated":
        torch.save(_net().state_dict(), p)
        p.write_bytes(p.read_bytes()[:2000])
    elif case == "no_state_dict":
        torch.save({"epoch": 1, "optimizer": {"lr": torch.tensor(0.1)}}, p)
    elif case == "folder":
        p.mkdir()
    elif case == "numpy_inside":
        import numpy as np

        torch.save({"w": np.ones(3)}, p)
    with pytest.raises(CheckpointError) as e:
        load_into(_fresh(), p)
    assert text in e.value.message and e.value.hint


def test_read_checkpoint_returns_plain_objects(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(read_checkpoint(tmp_path / "x.pt")["a"], torch.ones(2))


def test_user_file_model_loads_dataparallel_checkpoint(model_file, tmp_path):
    spec = f"{model_file}:build"
    src = build_model(spec, {"width": 8}, 1, 10)
    torch.save(nn.DataParallel(src).state_dict(), tmp_path / "dp.pt")
    dst = load_into(build_model(spec, {"width": 8}, 1, 10), tmp_path / "dp.pt")
    assert _same(src, dst)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_into(build_model(spec, {"width": 4}, 1, 10), tmp_path / "dp.pt")
