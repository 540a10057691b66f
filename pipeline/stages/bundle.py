"""bundle: per target a folder and a .tar.gz that run where nothing but the runtime is installed.

Contents: the model files, manifest.json, run.py + runtime.py (runtime + numpy only), bench.py
(the host harness's JSON schema), requirements.txt (pinned), samples with expected outputs,
SHA256SUMS, README.md; backends add their own (TensorRT: engine build scripts).
"""
from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import strict_json
from pipeline.artifacts import sha256_file
from pipeline.provenance import float_compute_layers, precision_label
from pipeline.runner import Runner, StageContext, StageResult, environment
from pipeline.stages.data import read_splits
from pipeline.stats import format_ci
from targets.isa import host_isa

MANIFEST_SCHEMA_VERSION = "1"
STANDALONE = Path(__file__).resolve().parents[2] / "targets" / "standalone"
SAMPLES = 8


RAW_SAMPLES = 6  # raw test files shipped, one per input kind (format and Pillow mode: 8-bit, 16-bit, palette...)
RAW_MAX_BYTES = 4 << 20
RAW_SCAN = 4000  # test files whose header is read to find the kinds


def bundle_requirements(backend) -> list[str]:
    """The backend's pinned runtime + numpy, and Pillow: the README's `python run.py image.png` decodes image
    files with it (targets/standalone/runtime.preprocess_image)."""
    from targets.base import pin

    reqs = list(backend.requirements())
    if not any(r.lower().replace("_", "-").split("=")[0].strip() == "pillow" for r in reqs):
        reqs.append(pin("pillow"))
    return reqs


