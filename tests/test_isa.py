"""Instruction-set classes: detection, the INT8 scheme each class gets, exact reference numerics, emulation.

Tests marked `isa_lane` assert INT8 numerics that depend on the CPU's integer kernels; they state which class
they assert for and hold on every host. `.ci/run` runs them a second time under `qemu-x86_64 -cpu Haswell`
(AVX2 without VNNI), so a VNNI developer machine checks what an AVX2 user computes.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tensorrt_build import export_tiny_cnn, random_images  # noqa: E402

from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.numerics import Numerics, logits, numerics_for  # noqa: E402
from targets.base import CalibrationSpec, get_backend  # noqa: E402
from targets.isa import ISA_CLASSES, classify_isa, host_isa  # noqa: E402
from targets.onnxruntime import quantize_u8s8, scheme_for  # noqa: E402

HOST = host_isa()
QEMU = shutil.which("qemu-x86_64")
CALIB = CalibrationSpec("minmax")


# ------------------------------------------------------------------------------------------- detection

AVX2 = {"AVX": True, "AVX2": True, "FMA3": True}
AVX512_VNNI = {**AVX2, "AVX512F": True, "AVX512VNNI": True}


@pytest.mark.parametrize("feats,proc,want", [
    ({"SSE42": True, "AVX": True}, set(), "x86-64-v2"),
    (AVX2, {"avx2"}, "x86-64-v3"),
    (AVX2, {"avx2", "avx_vnni"}, "avx-vnni"),
    ({**AVX2, "AVX512F": True}, {"avx2", "avx512f"}, "avx512"),
    (AVX512_VNNI, {"avx2", "avx512f", "avx512_vnni"}, "avx512-vnni"),
    (AVX512_VNNI, {"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "amx"),
    # Under qemu-x86_64 -cpu Haswell CPUID says AVX2 while /proc/cpuinfo still lists the real CPU's flags:
    # those are not trusted, so the emulated process is x86-64-v3, not avx-vnni / amx.
    (AVX2, {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}, "x86-64-v3"),
])
def test_classify_x86(feats, proc, want):
    assert classify_isa("x86_64", feats, proc) == want


def test_classify_arm_and_unknown():
    assert classify_isa("aarch64", {"ASIMD": True}, {"asimd"}) == "armv8"
    assert classify_isa("aarch64", {"ASIMD": True, "ASIMDDP": True}, set()) == "armv8.2-dotprod"
    assert classify_isa("aarch64", {}, {"asimd", "asimddp", "i8mm"}) == "armv8.6-i8mm"
    assert classify_isa("riscv64", {}, set()) is None


def test_host_isa_recorded_everywhere():
    from pipeline.provenance import host_class
    from pipeline.runner import environment
    from targets.standalone.bench import environment as bench_env

    assert HOST in ISA_CLASSES
    assert host_class().endswith(f", {HOST})")
    assert environment()["isa"] == HOST and bench_env()["isa"] == HOST


# ------------------------------------------------------------------------------------ profiles, recipe

def test_profiles_name_an_isa_of_their_arch():
    from targets.profiles import load_profiles

    profs = load_profiles()
    for p in profs.values():
        if p.backend == "tensorrt":
            assert p.isa is None, p.name  # GPU integer math, not the CPU's
        else:
            assert ISA_CLASSES[p.isa].arch == p.cpu_arch, p.name
    assert profs["onnxruntime"].isa == profs["x86-cpu"].isa == "x86-64-v3"


def test_profile_isa_validation(tmp_path):
    import yaml

    from targets.profiles import BUILTIN_DIR, load_profile_file

    doc = yaml.safe_load((BUILTIN_DIR / "onnxruntime.yaml").read_text())
    doc["isa"] = "armv8"
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="isa 'armv8' is not an instruction-set class of x86_64"):
        load_profile_file(f)


def test_isa_overrides():
    from targets.profiles import apply_isa_overrides, load_profiles

    profs = load_profiles()
    out = apply_isa_overrides(profs, {"ort": "avx512-vnni", "x86": "host"})
    assert out["onnxruntime"].isa == "avx512-vnni" and out["x86-cpu"].isa == HOST
    assert profs["onnxruntime"].isa == "x86-64-v3"  # the loaded profiles are not changed
    with pytest.raises(ConfigError, match="unknown instruction-set class 'avx9'"):
        apply_isa_overrides(profs, {"x86": "avx9"})
    with pytest.raises(ConfigError, match="accelerator"):
        apply_isa_overrides(profs, {"jetson": "armv8"})
    with pytest.raises(ConfigError, match="is not a aarch64 CPU"):
        apply_isa_overrides(profs, {"rpi": "host"})
    with pytest.raises(ConfigError, match="unknown target"):
        apply_isa_overrides(profs, {"nosuch": "x86-64-v3"})


# ------------------------------------------------------------------------------------------- schemes

def test_onnxruntime_scheme_follows_onnxruntime_guidance():
    for isa in ("x86-64-v2", "x86-64-v3", "avx512"):
        s = scheme_for(isa)
        assert (s.activation, s.reduce_range) == ("u8", True), isa
    for isa in ("avx-vnni", "avx512-vnni", "amx"):
        s = scheme_for(isa)
        assert (s.activation, s.reduce_range) == ("u8", False), isa
    assert scheme_for("armv8.2-dotprod").activation == "s8"
    assert scheme_for(None).reduce_range  # unnamed: exact everywhere
    assert scheme_for("x86-64-v3").to_json()["reduce_range"] is True


def test_openvino_overflow_fix_by_isa():
    pytest.importorskip("nncf")
    from targets.openvino import nncf_calibration_params, overflow_fix_for

    assert overflow_fix_for("x86-64-v3")[0] == "enable" and overflow_fix_for("avx512")[0] == "enable"
    assert overflow_fix_for("avx512-vnni")[0] == "disable" and overflow_fix_for(None)[0] == "enable"
    params, _ = nncf_calibration_params("minmax", 99.99, 2048, "enable")
    assert str(params.overflow_fix.value) == "enable"


# ------------------------------------------------------------------------------------------- numerics

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("isa")
    fp32 = export_tiny_cnn(d / "fp32.onnx")
    cal = random_images(64, seed=1)
    models = {"fp32": fp32}
    for isa in ("x86-64-v3", "avx512-vnni"):
        models[isa] = quantize_u8s8(fp32, d / f"{isa}.onnx", cal, CALIB, scheme=scheme_for(isa))
    from targets.tensorrt_qdq import make_trt_qdq

    models["trt"] = make_trt_qdq(fp32, d / "trt.onnx", cal)
    models["x"] = random_images(200, seed=7)
    return models


NATIVE = Numerics("native", "native", None, HOST)
EXACT = Numerics("exact", "exact", None, HOST)


@pytest.mark.isa_lane
def test_model_for_this_hosts_class_computes_exact_integer_results(tiny):
    """The INT8 model made for this host's class, run with this host's fused integer kernels, gives the exact
    fake-quant numerics. On AVX2 (the qemu lane) this holds only because of reduce_range: switch it off for
    x86-64-v3 in targets/onnxruntime.py scheme_for and this test fails there (max |diff| 0.046 measured)."""
    cls = HOST if HOST in ("x86-64-v3", "avx512-vnni") else ("x86-64-v3" if ISA_CLASSES[HOST].saturates
                                                             else "avx512-vnni")
    x = tiny["x"]
    fused, exact = logits(tiny[cls], x, 1, NATIVE), logits(tiny[cls], x, 1, EXACT)
    assert float(np.abs(fused - exact).max()) < 1e-4, (HOST, cls)
    # 7-bit weights are exact on every x86 class, VNNI or not
    fused, exact = logits(tiny["x86-64-v3"], x, 1, NATIVE), logits(tiny["x86-64-v3"], x, 1, EXACT)
    assert float(np.abs(fused - exact).max()) < 1e-4, HOST


@pytest.mark.isa_lane
def test_full_range_weights_saturate_only_where_the_class_says(tiny):
    """8-bit weights (the VNNI scheme) on this host: exact where the class has VNNI, saturating where not."""
    x = tiny["x"]
    diff = float(np.abs(logits(tiny["avx512-vnni"], x, 1, NATIVE) - logits(tiny["avx512-vnni"], x, 1, EXACT)).max())
    if ISA_CLASSES[HOST].saturates:
        assert diff > 1e-3, (HOST, diff)  # measured 0.046 under qemu -cpu Haswell
    else:
        assert diff < 1e-4, (HOST, diff)


@pytest.mark.isa_lane
def test_tensorrt_reference_is_the_qdq_math_on_any_host(tiny):
    """The exact reference (ONNX Runtime, graph optimizations off) equals ONNX's own reference evaluator (pure
    NumPy QuantizeLinear/DequantizeLinear/Conv) on this host, AVX2 or VNNI alike; the fused kernels may not."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.version_converter import convert_version

    x = tiny["x"][:32]
    # onnx's reference ops start at DequantizeLinear-19 (same per-axis int8 semantics as the model's opset 17)
    model = convert_version(onnx.load(str(tiny["trt"])), 21)
    want = ReferenceEvaluator(model).run(None, {"input": x})[0]
    n = numerics_for(SimpleNamespace(isa=None), get_backend("tensorrt"))
    assert n.mode == "exact" and "exact fake-quant" in n.label
    got = logits(tiny["trt"], x, 1, n)
    assert float(np.abs(got - want).max()) < 1e-4
    fp32 = logits(tiny["fp32"], tiny["x"], 1, NATIVE)
    agree = float((logits(tiny["trt"], tiny["x"], 1, n).argmax(1) == fp32.argmax(1)).mean())
    assert agree >= 0.95, agree  # 0.985 measured, on AVX2 and VNNI hosts; the fused kernels give 0.82 on AVX2


