"""Structured (torch-pruning) and unstructured pruning with KD recovery: pipeline/pruning.py and the prune stage.

Fast: 16x16 digits with 300 training images, untrained or briefly trained models, 0-1 recovery epochs,
tiny latency measurements (their numbers are only checked to exist and be labelled measured).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError, PipelineError
from pipeline.models.measure import count_macs, count_params
from pipeline.models.spec import build_model
from pipeline.pruning import prune_student, split_epochs
from pipeline.recipe import load_recipe
from pipeline.runner import Runner, StageContext, StageResult
from pipeline.stages.data import read_splits, run_data
from pipeline.stages.export import export_onnx, ort_logits
from pipeline.stages.models import load_model, save_model
from pipeline.train import predict
from tests.conftest import fast_args, read_run, run_cli

BASE_SETS = ["data.input_size=16", "data.limit=300", "prune.enabled=true", "prune.recovery.epochs=0",
             "benchmark.repeats=1", "benchmark.warmup=1", "benchmark.min_iters=3", "benchmark.min_time_s=0.001"]

# A CIFAR ResNet with option-A shortcuts: the shortcut pads the channels with F.pad (no 1x1 conv).
OPTION_A = '''
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        sc = x
        if self.stride != 1 or self.pad:
            sc = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


class OptionA(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.layer3 = Block(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn(self.stem(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def option_a(in_channels=1, num_classes=10):
    return OptionA(in_channels, num_classes)
'''


def _result(name: str, folder: Path) -> StageResult:
    return StageResult(name=name, key=name, dir=folder, meta={"metrics": {}, "outputs_sha256": name}, cached=False,
                       seconds=0.0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Data (16x16 digits), a small teacher and a briefly trained small_cnn student, as stage results."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("prune_inputs")
    recipe = load_recipe(None, sets=BASE_SETS)
    data = run_data(Runner(root / "run"), recipe)
    splits = read_splits(data)
    c, n = splits.input_shape[0], splits.num_classes
    from pipeline.train import fit

    torch.manual_seed(0)
    teacher = build_model("builtin:resnet8", {"width": 8}, c, n)
    fit(teacher, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=1, lr=0.05, batch_size=64,
        momentum=0.9, weight_decay=5e-4, seed=0)
    (root / "teacher").mkdir()
    save_model(teacher.eval(), root / "teacher", "builtin:resnet8", {"width": 8}, c, n)
    student = build_model("builtin:small_cnn", {}, c, n)
    fit(student, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=2, lr=0.05, batch_size=64,
        momentum=0.9, weight_decay=5e-4, seed=0)
    (root / "student").mkdir()
    save_model(student.eval(), root / "student", "builtin:small_cnn", {}, c, n)
    return {"root": root, "data": data, "teacher": _result("teacher", root / "teacher"),
            "student": _result("student", root / "student"), "splits": splits}


def _student(inputs, tmp_path: Path, spec: str, kwargs: dict | None = None) -> StageResult:
    s = inputs["splits"]
    folder = tmp_path / "student_in"
    folder.mkdir()
    torch.manual_seed(0)
    save_model(build_model(spec, kwargs or {}, s.input_shape[0], s.num_classes).eval(), folder, spec, kwargs or {},
               s.input_shape[0], s.num_classes)
    return _result("student", folder)


def _prune(inputs, tmp_path: Path, sets: list[str], student: StageResult | None = None) -> StageContext:
    torch.set_num_threads(1)
    recipe = load_recipe(None, sets=[*BASE_SETS, *sets])
    out = tmp_path / "prune_out"
    out.mkdir()
    ctx = StageContext(dir=out)
    prune_student(ctx, recipe, inputs["data"], inputs["teacher"], student or inputs["student"])
    return ctx


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# --------------------------------------------------------------------------------------------- structured


def test_structured_half_shrinks_macs_reloads_and_runs_in_onnxruntime(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.recovery.epochs=1"])
    m = ctx.metrics
    assert m["enabled"] is True and m["method"] == "structured"
    assert m["macs_ratio"] <= 0.6
    assert m["macs"] < m["macs_before"] and m["params"] < m["params_before"]

    model = load_model(ctx.dir)  # torch.load(weights_only=True) of a plain state dict + recorded widths
    s = inputs["splits"]
    assert count_params(model) == m["params"]
    assert count_macs(model, (1, *s.input_shape)) == m["macs"]
    assert json.loads((ctx.dir / "model.json").read_text())["kind"] == "pruned"
    onnx = tmp_path / "pruned.onnx"
    export_onnx(model, torch.from_numpy(s.x_test[:1]), onnx, 17)
    ref, got = predict(model, s.x_test), ort_logits(onnx, s.x_test)
    assert np.abs(ref - got).max() < 1e-4
    assert (ref.argmax(1) == got.argmax(1)).all()
    acc = float((ref.argmax(1) == s.y_test).mean())
    assert acc == pytest.approx(m["test_accuracy"])

    # classifier keeps its classes; everything measured says so
    assert model.fc.out_features == s.num_classes
    assert m["excluded_layers"]["classifier"] == "fc"
    for batch in ("batch1", "batch32"):
        for when in ("before", "after"):
            lat = m["latency_ms"][when][batch]
            assert lat["source"] == "measured" and lat["runtime"] == "onnxruntime" and lat["p50_ms"] > 0
    assert set(m["latency_ratio"]) == {"batch1", "batch32"}
    assert len(m["recovery"]["rounds"]) == 1 and m["recovery"]["rounds"][0]["epochs"] == 1
    assert m["onnx_check"]["max_abs_diff"] < 1e-3
    assert {"test_accuracy_before", "test_accuracy_no_recovery", "val_accuracy_before", "val_accuracy"} <= set(m)


def test_round_to_eight_gives_multiples_of_eight(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.4", "prune.round_to=8", "benchmark.enabled=false"])
    model = load_model(ctx.dir)
    outs = {n: c.out_channels for n, c in _convs(model).items()}
    assert all(v % 8 == 0 for v in outs.values()), outs
    assert outs != {"features.0.0": 32, "features.1.0": 64, "features.2.0": 72}  # something was pruned
    assert ctx.metrics["latency_ms"] is None


def test_round_to_one_keeps_exact_ratio(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.25", "prune.round_to=null", "benchmark.enabled=false"])
    outs = {n: c.out_channels for n, c in _convs(load_model(ctx.dir)).items()}
    assert outs == {"features.0.0": 24, "features.1.0": 48, "features.2.0": 54}


def test_target_macs_ratio_is_reached(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.target_macs_ratio=0.4", "benchmark.enabled=false"])
    m = ctx.metrics
    assert m["macs_ratio"] <= 0.4
    assert m["macs_ratio"] > 0.2  # stopped near the target, not at the maximum
    assert 0 < m["pruner_steps"] < 100


def test_excluded_and_classifier_layers_keep_their_output_channels(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.exclude=[features.1.0]", "benchmark.enabled=false"])
    model = load_model(ctx.dir)
    convs = _convs(model)
    assert convs["features.1.0"].out_channels == 64  # excluded: untouched output channels
    assert convs["features.1.0"].in_channels == 16  # its input follows the pruned layer before it
    assert convs["features.0.0"].out_channels == 16 and convs["features.2.0"].out_channels == 32
    assert model.fc.out_features == inputs["splits"].num_classes
    assert ctx.metrics["excluded_layers"]["user"] == ["features.1.0"]
    assert ctx.metrics["channels"]["features.1.0"] == {"before": [32, 64], "after": [16, 64]}


def test_unknown_exclude_is_a_config_error(inputs, tmp_path):
    with pytest.raises(ConfigError, match=r"features\.9"):
        _prune(inputs, tmp_path, ["prune.exclude=[features.9]"])
    assert not (tmp_path / "prune_out" / "model.pt").exists()


def test_global_pruning_and_steps(inputs, tmp_path):
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.global_pruning=true", "prune.steps=2",
                                    "prune.recovery.epochs=2", "benchmark.enabled=false"])
    m = ctx.metrics
    assert m["macs_ratio"] < 1.0
    assert [r["epochs"] for r in m["recovery"]["rounds"]] == [1, 1]
    assert count_params(load_model(ctx.dir)) == m["params"]


@pytest.mark.parametrize("spec,kwargs", [("builtin:resnet8", {"width": 16}), ("builtin:mobilenet_tiny", {})])
def test_zoo_models_with_shortcuts_and_depthwise_convs(inputs, tmp_path, spec, kwargs):
    student = _student(inputs, tmp_path, spec, kwargs)
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "benchmark.enabled=false"], student)
    assert ctx.metrics["macs_ratio"] <= 0.6
    assert ctx.metrics["excluded_layers"]["auto"] == []
    model = load_model(ctx.dir)
    s = inputs["splits"]
    onnx = tmp_path / "m.onnx"
    export_onnx(model, torch.from_numpy(s.x_test[:1]), onnx, 17)
    assert np.abs(predict(model, s.x_test[:64]) - ort_logits(onnx, s.x_test[:64])).max() < 1e-4


def test_split_epochs():
    assert split_epochs(10, 1) == [10]
    assert split_epochs(10, 3) == [3, 3, 4]
    assert split_epochs(1, 2) == [0, 1]
    assert sum(split_epochs(7, 4)) == 7


def test_option_a_shortcuts_are_found_and_excluded(inputs, tmp_path):
    path = tmp_path / "opta.py"
    path.write_text(OPTION_A)
    student = _student(inputs, tmp_path, f"{path}:option_a")
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.round_to=null", "benchmark.enabled=false"], student)
    auto = ctx.metrics["excluded_layers"]["auto"]
    assert [g["root"] for g in auto] == ["stem"]
    assert {"stem", "layer1.conv2", "layer2.conv2", "layer3.conv2"} <= set(auto[0]["layers"])
    assert "F.pad" in auto[0]["through"]
    note = next(n for n in ctx.notes if "automatically" in n)
    assert "stem" in note and "layer3.conv2" in note
    model = load_model(ctx.dir)
    # the padded chain kept its channels; the blocks' inner convs were pruned
    assert model.layer3.conv2.out_channels == 64 and model.fc.in_features == 64
    assert model.layer2.conv1.out_channels == 16
    s = inputs["splits"]
    onnx = tmp_path / "a.onnx"
    export_onnx(model, torch.from_numpy(s.x_test[:1]), onnx, 17)
    assert np.abs(predict(model, s.x_test[:64]) - ort_logits(onnx, s.x_test[:64])).max() < 1e-4


def test_option_a_with_nothing_else_to_prune_stops_naming_the_layers(inputs, tmp_path):
    path = tmp_path / "opta.py"
    path.write_text(OPTION_A)
    student = _student(inputs, tmp_path, f"{path}:option_a")
    with pytest.raises(PipelineError) as err:
        _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.exclude=[layer1.conv1, layer2.conv1, layer3.conv1]"],
               student)
    msg = str(err.value)
    assert "stem" in msg and "layer2.conv2" in msg and "F.pad" in msg
    assert not any((tmp_path / "prune_out").iterdir())  # no artifact written


def test_raw_torch_pruning_breaks_option_a(tmp_path):
    """The failure the pipeline guards against is real (docs/TOOLCHAIN.md): torch-pruning alone breaks the forward."""
    import importlib.util

    import torch_pruning as tp

    path = tmp_path / "opta.py"
    path.write_text(OPTION_A)
    spec = importlib.util.spec_from_file_location("opta_raw", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.option_a().eval()
    ex = torch.randn(2, 1, 16, 16)
    tp.pruner.MetaPruner(model, ex, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    with pytest.raises(RuntimeError):
        model(ex)


def test_ratio_zero_is_a_config_error(inputs, tmp_path):
    with pytest.raises(ConfigError, match="removes nothing"):
        _prune(inputs, tmp_path, ["prune.ratio=0"])


def test_round_to_that_would_empty_every_layer_is_an_error(inputs, tmp_path):
    # 0.9 of 32/64/72 channels leaves 3/6/7: rounded down to 16 that is 0, which torch-pruning skips silently
    with pytest.raises(PipelineError, match="removed no channel.*round_to=16"):
        _prune(inputs, tmp_path, ["prune.ratio=0.9", "prune.round_to=16", "benchmark.enabled=false"])
    assert not (tmp_path / "prune_out" / "model.pt").exists()


# --------------------------------------------------------------------------------------------- INT8 check


def _assert_measured(lat: dict, precision: str) -> None:
    assert lat["source"] == "measured" and lat["runtime"] == "onnxruntime" and lat["runtime_version"]
    assert lat["batch"] == 1 and lat["p50_ms"] > 0 and lat["precision"].startswith(precision)


def test_int8_check_names_modules_and_offers_a_measured_round_to_fix(inputs, tmp_path):
    # threshold forced down: the search runs whatever this host's timings are (only structure is checked)
    ctx = _prune(inputs, tmp_path, ["prune.ratio=0.5", "prune.round_to=8", "prune.int8_threshold=0.001"])
    m = ctx.metrics
    check = m["int8_check"]
    assert check["above_threshold"] is True and check["threshold"] == 0.001
    assert m["int8_latency_ratio"] == check["current"]["int8_ratio"] > 0
    assert check["current"]["macs_ratio"] == m["macs_ratio"] and check["current"]["round_to"] == 8
    for when in ("before", "after"):
        _assert_measured(check["latency_ms"][when]["fp32"], "fp32")
        _assert_measured(check["latency_ms"][when]["int8"], "int8")
    # per-module comparison from the two INT8 profiles, mapped to the student's module paths
    convs = set(_convs(load_model(inputs["student"].dir)))
    assert {r["module"] for r in check["modules"]} & convs
    assert [r["kept_ms"] for r in check["modules"]] == sorted((r["kept_ms"] for r in check["modules"]), reverse=True)
    assert all(not r["overhead"] and r["kept_ms"] > 0 for r in check["held_by"])
    # the fix search: every other round_to tried, each measured or skipped with a reason, nothing applied
    fix = m["int8_fix"]
    assert fix["applied"] is False and fix["source"] == "measured"
    assert [c["round_to"] for c in fix["candidates"]] == [4, 16, 32]
    measured = [c for c in fix["candidates"] if "skipped" not in c]
    assert measured, fix["candidates"]
    for c in fix["candidates"]:
        if "skipped" in c:
            assert c["skipped"] and "int8_ratio" not in c and c["chosen"] is False
        else:
            assert {"macs_ratio", "fp32_ratio", "int8_ratio", "fp32_ms", "int8_ms"} <= set(c)
            assert c["macs_ratio"] <= m["macs_ratio"] + 0.2
    best = min(measured, key=lambda c: c["int8_ratio"])
    note = next(n for n in ctx.notes if n.startswith("prune: INT8 latency"))
    assert "prune.int8_check=false" in note
    if best["int8_ratio"] < fix["current"]["int8_ratio"]:
        assert fix["chosen"] is best and best["chosen"] is True
        assert f"measured fix: prune.round_to={best['round_to']}" in note
        assert f"--set prune.round_to={best['round_to']}" in note
    else:
        assert fix["chosen"] is None and "no round_to tried" in note
    # the saved artifact is the recipe's round_to: the fix is offered, never applied
    assert all(c % 8 == 0 for name, (cin, c) in _channels_of(ctx.dir).items() if name != "fc")
    # run.json `prune` and the report tables built from it
    from pipeline.prune_int8 import summary_record
    from pipeline.report.render import write_report

    rec = summary_record(m)
    assert rec["int8_latency_ratio"] == m["int8_latency_ratio"] and rec["int8_fix"] == fix
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "schema_version": "1", "name": "p", "created": "2026-01-01T00:00:00+0000", "seconds": 1, "stages": [],
        "artifacts": [], "targets": {}, "skipped_targets": {}, "failed_targets": {}, "notes": ctx.notes,
        "prune": rec}, default=str))
    rep = write_report(run, tmp_path / "rep")
    md, page = rep.markdown.read_text(), rep.html.read_text()
    assert "## Pruning: INT8 latency vs MACs" in md and "## Pruning: what holds the INT8 ratio" in md
    assert f"| 8 | {m['macs_ratio']:.3f}x |" in md
    for c in fix["candidates"]:
        assert f"| {c['round_to']} |" in md
    assert ("offered fix (not applied)" in md) == (fix["chosen"] is not None)
    assert "<h2>Pruning: INT8 latency vs MACs</h2>" in page


def _channels_of(folder: Path) -> dict[str, list[int]]:
    from pipeline.pruning import layer_channels

    return layer_channels(load_model(folder))


def test_int8_check_below_threshold_and_off_offer_nothing(inputs, tmp_path):
    (tmp_path / "a").mkdir()
    ctx = _prune(inputs, tmp_path / "a", ["prune.ratio=0.5", "prune.int8_threshold=10"])
    m = ctx.metrics
    assert m["int8_check"]["above_threshold"] is False and m["int8_latency_ratio"] > 0
    assert m["int8_fix"] is None and "modules" not in m["int8_check"]
    assert any(n.startswith("prune: INT8 latency") and "no fix searched" in n for n in ctx.notes)

    (tmp_path / "b").mkdir()
    ctx = _prune(inputs, tmp_path / "b", ["prune.ratio=0.5", "prune.int8_check=false", "prune.int8_threshold=0.001"])
    m = ctx.metrics
    assert m["latency_ratio"] is not None  # FP32 still measured
    assert m["int8_latency_ratio"] is None and m["int8_fix"] is None and "int8_check" not in m
    assert not any("INT8" in n for n in ctx.notes)


def test_choose_fix_picks_the_lowest_measured_int8_ratio():
    from pipeline.prune_int8 import choose_fix

    current = {"round_to": 4, "int8_ratio": 1.01}
    cands = [{"round_to": 8, "int8_ratio": 0.93}, {"round_to": 16, "int8_ratio": 0.72},
             {"round_to": 32, "skipped": "pruning removed every channel"}]
    assert choose_fix(current, cands) is cands[1]
    assert choose_fix({"int8_ratio": 0.7}, cands) is None  # nothing beats the current round_to
    assert choose_fix(current, [cands[2]]) is None


def test_compare_modules_ranks_what_holds_the_int8_ratio():
    from pipeline.prune_int8 import compare_modules, holders

    def row(label, ms, kind="compute", qdq=0.0):
        return {"label": label, "int8_ms": ms, "ops": [{"kind": kind}], "overhead_ms": {"int8": qdq}}

    unpruned = [row("layer1.0.conv1", 0.023), row("layer3.0.conv1", 0.1, qdq=0.01),
                row("unmapped quantize: QuantizeLinear", 0.004, "quantize")]
    pruned = [row("layer1.0.conv1", 0.033), row("layer3.0.conv1", 0.04, qdq=0.01),
              row("unmapped quantize: QuantizeLinear", 0.004, "quantize")]
    rows = compare_modules(unpruned, pruned, threshold=0.75)
    assert rows[0]["module"] == "layer1.0.conv1" and rows[0]["ratio"] == pytest.approx(1.435, abs=1e-3)
    mods, fixed = holders(rows)
    assert [r["module"] for r in mods] == ["layer1.0.conv1"]  # layer3 shrank below 0.75x: not a holder
    assert [r["module"] for r in fixed] == ["unmapped quantize: QuantizeLinear"]
    assert next(r for r in rows if r["module"] == "layer3.0.conv1")["qdq_ms"] == {"unpruned": 0.01, "pruned": 0.01}


def _conv_onnx(path: Path, channels: int) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(channels * 64, 10))
    export_onnx(model.eval(), torch.zeros(1, 1, 8, 8), path, 17)
    return path


def test_search_round_to_skips_impossible_and_far_candidates(tmp_path):
    from pipeline.prune_int8 import check_timing, quantize_int8, search_round_to

    recipe = load_recipe(None, sets=["benchmark.repeats=1", "benchmark.warmup=1", "benchmark.min_iters=3",
                                     "benchmark.min_time_s=0.001"])
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    fp32 = {"before": _conv_onnx(tmp_path / "before.onnx", 32), "after": _conv_onnx(tmp_path / "after.onnx", 8)}
    int8 = {k: quantize_int8(p, tmp_path / f"{k}_int8.onnx", calib, recipe.calibration) for k, p in fp32.items()}

    def prune_fn(round_to: int, path: Path) -> float:  # what prune_copy + export do, on hand-built widths
        if round_to == 4:
            raise PipelineError("pruning removed every channel of conv")
        _conv_onnx(path, round_to)
        return round_to / 64

    fix = search_round_to({"round_to": 8, "macs_ratio": 0.25, "int8_ratio": 1.0}, fp32, int8, prune_fn, None, calib,
                          recipe.calibration, calib[:4], 1, check_timing(recipe.benchmark), tmp_path)
    c4, c16, c32 = fix["candidates"]
    assert [c["round_to"] for c in fix["candidates"]] == [4, 16, 32]  # 8 is the current one
    assert "every channel" in c4["skipped"] and "macs_ratio" not in c4
    assert c16["macs_ratio"] == 0.25 and c16["int8_ratio"] > 0 and c16["fp32_ratio"] > 0 and "skipped" not in c16
    assert "misses the recipe's pruned model (0.250x)" in c32["skipped"] and "int8_ratio" not in c32
    assert fix["current"]["int8_ratio"] > 0 and fix["current"]["round_to"] == 8
    assert (fix["chosen"] is c16) == (c16["int8_ratio"] < fix["current"]["int8_ratio"])
    assert fix["applied"] is False


def test_note_line_names_holders_and_the_fix():
    from pipeline.prune_int8 import note_line

    def row(name, u, p, overhead=False):
        return {"module": name, "unpruned_ms": u, "pruned_ms": p, "ratio": p / u, "overhead": overhead}

    check = {"current": {"int8_ratio": 1.008, "macs_ratio": 0.365, "fp32_ratio": 0.7}, "runtime_version": "1.32.0",
             "threads": 1, "threshold": 0.75, "above_threshold": True, "seconds": 8.4,
             "held_by": [row(f"layer1.{i}.conv1", 0.023, 0.033) for i in range(5)],
             "qdq_not_shrinking": [row("(runtime call overhead)", 0.005, 0.005, True)],
             "int8_fix": {"candidates": [{"round_to": 16}], "chosen": {"round_to": 16, "int8_ratio": 0.715,
                                                                      "macs_ratio": 0.523}}}
    note = note_line(check)
    assert note.startswith("prune: INT8 latency 1.01x at 0.36x MACs")
    assert "held by layer1.0.conv1 (0.0230 -> 0.0330 ms, 1.43x), layer1.1.conv1" in note
    assert "and 2 more module(s), (runtime call overhead)" in note
    assert ("measured fix: prune.round_to=16 gives INT8 0.71x at 0.52x MACs (rerun with --set prune.round_to=16)"
            in note)
    assert "8.4 s" in note
    check["int8_fix"] = {"candidates": [{"round_to": 16}], "chosen": None}
    assert "no round_to tried (16) lowers the INT8 ratio" in note_line(check)


def test_prune_stage_cache_key_covers_the_int8_check_code():
    from pipeline.code_closure import code_files
    from pipeline.stages import prune as prune_stage

    files = {Path(f).name for f in code_files([prune_stage.run_prune])}
    assert {"pruning.py", "prune_int8.py", "onnxruntime.py"} <= files


# --------------------------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("global_pruning", [True, False])
def test_unstructured_sparsity_and_note(inputs, tmp_path, global_pruning):
    ctx = _prune(inputs, tmp_path, ["prune.method=unstructured", "prune.ratio=0.6", "prune.recovery.epochs=1",
                                    f"prune.global_pruning={str(global_pruning).lower()}"])
    m = ctx.metrics
    assert m["sparsity_pruned_layers"] == pytest.approx(0.6, abs=0.005)
    layers = m["sparsity_per_layer"]
    assert layers["fc"]["zeros"] == 0  # the classifier is never pruned
    if not global_pruning:
        for name in ("features.0.0", "features.1.0", "features.2.0"):
            assert layers[name]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert m["macs"] == m["macs_before"] and m["params"] == m["params_before"]  # dense shapes unchanged
    assert any("no faster" in n for n in ctx.notes)
    # the zeros survived recovery and saving: reload and count them
    model = load_model(ctx.dir)
    zeros = sum(int((mod.weight == 0).sum()) for n, mod in model.named_modules()
                if isinstance(mod, nn.Conv2d))
    total = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Conv2d))
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    assert not any(k.endswith("_orig") or k.endswith("_mask") for k in model.state_dict())


def test_unstructured_rejects_target_macs(inputs, tmp_path):
    with pytest.raises(ConfigError, match="structured pruning only"):
        _prune(inputs, tmp_path, ["prune.method=unstructured", "prune.target_macs_ratio=0.5"])


# --------------------------------------------------------------------------------------------- end to end


def test_cli_run_with_pruning_records_pruned_model(tmp_path):
    out = tmp_path / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out),
                *fast_args(["prune.enabled=true", "prune.recovery.epochs=2"]))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = read_run(out)
    stage = next(s for s in run["stages"] if s["stage"] == "prune")
    assert not any("passes through" in n for n in stage["notes"])
    meta = json.loads((out / stage["dir"] / "meta.json").read_text())
    pm = meta["metrics"]
    assert pm["enabled"] is True and pm["macs_ratio"] <= 0.6
    distill = next(s for s in run["stages"] if s["stage"] == "distill")
    dm = json.loads((out / distill["dir"] / "meta.json").read_text())["metrics"]
    student = next(a for a in run["artifacts"] if a["name"] == "student")
    assert student["pruned"] is True
    assert student["params"] == pm["params"] < dm["params"]
    assert student["macs"] == pm["macs"] < dm["macs"]
    assert pm["macs_before"] == dm["macs"]
    assert json.loads((out / stage["dir"] / "model.json").read_text())["kind"] == "pruned"
    # the INT8 check (on by default) reaches run.json `prune` and the stage notes
    rec = run["prune"]
    assert rec["macs_ratio"] == pm["macs_ratio"] and rec["int8_latency_ratio"] == pm["int8_latency_ratio"] > 0
    assert rec["int8_check"]["source"] == "measured" and rec["int8_check"]["runtime"] == "onnxruntime"
    assert (rec["int8_fix"] is not None) == rec["int8_check"]["above_threshold"]
    assert any(n.startswith("prune: INT8 latency") for n in stage["notes"])
    assert "## Pruning: INT8 latency vs MACs" in (out / "report.md").read_text()