def _input_kind(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return f"{img.format} {img.mode}"
    except Exception:  # unreadable: the data stage skipped or refused it already
        return None


def raw_samples(data: StageResult, splits, folder: Path, model) -> list[dict]:
    """Copy one raw test file per input kind into samples/raw/ with the outputs this host's runtime gives for the
    data stage's own preprocessing of that file: run.py --check-samples preprocesses the raw file on the device
    and must reproduce them (one preprocessing, proven on the files the dataset had, not only on arrays)."""
    import os
    import re

    try:
        info = json.loads((Path(data.dir) / "store.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = [f if not f or Path(f).is_absolute() else str(Path(data.dir) / f)  # relative: the data stage's own
             for f in info.get("splits", {}).get("test", {}).get("files") or []]
    if len(files) != len(splits.y_test):
        return []
    picked: dict[str, int] = {}
    for j, f in enumerate(files[:RAW_SCAN]):
        if not f:
            continue
        try:
            if os.path.getsize(f) > RAW_MAX_BYTES:
                continue
        except OSError:
            continue
        kind = _input_kind(f)
        if kind and kind not in picked:
            picked[kind] = j
            if len(picked) >= RAW_SAMPLES:
                break
    out = []
    if picked:
        (folder / "raw").mkdir(exist_ok=True)
    for n, (kind, j) in enumerate(picked.items()):
        name = f"raw/{n}_{re.sub(r'[^A-Za-z0-9._-]', '_', Path(files[j]).name)[-60:]}"
        shutil.copyfile(files[j], folder / name)
        x = splits.x_test[j:j + 1]
        xin = x.transpose(0, 2, 3, 1).copy() if model.layout == "nhwc" else x
        logits = model.run(xin)[0]
        out.append({"file": name, "kind": kind, "label": int(splits.y_test[j]), "top1": int(logits.argmax()),
                    "logits": [float(v) for v in logits]})
    return out


def write_checksums(root: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def make_tarball(folder: Path, tar_path: Path) -> None:
    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0  # reproducible archives
        return ti

    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=f"{folder.name}/{p.relative_to(folder).as_posix()}", recursive=False, filter=clean)


def _readme(manifest: dict, notes: list[str]) -> str:
    m = manifest
    metric_lines = []
    for k, v in m["metrics"].items():
        if isinstance(v, dict) and "value" in v:
            value = format_ci(v["value"], v.get("ci95")) if v.get("ci95") else v["value"]
            metric_lines.append(f"| {k} | {value} | {v.get('source') or 'unknown'} | {v.get('runtime') or 'unknown'} "
                                f"| {v.get('host') or 'unknown'} |")
    lines = [
        f"# {m['name']}: {m['profile']['name']} deployment bundle",
        "",
        f"Model `{m['model']['file']}` ({m['model']['precision']}, runtime {m['model']['runtime']}) for "
        f"{m['profile']['description'] or m['profile']['name']}.",
        "",
        "## Use",
        "```",
        "python -m venv venv && . venv/bin/activate && pip install -r requirements.txt",
        "python run.py --check-samples          # checksums + expected outputs",
        "python run.py image.png                # top-5 as JSON (image files: Pillow, in requirements.txt)",
        "python bench.py MODEL --json bench.json --source device-measured",
        "```",
        "Then on the host: `python -m pipeline import-results RUN_DIR bench.json`.",
        "",
        "## Input",
        f"`{m['input']['name']}` {m['input']['shape']} {m['input']['dtype']} {m['input']['layout']}; preprocessing: "
        f"`{json.dumps(m['preprocessing'])}`",
        "",
        "## Metrics (each with its source, the runtime and the host class that produced it)",
        "Accuracy is on the test split with its 95% Wilson interval. `host-measured`: run on the build host, "
        "not on the device (reference numerics or another CPU architecture); `estimated`: roofline, not run.",
        "",
        "| metric | value | source | runtime | host |",
        "|---|---|---|---|---|",
        *metric_lines,
        "",
        *[f"- {n}" for n in notes],
        "",
        "Every file is listed in SHA256SUMS; run.py checks them before loading the model.",
    ]
    return "\n".join(lines) + "\n"


def run_bundle(runner: Runner, recipe, profile, backend, data: StageResult, quant: StageResult,
               compile_: StageResult, evaluate: StageResult, bench: StageResult | None,
               estimate: dict, inputs: dict[str, StageResult], convert: StageResult | None = None) -> StageResult:
    from pipeline.stages.target import built_from, shipped_variant

    name = f"{recipe.name}-{profile.name}"
    variant, why = shipped_variant(recipe.quantize.ship, bench.metrics if bench is not None else None)
    if variant == "fp32" and convert is None:
        variant, why = "int8", "no FP32 artifact given to the bundle"

    def fn(ctx: StageContext) -> None:
        built = built_from(convert, "fp32") if variant == "fp32" and convert is not None else built_from(quant, "int8")
        ctx.metrics["shipped"] = {"variant": variant, "why": why}
        if variant == "fp32":
            ctx.notes.append(f"bundle ships the FP32 model: {why}")
        splits = read_splits(data)
        root = ctx.dir / name
        (root / "samples").mkdir(parents=True)
        for f in built.files:
            shutil.copyfile(f, root / f.name)
        for script in ("runtime.py", "run.py", "bench.py"):
            shutil.copyfile(STANDALONE / script, root / script)
        # Samples: preprocessed test images and the outputs this host's runtime gives for them.
        from targets.standalone.runtime import load_model as load_runtime

        m = load_runtime(root / built.model_file.name, threads=1)
        samples = []
        for i in range(min(SAMPLES, len(splits.x_test))):
            x = splits.x_test[i:i + 1]
            fname = f"sample_{i}.npy"
            np.save(root / "samples" / fname, x)
            xin = x.transpose(0, 2, 3, 1).copy() if m.layout == "nhwc" else x
            logits = m.run(xin)[0]
            samples.append({"file": fname, "label": int(splits.y_test[i]), "top1": int(logits.argmax()),
                            "logits": [float(v) for v in logits]})
        raw = raw_samples(data, splits, root / "samples", m)
        (root / "samples" / "expected.json").write_text(strict_json.dumps(
            {"atol": 1e-3, "runtime": m.runtime, "runtime_version": m.runtime_version, "isa": host_isa(),
             "samples": samples, "raw": raw}, indent=1))
        ev = evaluate.metrics[variant]
        bm = (bench.metrics.get(variant) if bench else None) or {}
        # Every figure names its source, the runtime and the host class that produced it.
        acc_where = {"source": ev.get("source") or "unknown", "runtime": ev.get("runtime") or ev["numerics"],
                     "host": ev.get("host") or "unknown"}
        metrics: dict[str, Any] = {
            "accuracy": {"value": ev["accuracy"], **acc_where, "ci95": ev.get("accuracy_ci95"),
                         "numerics": ev["numerics"], "split": "test", "samples": ev["samples"]},
            "accuracy_drop_vs_fp32_student": {"value": ev["accuracy_drop_vs_fp32_student"], **acc_where,
                                              "paired": ev.get("paired_vs_fp32_student")},
            "top1_agreement_vs_fp32_student": {"value": ev["top1_agreement"], **acc_where},
        }
        if bm:
            lat, rss = bm["latency_ms"], bm["peak_rss_mb"]
            lat_where = {"source": lat.get("source") or "unknown", "runtime": lat.get("runtime") or "unknown",
                         "host": lat.get("host") or "unknown"}
            metrics["latency_p50_ms"] = {"value": lat["p50"], **lat_where}
            metrics["latency_p90_ms"] = {"value": lat["p90"], **lat_where}
            metrics["peak_rss_mb"] = {"value": rss["value"], **lat_where, "source": rss.get("source") or "unknown"}
        est = estimate["latency_ms"]
        metrics["estimated_latency_p50_ms"] = {"value": est["p50"], "source": "estimated",
                                               "runtime": est.get("runtime", "roofline estimate"),
                                               "host": est.get("host", profile.name)}
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "profile": {"name": profile.name, "backend": profile.backend, "description": profile.description,
                        "cpu_arch": profile.cpu_arch, "threads": profile.threads, "isa": profile.isa},
            # Which instruction-set class the INT8 model was made for, and which one computed its figures and
            # samples/expected.json (a host of another class may compute other INT8 numbers).
            "isa": {"target": profile.isa, "build_host": host_isa(), "scheme": built.info.get("scheme"),
                    "accuracy_evaluated_with": (evaluate.metrics.get(variant) or {}).get("isa", {}).get("evaluated_with")},
            "shipped": {"variant": variant, "why": why},
            "model": {"file": built.model_file.name, "files": [f.name for f in built.files],
                      "precision": precision_label(built.precision, built.info.get("kept_in_float"),
                                                   float_compute_layers(compile_.metrics.get("compile") or {})),
                      "runtime": m.runtime,
                      "precision_hint": None, "kept_in_float": built.info.get("kept_in_float", [])},
            "device_model_files": [],
            "input": {"name": m.input_name, "shape": [1, *splits.input_shape] if m.layout != "nhwc"
                      else [1, *splits.input_shape[1:], splits.input_shape[0]],
                      "dtype": "float32", "layout": m.layout or "nchw"},
            "preprocessing": {**splits.preprocessing, "layout": m.layout or "nchw"},
            "labels": splits.class_names,
            "toolchain": {**environment()["tools"], **_runtime_expectations(profile)},
            "metrics": metrics,
            "checks": compile_.metrics.get("compile", {}),
            "files": {},
        }
        notes = backend.bundle_extras(built, profile, root, manifest) or []
        (root / "requirements.txt").write_text("\n".join(bundle_requirements(backend)) + "\n")
        (root / "README.md").write_text(_readme(manifest, notes))
        manifest["files"] = {p.relative_to(root).as_posix(): sha256_file(p)
                             for p in sorted(root.rglob("*")) if p.is_file()}
        (root / "manifest.json").write_text(strict_json.dumps(manifest, indent=2))
        write_checksums(root)
        make_tarball(root, ctx.dir / f"{name}.tar.gz")
        ctx.metrics.update(bundle=f"{name}", tarball=f"{name}.tar.gz", files=len(manifest["files"]) + 2)
        # The bundle README carries the how-to notes; the run summary only points at the bundle.
        ctx.notes.append(f"bundle written: {name}.tar.gz ({len(manifest['files']) + 2} files)")

    deps = {"data": data, "quantize": quant, "compile": compile_, "evaluate": evaluate, **inputs}
    if variant == "fp32" and convert is not None:
        deps["convert"] = convert
    if bench is not None:
        deps["benchmark"] = bench
    return runner.stage(f"bundle-{profile.name}", fn, config={"profile": profile.model_dump(mode="json"),
                                                               "name": name, "estimate": estimate,
                                                               "shipped": variant},
                        inputs=deps, tools=["numpy"], label=f"bundle [{profile.name}]",
                        code=(type(backend),))  # the backend is picked at run time; the standalone scripts
    # are covered by pipeline.code_closure.DATA_READS


def _runtime_expectations(profile) -> dict[str, Any]:
    rt = profile.runtime.model_dump() if hasattr(profile.runtime, "model_dump") else dict(profile.runtime or {})
    return {f"{k}_expected": v for k, v in rt.items() if v}
