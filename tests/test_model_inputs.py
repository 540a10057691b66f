"""Users' models and checkpoints as they really come (issue 10.1, 10.2, 10.5 seeds, 10.6).

Each class of docs/ERRORS.md "Models and checkpoints as written and published" has a test here:
in-process for the loaders (fast), through the real CLI for the exit codes and the no-traceback rule.
"""
from __future__ import annotations

import collections
import dataclasses
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, fast_args, run_cli

sys.path.insert(0, str(ROOT))

from pipeline.errors import CheckpointError, ConfigError  # noqa: E402
from pipeline.models.checkpoints import load_into  # noqa: E402
from pipeline.models.measure import count_macs, macs_ratio  # noqa: E402
from pipeline.models.zoo import resnet8, resnet20  # noqa: E402
from pipeline.stages.teacher import check_accepts_input, teacher_split_note  # noqa: E402
from pipeline.stats import two_proportion_p  # noqa: E402

X = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def _src(seed: int = 1, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = resnet8(in_channels=1, num_classes=10, width=8, **kw)
    with torch.no_grad():  # non-trivial BN statistics so a missed buffer shows
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m


# --------------------------------------------------------------------------- checkpoints as published


def _old_cifar_checkpoint(src: nn.Module) -> dict:
    """What public CIFAR ResNet checkpoints look like: {'state_dict': ...}, DataParallel's module. prefix, no
    BatchNorm num_batches_tracked (saved before PyTorch 0.4.1), training state beside it."""
    sd = collections.OrderedDict((f"module.{k}", v) for k, v in src.state_dict().items()
                                 if not k.endswith("num_batches_tracked"))
    return {"epoch": 200, "best_prec1": 91.7, "state_dict": sd,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}}


@pytest.mark.parametrize("form", ["old_cifar", "legacy_format", "fp16", "compiled_dp", "model_key", "ema_params",
                                  "nested_net"])
def test_published_checkpoint_forms_load(tmp_path, form):
    src = _src()
    sd = src.state_dict()
    kwargs = {}
    if form == "old_cifar":
        obj = _old_cifar_checkpoint(src)
    elif form == "legacy_format":
        obj, kwargs = _old_cifar_checkpoint(src), {"_use_new_zipfile_serialization": False}
    elif form == "fp16":
        obj = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    elif form == "compiled_dp":
        obj = {f"_orig_mod.module.{k}": v for k, v in sd.items()}
    elif form == "model_key":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "args": {"lr": 0.1}}
    elif form == "ema_params":
        obj = {"params": dict(sd)}
    else:
        obj = {"checkpoint": {"net": {f"net.{k}": v for k, v in sd.items()}, "step": 3}}
    torch.save(obj, tmp_path / "ck.pt", **kwargs)
    dst = load_into(_src(seed=2), tmp_path / "ck.pt")
    if form == "fp16":
        ref = {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}
        assert all(torch.equal(dst.state_dict()[k].float(), ref[k].float()) for k in ref)
    else:
        got = dst.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in sd if not k.endswith("num_batches_tracked"))


def test_state_dict_preferred_over_ema_on_a_tie(tmp_path):
    a, b = _src(1), _src(3)
    torch.save({"state_dict_ema": b.state_dict(), "state_dict": a.state_dict()}, tmp_path / "ck.pt")
    assert _same(load_into(_src(2), tmp_path / "ck.pt"), a)


def test_mismatch_names_num_classes(tmp_path):
    torch.save(resnet8(in_channels=1, num_classes=100, width=8).state_dict(), tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_src(), tmp_path / "ck.pt", kwargs={"width": 8})
    assert "fc.weight model (10, 32) vs checkpoint (100, 32)" in e.value.message
    assert "(fc) has 100 classes" in e.value.hint and "num_classes=100" in e.value.hint
    assert "set teacher.head=replace" in e.value.hint  # the fix that keeps the pretrained backbone (issue 17)


