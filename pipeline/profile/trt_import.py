"""TensorRT layer profiles from the device: trtexec's --exportProfile / --exportLayerInfo, as profile rows.

build_engine.sh (inside a TensorRT bundle, on the device) writes, beside the engine:
    profile.json   [{"count": N}, {"name": layer, "timeMs": total, "averageMs", "medianMs", "percentage"}, ...]
                   (TensorRT 8.x has no medianMs; averageMs is used then)
    layers.json    {"Layers": [{"Name", "LayerType", "Inputs"/"Outputs": [{"Name", "Format/Datatype", ...}],
                   "TacticName", "Metadata": "[ONNX Layer: /a/b/Conv]\\x1e[ONNX Layer: ...]", ...}], "Bindings"}
                   (needs --profilingVerbosity=detailed; Metadata names the ONNX nodes a fused layer came from)
    times.json     per-inference records {"latencyMs", "computeMs", ...} (--exportTimes)
    trt_profile.json  {"kind": "trt-layer-profile", "onnx": file, "onnx_sha256", "profile", "layers", "times",
                   "tensorrt_version", "device"}: ties the three files to the bundle's ONNX by sha256.
`python -m pipeline import-results RUN_DIR trt_profile.json` stores the rows in run.json
(targets.<profile>.layer_profile, source device-measured).
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from pipeline.errors import DataError
from pipeline.profile.schema import OpTime, VariantProfile, short_precision

KIND = "trt-layer-profile"
_META = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_DTYPE = re.compile(r"\b(Int8|INT8|FP8|FP16|Half|FP32|Float|BF16|Int32|INT32)\b")
LEFT_OUT = ("enqueue and stream synchronisation between layers; trtexec's profiling run is separate from the "
            "timed run (--separateProfileRun)")


def _precision(layer: dict) -> str | None:
    for port in (layer.get("Outputs") or []) + (layer.get("Inputs") or []):
        m = _DTYPE.search(str(port.get("Format/Datatype", "")))
        if m:
            return short_precision({"half": "f16", "float": "f32"}.get(m.group(1).lower(), m.group(1)))
    return None


def _op_type(name: str, layer: dict) -> str:
    t = str(layer.get("LayerType") or "?")
    if t == "Reformat" or name.startswith("Reformatting CopyNode"):
        return "Reformat"
    if "DequantizeLinear" in name and "+" not in name:
        return "DequantizeLinear"
    if "QuantizeLinear" in name and "+" not in name:
        return "QuantizeLinear"
    return t


def parse(profile: list, layers: dict | None) -> list[OpTime]:
    """trtexec profile records (+ layer information) -> one OpTime per engine layer."""
    if not isinstance(profile, list):
        raise DataError("the TensorRT profile is not a JSON list (trtexec --exportProfile writes one)",
                        hint="copy the unmodified profile.json that build_engine.sh wrote")
    info = {}
    for layer in (layers or {}).get("Layers") or []:
        if isinstance(layer, dict) and "Name" in layer:
            info[str(layer["Name"]).replace("\x1e", "+").replace("\x1f", "+")] = layer
    ops = []
    for rec in profile:
        if not isinstance(rec, dict) or "name" not in rec:
            continue  # the leading {"count": N} record
        name = str(rec["name"]).replace("\x1e", "+").replace("\x1f", "+")
        ms = rec.get("medianMs", rec.get("averageMs"))
        if not isinstance(ms, (int, float)):
            raise DataError(f"TensorRT profile record {name!r} has no medianMs/averageMs",
                            hint="copy the unmodified profile.json that build_engine.sh wrote")
        layer = info.get(name, {})
        onnx_names = tuple(_META.findall(str(layer.get("Metadata", ""))))
        # A fused layer's own name joins its parts with " + ": each part is an ONNX node name too.
        parts = tuple(p.strip() for p in name.split(" + ") if p.strip())
        # "Reformatting CopyNode for Input Tensor 0 to X": a reformat in front of layer X, charged to it.
        m = re.match(r"Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$", name)
        if m:
            parts = tuple(p.strip() for p in m.group(1).split(" + ")) + parts
        ops.append(OpTime(name=name, type=_op_type(name, layer), ms=float(ms), precision=_precision(layer),
                          names=onnx_names + parts))
    return ops


def _read(path: Path):
    try:
        from pipeline import strict_json

        return strict_json.loads(path.read_text(encoding="utf-8"), path,
                                 hint="copy the unmodified files build_engine.sh wrote beside the engine")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})",
                        hint="copy the files build_engine.sh wrote beside the engine") from None


def variant_from_sidecar(sidecar: Path, doc: dict) -> VariantProfile:
    base = sidecar.parent
    layers = base / (doc.get("layers") or "layers.json")
    ops = parse(_read(base / doc.get("profile", "profile.json")), _read(layers) if layers.is_file() else None)
    times_path = base / doc.get("times", "times.json")
    total = None
    if times_path.is_file():
        lat = [float(r["latencyMs"]) for r in _read(times_path)
               if isinstance(r, dict) and isinstance(r.get("latencyMs"), (int, float))]
        total = statistics.median(lat) if lat else None
    if total is None:
        raise DataError(f"{times_path}: no per-inference times (trtexec --exportTimes) to give the end-to-end p50",
                        hint="copy times.json too, written by build_engine.sh beside the engine")
    return VariantProfile(ops=ops, total_ms=total, runtime="tensorrt", runtime_version=str(doc.get("tensorrt_version")),
                          method=doc.get("method") or "trtexec --exportProfile (medianMs per layer, separate "
                                                         "profiling run)",
                          iterations=int(next((r.get("count") for r in _read(base / doc.get("profile", "profile.json"))
                                               if isinstance(r, dict) and "count" in r), 0) or 0),
                          left_out=LEFT_OUT)


def import_trt_profile(run_dir: Path, sidecar: Path, target: str | None = None) -> dict:
    """Store the device's layer profile in run.json; the ONNX it was built from must be one of the run's."""
    from pipeline.run_json import read_run
    from pipeline.profile.mapping import OnnxIndex
    from pipeline.profile.schema import profile_doc
    from pipeline.profile.target import _model_file, store_profile

    doc = _read(sidecar)
    run = read_run(run_dir)
    art = next((a for a in run["artifacts"] if a.get("sha256") == doc.get("onnx_sha256") and a.get("target")
                and (target is None or target in (a.get("target"), a.get("name", "").split(":")[0]))), None)
    if art is None:
        raise DataError(f"{sidecar}: the engine was built from an ONNX (sha256 {str(doc.get('onnx_sha256'))[:12]}...) "
                        "that is none of this run's target artifacts",
                        hint="import the profile of an engine built from this run's bundle")
    variant = "int8" if art.get("precision") not in ("fp32", "fp16") else "float"
    vp = variant_from_sidecar(sidecar, doc)
    student = next((a for a in run["artifacts"] if a.get("role") == "student"), None)
    index = OnnxIndex.from_onnx(_model_file(run_dir, student)) if student else None
    out = profile_doc(art["target"], "tensorrt", "device-measured", str(doc.get("device") or "unknown device"), 0,
                      {variant: vp}, index)
    out["threads"] = None
    out["file"] = str(sidecar)
    store_profile(run_dir, out)
    return out


def is_trt_profile(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"{KIND}"' in head


def cmd_import_trt_profile(args) -> int:
    out = import_trt_profile(Path(args.run_dir), Path(args.result), args.target)
    print(f"imported the TensorRT layer profile of {out['target']}: {len(out['rows'])} rows, "
          f"end-to-end p50 {out['total_ms'] or out['total_float_ms']} ms (device-measured)")
    print(f"run.json updated: {Path(args.run_dir) / 'run.json'}")
    return 0