def test_numerics_choice():
    ort, ov = get_backend("onnxruntime"), get_backend("openvino")
    same = numerics_for(SimpleNamespace(isa=HOST), ort)
    assert same.mode == "native" and HOST in same.label
    other = next(n for n, c in ISA_CLASSES.items() if c.arch == ISA_CLASSES[HOST].arch and n != HOST)
    n = numerics_for(SimpleNamespace(isa=other), ort)
    assert n.target_isa == other and n.host_isa == HOST
    if ISA_CLASSES[HOST].saturates and not ISA_CLASSES[other].saturates:
        assert n.mode == "exact"  # a VNNI target's kernels compute the exact numbers this host cannot
    else:
        assert n.mode == "native" and f"host-measured on {HOST}" in n.label
    assert numerics_for(SimpleNamespace(isa="armv8"), ort).mode == "native"  # no ARM emulation on x86
    e = numerics_for(SimpleNamespace(isa="avx512-vnni"), ov, emulate=True)
    if HOST != "avx512-vnni":
        assert e.mode != "emulated" and ("cannot be emulated" in e.label or e.mode == "exact")


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian package qemu-user) is not installed")
@pytest.mark.skipif(HOST == "x86-64-v3", reason="this host is x86-64-v3 itself: nothing to emulate")
def test_emulation_runs_the_targets_kernels(tiny):
    n = numerics_for(SimpleNamespace(isa="x86-64-v3"), get_backend("onnxruntime"), emulate=True)
    assert n.mode == "emulated" and n.qemu_cpu == "Haswell" and "emulated x86-64-v3" in n.label
    x = tiny["x"]
    emu = logits(tiny["avx512-vnni"], x, 1, n)  # 8-bit weights under AVX2 kernels: saturation shows
    exact = logits(tiny["avx512-vnni"], x, 1, EXACT)
    assert float(np.abs(emu - exact).max()) > 1e-3
    emu_rr = logits(tiny["x86-64-v3"], x, 1, n)  # the x86-64-v3 scheme is exact under its own kernels
    assert float(np.abs(emu_rr - logits(tiny["x86-64-v3"], x, 1, EXACT)).max()) < 1e-4