def test_mismatch_names_width(tmp_path):
    torch.save(resnet8(in_channels=1, num_classes=10, width=16).state_dict(), tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_src(), tmp_path / "ck.pt", kwargs={"width": 8})
    assert "shape mismatch" in e.value.message
    assert "width=16" in e.value.hint


def test_mismatch_names_depth(tmp_path):
    torch.save(resnet20(in_channels=1, num_classes=10, width=8).state_dict(), tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_src(), tmp_path / "ck.pt")
    assert "unexpected in checkpoint: layer1 (" in e.value.message  # grouped by module, not 60 keys
    assert "layer1: 3 in the checkpoint vs 1 in the model" in e.value.hint
    assert "builtin:resnet20" in e.value.hint


def test_missing_num_batches_tracked_is_not_a_mismatch_but_a_missing_conv_is(tmp_path):
    sd = {k: v for k, v in _src().state_dict().items() if k != "stem.0.weight"}
    torch.save(sd, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(_src(), tmp_path / "ck.pt")
    assert "missing in checkpoint: stem.0.weight" in e.value.message
    assert "num_batches_tracked" not in e.value.message


# --------------------------------------------------------------------------- MACs


def test_torchscript_macs_are_counted_and_ratios_never_divide_by_zero():
    m = _src().eval()
    eager = count_macs(m, (1, 1, 16, 16))
    assert eager and eager > 0
    assert count_macs(torch.jit.script(m), (1, 1, 16, 16)) == eager
    assert count_macs(torch.jit.trace(m, torch.zeros(1, 1, 16, 16)), (1, 1, 16, 16)) == eager
    assert macs_ratio(100, 0) is None and macs_ratio(None, 5) is None and macs_ratio(1, 4) == 0.25


# --------------------------------------------------------------------------- teacher on val and test


def test_teacher_note_warns_when_fixed_test_disagrees_beyond_sampling_error():
    class S:
        y_val, y_test, fixed_splits = np.zeros(1000), np.zeros(2000), ["test", "train"]

    notes = teacher_split_note(S, 0.893, 0.832)
    assert "carved from train" in notes[0] and "dataset's own test split" in notes[0]
    assert any(n.startswith("warning:") and "two-proportion" in n for n in notes)
    assert len(teacher_split_note(S, 0.85, 0.84)) == 1  # within sampling error: no warning
    S.fixed_splits = []
    assert len(teacher_split_note(S, 0.893, 0.832)) == 1  # both carved here: nothing to compare
    assert two_proportion_p(50, 100, 50, 100) == 1.0 and two_proportion_p(90, 100, 50, 100) < 1e-6


# --------------------------------------------------------------------------- models as written


class Net(nn.Module):
    def __init__(self, kind: str = "tensor", num_classes: int = 10):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
        self.aux = nn.Linear(4, num_classes)

    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        y = self.fc(f)
        Out = collections.namedtuple("Out", "features logits")
        return {"tensor": lambda: y, "tuple": lambda: (y, f), "list": lambda: [f, y],
                "dict": lambda: {"logits": y, "features": f}, "namedtuple": lambda: Out(f, y),
                "object": lambda: ModelOutput(logits=y, hidden=f),
                "two": lambda: (y, self.aux(f))}[self.kind]()


@dataclasses.dataclass
class ModelOutput:
    logits: torch.Tensor
    hidden: torch.Tensor


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "namedtuple", "object"])
def test_logits_are_found_in_structured_outputs_and_everything_sees_them(kind, tmp_path):
    from pipeline.stages.export import export_onnx, ort_logits
    from pipeline.train import predict

    torch.manual_seed(0)
    ref = Net("tensor")
    m = Net(kind)
    m.load_state_dict(ref.state_dict())
    m = check_accepts_input(m, X, 10, "student", "net.py:Net")
    assert isinstance(m, Net) and type(m).__name__ == "Net"
    assert list(m.state_dict()) == list(ref.state_dict())  # keys stay the user's own
    assert np.allclose(predict(m, X), predict(ref, X))
    export_onnx(m, torch.from_numpy(X[:1]), tmp_path / "m.onnx", 17)
    assert np.allclose(ort_logits(tmp_path / "m.onnx", X), predict(ref, X), atol=1e-5)
    import copy

    assert np.allclose(predict(copy.deepcopy(m), X), predict(ref, X))


def test_ambiguous_output_says_what_the_model_returned():
    with pytest.raises(ConfigError) as e:
        check_accepts_input(Net("two"), X, 10, "student", "net.py:Net")
    assert "tuple with 0: Tensor(2, 10), 1: Tensor(2, 10)" in e.value.message
    assert "ambiguous" in e.value.message and "student.output" in e.value.hint
    m = check_accepts_input(Net("two"), X, 10, "student", "net.py:Net", output=1)
    assert torch.equal(m(torch.from_numpy(X)), m.aux(m.conv(torch.from_numpy(X)).mean((2, 3))))


def test_output_path_that_does_not_exist_is_a_config_error():
    with pytest.raises(ConfigError, match="student.output = 'scores' does not name"):
        check_accepts_input(Net("dict"), X, 10, "student", "n", output="scores")
    with pytest.raises(ConfigError, match="does not name"):
        check_accepts_input(Net("tuple"), X, 10, "student", "n", output=5)
    with pytest.raises(ConfigError, match="does not name"):
        check_accepts_input(Net("dict"), X, 10, "student", "n", output="logits.x")


def test_selected_output_survives_save_and_load(tmp_path):
    from pipeline.stages.models import load_model, save_model

    m = check_accepts_input(Net("dict"), X, 10, "student", "n")
    folder = tmp_path / "s"
    folder.mkdir()
    import json

    (tmp_path / "netmod.py").write_text(textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        from test_model_inputs import Net
        def build(in_channels=1, num_classes=10):
            return Net("dict", num_classes)
    ''' % str(Path(__file__).parent)))
    save_model(m, folder, f"{tmp_path / 'netmod.py'}:build", {}, 1, 10)
    assert json.loads((folder / "model.json").read_text())["output"] == ["logits"]
    again = load_model(folder)
    assert torch.allclose(again(torch.from_numpy(X)), m(torch.from_numpy(X)))


def test_batchnorm1d_head_never_sees_a_one_sample_batch():
    from pipeline.train import batches, fit

    sizes = [len(b) for b in batches(9, 4, True, torch.Generator().manual_seed(0))]
    assert sizes == [4, 4]  # the 1-sample tail is dropped in training
    assert [len(b) for b in batches(9, 4, False, None)] == [4, 4, 1]  # evaluation sees every sample
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    x = np.random.default_rng(0).standard_normal((9, 1, 16, 16)).astype(np.float32)
    y = np.array([0, 1] * 4 + [0])
    hist = fit(model, x, y, x, y, epochs=2, lr=0.01, batch_size=4, momentum=0.9, weight_decay=0, seed=0)
    assert len(hist.epochs) == 2
    with pytest.raises(ConfigError, match="BatchNorm"):
        fit(model, x, y, x, y, epochs=1, lr=0.01, batch_size=1, momentum=0.9, weight_decay=0, seed=0)


def test_user_file_that_exits_or_parses_argv_at_import(tmp_path, monkeypatch):
    from pipeline.models.spec import build_model

    good = "import torch.nn as nn\ndef build(in_channels=1, num_classes=10):\n    return nn.Linear(4, num_classes)\n"
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n" + good)
    (tmp_path / "argv.py").write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', "
                                      "type=float, default=0.1)\nARGS = p.parse_args()\n" + good)
    monkeypatch.setattr(sys, "argv", ["pipeline", "run", "--set", "seed=1"])
    with pytest.raises(ConfigError) as e:
        build_model(f"{tmp_path / 'exits.py'}:build", {}, 1, 10)
    assert "exits.py called sys.exit(3)" in e.value.message and e.value.exit_code == 2
    m = build_model(f"{tmp_path / 'argv.py'}:build", {}, 1, 10)  # argparse saw only [file]
    assert isinstance(m, nn.Linear) and sys.argv == ["pipeline", "run", "--set", "seed=1"]
    (tmp_path / "asks.py").write_text("name = input('dataset? ')\n" + good)
    with pytest.raises(ConfigError, match="asks.py failed: EOFError"):  # never waits for a keyboard
        build_model(f"{tmp_path / 'asks.py'}:build", {}, 1, 10)


class Unexportable(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Sequential(nn.ReLU(), _Cummax())
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.head(self.conv(x)).mean((2, 3)))


class _Cummax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, -1)[0]


def test_student_onnx_cannot_export_is_named_with_op_and_module():
    from pipeline.models.onnx_check import check_exportable

    with pytest.raises(ConfigError) as e:
        check_exportable(Unexportable(), torch.from_numpy(X[:1]), 17, "student", "m.py:build")
    assert "aten::cummax is not supported, called in head.1 (_Cummax)" in e.value.message
    check_exportable(_src(), torch.from_numpy(X[:1]), 17, "student", "x")  # an exportable model passes


# --------------------------------------------------------------------------- CLI: exit codes, no traceback


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model_inputs")
    (d / "twohead.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class M(nn.Module):
            def __init__(self, in_channels=1, num_classes=10):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, 8, 3)
                self.a, self.b = nn.Linear(8, num_classes), nn.Linear(8, num_classes)
            def forward(self, x):
                f = self.conv(x).mean((2, 3))
                return self.a(f), self.b(f)
    """))
    (d / "exits.py").write_text("import sys\nsys.exit('usage: train.py --data DIR')\n")
    (d / "unexportable.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Cm(nn.Module):
            def forward(self, x):
                return torch.cummax(x, -1)[0]
        class M(nn.Module):
            def __init__(self, in_channels=1, num_classes=10):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, 8, 3)
                self.odd = Cm()
                self.fc = nn.Linear(8, num_classes)
            def forward(self, x):
                return self.fc(self.odd(self.conv(x)).mean((2, 3)))
    """))
    torch.save(_old_cifar_checkpoint(resnet8(in_channels=1, num_classes=10, width=8)), d / "old_cifar.pt")
    return d


TINY = ["data.limit=60", "teacher.train.epochs=1", "distill.epochs=1", "benchmark.enabled=false",
        "calibration.samples=16"]


def _cli(out: Path, *sets: str) -> list[str]:
    args = ["run", "--target", "onnxruntime", "--out", str(out), *fast_args(TINY)]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("case", ["ambiguous", "exits", "unexportable", "seed", "mismatch"])
def test_cli_refuses_with_exit_2_and_no_traceback(tmp_path, user_files, case):
    d = user_files
    sets = {
        "ambiguous": [f"student.model={d / 'twohead.py'}:M"],
        "exits": [f"student.model={d / 'exits.py'}:M"],
        "unexportable": [f"student.model={d / 'unexportable.py'}:M"],
        "seed": ["seed=-1"],
        "mismatch": [f"teacher.checkpoint={d / 'old_cifar.pt'}", "teacher.kwargs={width: 16}"],
    }[case]
    text = {"ambiguous": "ambiguous", "exits": "called sys.exit('usage: train.py --data DIR')",
            "unexportable": "aten::cummax is not supported, called in odd (Cm)",
            "seed": "seed = -1: Input should be greater than or equal to 0 (allowed: 0..4294966295)",
            "mismatch": "probably width=8"}[case]
    p = run_cli(*_cli(tmp_path / "run", *sets), timeout=600)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert text in " ".join(p.stderr.split()), p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_cli_old_cifar_checkpoint_and_two_head_student_run(tmp_path, user_files):
    d = user_files
    # old_cifar.pt holds random weights (a chance-level teacher): the default chance gate is lowered here.
    p = run_cli(*_cli(tmp_path / "run", f"teacher.checkpoint={d / 'old_cifar.pt'}", "teacher.kwargs={width: 8}",
                      f"student.model={d / 'twohead.py'}:M", "student.output=1", "teacher.min_accuracy=0"),
                timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    import json

    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("teacher loaded from" in n for n in run["notes"])
    assert any(n.startswith("teacher accuracy:") and "carved from train" in n for n in run["notes"])


def test_internal_error_exits_4_with_a_log_and_debug_shows_the_traceback(tmp_path):
    import subprocess

    from conftest import cli_env

    # A recipe whose teacher builder raises an unexpected error *inside our code*: simulated by a
    # sitecustomize that breaks pipeline.train.predict (a bug, not bad input).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import pipeline.recipe as r
        def boom(*a, **k):
            raise KeyError('an internal bug')
        r.load_recipe = boom
    """))
    env = cli_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    args = ["run", "--target", "onnxruntime", "--out", str(tmp_path / "run")]
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr and "internal error: KeyError" in p.stderr
    assert "rerun with --debug for the traceback" in p.stderr
    log = Path(p.stderr.split("full log: ")[1].split(";")[0].strip())
    assert log.is_file() and "Traceback" in log.read_text() and "an internal bug" in log.read_text()
    assert not (tmp_path / "run").exists()  # an error before any work creates no run folder
    p = subprocess.run([sys.executable, "-m", "pipeline", *args, "--debug"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr
    for sub in (["targets", "--debug"], ["report", str(tmp_path / "nope"), "--debug"]):
        p = run_cli(*sub, timeout=300)
        assert "unrecognized arguments" not in p.stderr, p.stderr


# --------------------------------------------------------------------------- integer bounds of the recipe


def _int_fields(model=None, prefix=""):
    """(dotted path, FieldInfo) of every integer field of the recipe, nested sections included."""
    import typing

    from pydantic import BaseModel

    from pipeline.recipe import Recipe

    model = model or Recipe
    for name, info in model.model_fields.items():
        ann = info.annotation
        if typing.get_origin(ann) in (list, dict):
            continue  # lists of loss terms are validated per term
        args = typing.get_args(ann) or (ann,)
        subs = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if subs:
            yield from _int_fields(subs[0], f"{prefix}{name}.")
        elif int in args and str not in args:
            yield f"{prefix}{name}", info


def test_every_integer_field_is_bounded_and_names_its_range():
    import annotated_types as at

    from pipeline.recipe import load_recipe

    fields = dict(_int_fields())
    assert {"seed", "calibration.seed", "distill.batch_size", "data.limit", "prune.round_to"} <= set(fields)
    for path, info in fields.items():
        lo = next((m.ge for m in info.metadata if isinstance(m, at.Ge)), None)
        hi = next((m.le for m in info.metadata if isinstance(m, at.Le)), None)
        assert lo is not None and hi is not None, f"{path} has no bounds"
        load_recipe(None, [f"{path}={lo}"])
        load_recipe(None, [f"{path}={hi}"])
        for bad in (lo - 1, hi + 1):
            with pytest.raises(ConfigError) as e:
                load_recipe(None, [f"{path}={bad}"])
            assert f"{path} = {bad}" in e.value.message and f"(allowed: {lo}..{hi})" in e.value.message


def test_largest_seed_is_accepted_by_the_splits():
    from pipeline.data.datasets import split_indices
    from pipeline.recipe import SEED_MAX

    labels = np.repeat(np.arange(3), 20)
    s = split_indices(labels, 0.15, 0.2, SEED_MAX)  # scikit-learn gets SEED_MAX and SEED_MAX + 1
    assert sum(len(v) for v in s.values()) == len(labels)


def test_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    src = _src()
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    assert _same(load_into(_src(2), tmp_path / "m.safetensors"), src)
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged safetensors"):
        load_into(_src(2), tmp_path / "bad.safetensors")


@pytest.mark.parametrize("numpy_module", ["numpy._core", "numpy.core"])
def test_checkpoint_with_numpy_scalars_and_args_loads_without_pickle_opt_in(tmp_path, numpy_module):
    import argparse

    src = _src()
    torch.save({"state_dict": src.state_dict(), "best_prec1": np.float64(91.7), "curve": np.arange(3.0),
                "args": argparse.Namespace(lr=0.1, arch="resnet8")}, tmp_path / "ck.pt",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "ck.pt").read_bytes()
    if numpy_module == "numpy.core":  # what a file written under numpy < 2 names
        assert b"numpy._core.multiarray" in data
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "ck.pt").write_bytes(data)
    assert _same(load_into(_src(2), tmp_path / "ck.pt"), src)


class AuxInTraining(nn.Module):
    """Like torchvision's Inception/GoogLeNet: (logits, aux) in training mode, logits alone in eval mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc, self.aux = nn.Linear(4, 10), nn.Linear(4, 3)

    def forward(self, x):
        f = self.bn(self.conv(x)).mean((2, 3))
        return (self.fc(f), self.aux(f)) if self.training else self.fc(f)


def test_model_with_aux_logits_only_in_training_mode():
    from pipeline.train import fit

    m = AuxInTraining()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m = check_accepts_input(m, X, 10, "teacher", "inception-like")
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the probe left no trace
    m.train()
    assert m(torch.from_numpy(X)).shape == (4, 10)
    y = np.array([0, 1, 2, 3])
    fit(m, X, y, X, y, epochs=1, lr=0.01, batch_size=2, momentum=0.9, weight_decay=0, seed=0)


class TrainingConfig:  # a class of "the training code", saved beside the weights
    def __init__(self):
        self.lr = 0.1


def test_lightning_like_checkpoint_loads_the_weights_without_running_the_objects(tmp_path):
    import os

    src = _src()
    marker = tmp_path / "RAN"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}, "epoch": 3,
                "hyper_parameters": {"cfg": TrainingConfig()}, "callbacks": Evil()}, tmp_path / "pl.ckpt")
    notes: list[str] = []
    assert _same(load_into(_src(2), tmp_path / "pl.ckpt", notes=notes), src)
    assert not marker.exists()
    assert "nothing in it was run" in notes[0] and "TrainingConfig" in notes[0]


def test_selected_output_exports_with_torch_export():
    """The LiteRT backend converts the torch model through torch.export: the selection must trace."""
    m = check_accepts_input(Net("dict"), X, 10, "student", "n").eval()
    x1 = torch.from_numpy(X[:1])
    exported = torch.export.export(m, (x1,)).module()
    assert torch.allclose(exported(x1), m(x1))


def test_internal_error_during_a_run_logs_into_the_run_folder(tmp_path, monkeypatch, capsys):
    import pipeline.orchestrate as orch
    from pipeline.cli import main

    def broken(*a, **k):
        raise ZeroDivisionError("a bug inside a stage")

    monkeypatch.setattr(orch, "run_data", broken)
    out = tmp_path / "run"
    rc = main(["run", "--target", "onnxruntime", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 4 and "Traceback" not in err and "internal error: ZeroDivisionError: a bug inside a stage" in err
    logs = list((out / "logs").glob("error-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text() and str(logs[0]) in " ".join(err.split())
    with pytest.raises(ZeroDivisionError):  # --debug: the real exception, with its traceback
        main(["run", "--target", "onnxruntime", "--out", str(out), "--debug"])


def test_checkpoint_of_another_architecture_is_named_as_such(tmp_path):
    from pipeline.models.zoo import small_cnn

    torch.save(small_cnn(in_channels=1, num_classes=10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as e:
        load_into(resnet8(in_channels=1, num_classes=10, width=32), tmp_path / "other.pt")
    assert "unexpected in checkpoint: features (18 tensors in 6 module(s)" in e.value.message
    assert "probably saved from another architecture" in e.value.hint