# -------------------------------------------------------------------------------------- compare, fallback

def _report(isa: str | None) -> dict:
    from pipeline.measure.compare import load_report

    doc = load_report(str(Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / "x86-host.json"))
    doc = json.loads(json.dumps(doc))
    if isa:
        doc["environment"]["isa"] = isa
    return doc


def test_compare_refuses_two_isa_classes():
    from pipeline.measure.compare import compare_reports

    with pytest.raises(DataError, match="different instruction-set classes: baseline x86-64-v3, new avx512-vnni"):
        compare_reports(_report("avx512-vnni"), _report("x86-64-v3"))
    r = compare_reports(_report("avx512-vnni"), _report("x86-64-v3"), force=True)
    assert any("instruction-set classes differ (--force)" in w for w in r.warnings)
    r = compare_reports(_report("avx512-vnni"), _report(None))
    assert any("recorded on one side only" in w for w in r.warnings)


def test_compare_cli_exit_codes(tmp_path):
    from conftest import run_cli

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report("avx512-vnni")))
    b.write_text(json.dumps(_report("x86-64-v3")))
    p = run_cli("compare", str(a), str(b), timeout=120)
    assert p.returncode == 2 and "different instruction-set classes" in p.stderr and "--force" in p.stderr, p.stderr
    p = run_cli("compare", str(a), str(b), "--force", timeout=120)
    assert p.returncode in (0, 1) and "instruction-set classes differ" in p.stdout, p.stdout + p.stderr


def test_latency_fallback_records_refused_sets_and_goes_on(tiny, tmp_path):
    """A candidate set the backend refuses (or that leaves no INT8 layer) is a recorded skip, never a crash."""
    from pipeline.mixed_precision import CandidateSkipped, latency_fallback
    from targets.base import BuiltModel

    layers = ["a", "b", "c"]
    drops = {(): 0.05, ("a",): 0.04, ("b",): 0.0, ("a", "b"): 0.0}

    def attempt(exclude: list[str], tag: str):
        key = tuple(sorted(exclude))
        if key == ("c",) or set(layers) <= set(exclude):
            raise CandidateSkipped("tensorrt refused it: ValueError: no QuantizeLinear/DequantizeLinear nodes")
        return BuiltModel(tiny["x86-64-v3"], [tiny["x86-64-v3"]], "mixed", "onnxruntime"), drops.get(key, 0.03)

    base = BuiltModel(tiny["x86-64-v3"], [tiny["x86-64-v3"]], "int8", "onnxruntime")
    q = SimpleNamespace(max_accuracy_drop=0.01, max_fallback_layers=3, max_fallback_trials=4)
    tried: list = []
    chosen, frontier = latency_fallback(layers, attempt, base, 0.05, 0.9, q, tried, get_backend("onnxruntime"),
                                        tiny["x"][:1], 1)
    assert chosen is not None and chosen[1] <= 0.01
    skipped = [r for r in frontier if r.get("skipped")]
    assert skipped and skipped[0]["float_layers"] == ["c"] and "refused" in skipped[0]["skipped"]
    assert any(t.get("skipped") for t in tried)
    json.dumps(frontier, allow_nan=False)  # valid JSON: no NaN for the skipped rows


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian package qemu-user) is not installed")
def test_run_for_an_avx2_target_labels_every_int8_figure_with_its_isa(tmp_path):
    """`run --target onnxruntime` (profile isa x86-64-v3) with quantize.emulate: INT8 accuracy computed with
    x86-64-v3 kernels (under qemu when this host is another class), within 1 point of FP32, every figure labelled."""
    from conftest import fast_args, read_run, run_cli

    out = tmp_path / "emu"
    p = run_cli("run", "--target", "onnxruntime", "--target", "jetson", "--out", str(out),
                *fast_args(["quantize.emulate=true", "quantize.mode=ptq"]))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = read_run(out)
    assert s["environment"]["isa"] == HOST
    ort = s["targets"]["onnxruntime"]["isa"]
    assert ort["target"] == "x86-64-v3" and ort["host"] == HOST and ort["scheme"]["reduce_range"] is True
    want = "native" if HOST == "x86-64-v3" else "emulated"
    assert ort["mode"] == want and "x86-64-v3" in ort["evaluated_with"], ort
    row = next(a for a in s["artifacts"] if a["name"] == "onnxruntime:int8")
    assert row["accuracy_provenance"]["isa"]["evaluated_with"] == ort["evaluated_with"]
    assert row["accuracy_provenance"]["source"] == ("measured" if HOST == "x86-64-v3" else "host-measured")
    assert HOST in row["accuracy_provenance"]["host"]
    student = next(a for a in s["artifacts"] if a["name"] == "student")["accuracy"]
    assert row["accuracy"] >= student - 0.01, (row["accuracy"], student)
    trt = s["targets"]["jetson-orin-nano"]["isa"]
    assert trt["mode"] == "exact" and "exact fake-quant" in trt["evaluated_with"]
    jet = next(a for a in s["artifacts"] if a["name"] == "jetson-orin-nano:int8")
    assert jet["accuracy"] >= student - 0.01, (jet["accuracy"], student)
    assert "accuracy computed with" in p.stdout
    bundle = next(out.glob("stages/bundle-onnxruntime/**/manifest.json"))
    man = json.loads(bundle.read_text())
    assert man["isa"]["target"] == "x86-64-v3" and man["isa"]["build_host"] == HOST
    assert man["isa"]["scheme"]["reduce_range"] is True


def test_report_says_which_kernels_made_the_int8_figures():
    from pipeline.report.render import _target_notes

    summary = {"targets": {"onnxruntime": {"isa": {
        "target": "x86-64-v3", "host": "avx512-vnni", "mode": "emulated",
        "scheme": {"weights": "int8 per-channel in 7 bits (reduce_range)", "reduce_range": True},
        "evaluated_with": "emulated x86-64-v3 (qemu-x86_64 -cpu Haswell), exact numerics of its kernels"}},
        "jetson-orin-nano": {"isa": {"target": None, "host": "avx512-vnni", "evaluated_with": "exact fake-quant"}}}}
    notes = _target_notes(summary)
    assert ("onnxruntime: INT8 made for x86-64-v3 (int8 per-channel in 7 bits (reduce_range)); INT8 accuracy computed "
            "with emulated x86-64-v3 (qemu-x86_64 -cpu Haswell), exact numerics of its kernels, on a avx512-vnni host"
            ) in notes
    assert "jetson-orin-nano: INT8 accuracy computed with exact fake-quant, on a avx512-vnni host" in notes
