"""`python -m pipeline import-results RUN_DIR device.json [--target PROFILE]`: merge device timings into a run.

    # on the device, inside the bundle:
    python bench.py model_int8.onnx --source device-measured --json device.json
    # back on the host:
    python -m pipeline import-results runs/default device.json --target rpi

The file is a `case-result` (bench.py) or a `benchmark-report` (pipeline/measure/harness.py), validated against
pipeline/measure/schema.json. Each result is tied to a run artifact by the sha256 of the model it timed (bench.py
hashes OpenVINO IR as .xml + .bin; that digest is recomputed from the bundle): a result whose model is not
one of the run's artifacts (for --target, one of that target's) is refused, so timings of another model are
never merged. Figures must say `source: device-measured`.

The machine architecture the result records (`environment.machine` of bench.py / the harness, `machine` of
bench_engine.py) must be the profile's `cpu_arch`: a result from another kind of machine is refused unless
`--force`, which records a note on the result.

What is written: RUN_DIR/device_results.json (pipeline/device_results.py; atomic; one record per model sha256,
profile and batch is shown, every earlier import is kept beside it with its imported_at), then run.json with the results laid over it, as every
later `run`, `report` and `bench` does (host figures are never touched):
    artifacts[i]["device_latency_ms"] = {p50, p90, p99, min, mean, cv, iterations, batch, threads, runtime,
                                         runtime_version, device, source: "device-measured", imported_at, file}
    artifacts[i]["device_peak_rss_mb"] = {value, method, source: "device-measured", device}
    run["device_results"] = [{artifact, target, sha256, device, imported_at, file, file_sha256, ...}]

Exit codes: 0 merged, 2 unreadable/invalid file, no matching artifact, wrong source or architecture, bad RUN_DIR.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

from pipeline import strict_json
from pipeline.errors import ConfigError, DataError
from pipeline.run_json import read_run

TARGET_ROLES = ("target",)
ENGINE_SUFFIXES = (".plan", ".engine")


def add_parser(sub) -> None:
    p = sub.add_parser("import-results", help="merge a device's bench.py result into a run as device-measured",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding run.json")
    p.add_argument("result", metavar="DEVICE_JSON", help="bench.py case result or harness benchmark report (JSON)")
    p.add_argument("--target", default=None, help="profile name or alias the result belongs to (default: found "
                                                  "from the model's sha256)")
    p.add_argument("--device", default=None, help="device name to record (default: the result's board / CPU)")
    p.add_argument("--force", action="store_true", help="import a result whose machine architecture is not the "
                                                        "profile's cpu_arch (or is not recorded); a note says so")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_import_results)


# --------------------------------------------------------------------------------------------------------
# reading




def read_result(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no such result file", hint="copy the JSON bench.py wrote on the device")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})",
                        hint="copy the JSON bench.py wrote on the device (bench.py ... --json device.json)") from None
    # strict JSON: a NaN/Infinity literal (or an overflowing 1e999) anywhere is refused naming the field, so a
    # poisoned figure can never replace a valid device record nor reach run.json
    strict_json.check(doc, path.name, hint="re-run bench.py on the device (it writes finite figures only) and "
                                           "import its unmodified JSON")
    if isinstance(doc, dict) and doc.get("kind") == "engine-result":
        return _check_engine_record(path, doc)
    if isinstance(doc, dict) and "kind" not in doc and "plan" in doc and "latency_ms" in doc:
        raise DataError(f"{path}: this is a bench_engine.py record (TensorRT engine), which does not carry the sha256 "
                        "of the ONNX model the engine was built from, so it cannot be tied to this run",
                        hint="time the bundle's model with `python bench.py MODEL --source device-measured "
                             "--json device.json` to import it")
    from pipeline.measure.harness import validation_errors

    errors = validation_errors(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"{path.name} does not follow pipeline/measure/schema.json: {errors[0]}{more}",
                        hint="import the unmodified JSON that bench.py (or the harness) wrote")
    return doc


def _check_engine_record(path: Path, doc: dict) -> dict:
    """bench_engine.py's record: TensorRT timing of an engine built on the device from the bundle's ONNX."""
    src = doc.get("source_model") or {}
    lat = doc.get("latency_ms") or {}
    if not isinstance(src.get("sha256"), str):
        raise DataError(f"{path}: the engine record does not name the ONNX it was built from",
                        hint="run bench_engine.py inside the bundle folder (it reads manifest.json) or pass --manifest")
    if doc.get("source") != "device-measured" or not isinstance(lat.get("p50"), (int, float)):
        raise DataError(f"{path}: not a device-measured engine record with a p50 latency",
                        hint="import the unmodified JSON that bench_engine.py wrote on the device")
    return doc


def _device_name(env: dict | None, explicit: str | None) -> str:
    if explicit:
        return explicit
    env = env or {}
    return env.get("board") or env.get("cpu_model") or env.get("machine") or "unknown device"


def entries(doc: dict, device: str | None) -> list[dict]:
    """One entry per timed model: {sha256, file, source, latency, rss, runtime, ...}."""
    out = []
    if doc["kind"] == "engine-result":
        lat = doc["latency_ms"]
        out.append({"name": f"tensorrt engine ({doc['source_model']['file']})", "sha256": doc["source_model"]["sha256"],
                    "file": doc["source_model"]["file"], "source": "device-measured", "runtime": "tensorrt",
                    "runtime_version": doc.get("runtime_version"), "batch": doc.get("batch", 1), "threads": None,
                    "iterations": doc.get("iterations"), "stable": None,
                    "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "min", "mean", "cv")},
                    "rss": {"value": None, "method": "not measured by bench_engine.py", "baseline_subtracted": False},
                    "device": device or doc.get("device_model") or doc.get("device") or "unknown device",
                    "machine": doc.get("machine"), "created": doc.get("timestamp")})
        return out
    if doc["kind"] == "case-result":
        model = doc.get("model") or {}
        if not model.get("sha256"):
            raise DataError("the result does not name the sha256 of the model it timed, so it cannot be tied to a "
                            "run artifact", hint="use bench.py from the bundle: it records model.sha256")
        lat = doc["latency_ms"]
        out.append({"name": doc["name"], "sha256": model["sha256"], "file": model.get("file"),
                    "source": doc["source"], "runtime": doc["runtime"], "runtime_version": doc.get("runtime_version"),
                    "batch": doc["batch"], "threads": doc.get("threads"), "iterations": doc.get("iterations"),
                    "stable": doc.get("stable"),
                    "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "min", "mean", "cv")},
                    "rss": {"value": doc["peak_rss_mb"], "method": doc.get("peak_rss_method", "self-reported"),
                            "baseline_subtracted": False,
                            "note": "peak of the whole bench.py process (interpreter, numpy, runtime and model)"},
                    "device": _device_name(doc.get("environment"), device),
                    "machine": (doc.get("environment") or {}).get("machine"), "created": doc.get("created")})
    else:
        env = doc.get("environment")
        if not doc["cases"]:
            raise DataError("the benchmark report has no cases", hint="import a report with at least one case")
        for c in doc["cases"]:
            lat = c["latency_ms"]
            rss = c["peak_rss_mb"]
            out.append({"name": c["name"], "sha256": c["sha256"], "file": Path(c.get("artifact") or "").name or None,
                        "source": c["source"], "runtime": c["runtime"], "runtime_version": c.get("runtime_version"),
                        "batch": c["batch"], "threads": c.get("threads"), "iterations": lat.get("iterations"),
                        "stable": None,
                        "latency": {k: lat.get(k) for k in ("p50", "p90", "p99", "min", "mean")}
                        | {"cv": lat.get("cv_between_repeats")},
                        "rss": {"value": rss.get("value") if rss.get("value") is not None else rss.get("absolute_mb"),
                                "method": rss.get("method"), "baseline_subtracted": rss.get("value") is not None},
                        "device": _device_name(env, device), "machine": (env or {}).get("machine"),
                        "created": doc.get("created")})
    return out


def check_figures(entry: dict, where: str) -> None:
    """A device record is imported only with a positive p50 and non-negative figures: DataError (exit 2) naming
    the field otherwise (non-finite numbers were refused when the file was read)."""
    lat = entry["latency"]
    p50 = lat.get("p50")
    if isinstance(p50, bool) or not isinstance(p50, (int, float)) or not p50 > 0:
        raise DataError(f"{where}: {entry['name']}: latency_ms.p50 is {p50!r}, not a positive number of "
                        "milliseconds; an invalid figure never replaces a device record",
                        hint="re-run bench.py on the device and import its unmodified JSON")
    for k, v in lat.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise DataError(f"{where}: {entry['name']}: latency_ms.{k} is {v!r}, not a non-negative number",
                            hint="re-run bench.py on the device and import its unmodified JSON")


# --------------------------------------------------------------------------------------------------------
# matching


def resolve_target(run: dict, name: str) -> str:
    targets = sorted({a.get("target") for a in run["artifacts"] if a.get("target")} | set(run.get("targets") or {}))
    if name in targets:
        return name
    from targets.profiles import resolve_profile

    try:
        prof = resolve_profile(name).name
    except Exception:  # an unknown alias: say what the run has
        prof = None
    if prof is not None and prof in targets:
        return prof
    raise ConfigError(f"--target {name}: this run has no such target",
                      hint=f"use one of: {', '.join(targets) or '(none)'}")


def artifact_digests(a: dict) -> set[str]:
    """sha256 values that identify artifact `a`: run.json's, and bench.py's digest of the bundled model file."""
    out = {a["sha256"]} if isinstance(a.get("sha256"), str) else set()
    bundle = a.get("bundle")
    if bundle and Path(bundle, "manifest.json").is_file():
        try:
            from targets.standalone.bench import file_digest

            manifest = json.loads(Path(bundle, "manifest.json").read_text(encoding="utf-8"))
            model = Path(bundle) / manifest["model"]["file"]
            if model.is_file():
                out.add(file_digest(str(model))[0])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out


def match(run: dict, entry: dict, target: str | None) -> int:
    """Index of the run artifact `entry` timed; DataError (exit 2) when none matches."""
    cands = [(i, a) for i, a in enumerate(run["artifacts"])
             if a.get("role") in TARGET_ROLES and (target is None or a.get("target") == target)]
    hits = [(i, a) for i, a in cands if entry["sha256"] in artifact_digests(a)]
    if not hits:
        where = f"target {target}" if target else "this run"
        engine = str(entry.get("file") or "").lower().endswith(ENGINE_SUFFIXES)
        why = (" (a TensorRT engine is built on the device, so its sha256 is never one of the run's)" if engine
               else "")
        raise DataError(f"refusing to import: the result's model {entry.get('file') or entry['name']} (sha256 "
                        f"{entry['sha256'][:12]}…) is not an artifact of {where}{why}; results of another model are "
                        "never merged",
                        hint="benchmark the model file shipped in this run's bundle (check the sha256 in its "
                             "manifest.json), or pass the right RUN_DIR / --target")
    targets = sorted({a.get("target") for _, a in hits})
    if len(targets) > 1:
        raise ConfigError(f"the result's model matches artifacts of several targets ({', '.join(targets)})",
                          hint=f"say which with --target ({' or '.join(targets)})")
    # one target: prefer the bundled artifact (the one bench.py on the device ran)
    hits.sort(key=lambda ia: (ia[1].get("bundle") is None, ia[0]))
    return hits[0][0]


# --------------------------------------------------------------------------------------------------------
# the command


def profile_arch(run: dict, target: str | None) -> str | None:
    """The cpu_arch of `target`'s profile: run.json's record, else the profile of that name here."""
    if not target:
        return None
    arch = ((run.get("targets") or {}).get(target) or {}).get("cpu_arch")
    if arch:
        return arch
    try:
        from targets.profiles import resolve_profile

        return resolve_profile(target).cpu_arch
    except Exception:  # a custom profile file that is not here: unknown
        return None


def arch_note(run: dict, entry: dict, target: str | None, force: bool) -> str | None:
    """None when the result's machine is the profile's cpu_arch; a note when --force lets a mismatch in;
    ConfigError (exit 2) otherwise."""
    from pipeline.device_results import normalise_arch

    got, want = normalise_arch(entry.get("machine")), profile_arch(run, target)
    if got and want and got == want:
        return None
    if not got:
        why = "the result does not record the machine architecture it ran on"
    elif not want:
        why = f"the cpu_arch of profile {target} is not known here (the result ran on {got})"
    else:
        why = f"the result ran on a {got} machine, profile {target} is {want}"
    if force:
        return f"imported with --force: {why}"
    raise ConfigError(f"refusing to import {entry['name']}: {why}; a figure from another kind of machine is not "
                      "this device's latency",
                      hint="import the result measured on the device of that profile (or pass --force to import it "
                           "anyway, with a note)")


def import_results(run_dir: str | Path, result_path: str | Path, target: str | None = None,
                   device: str | None = None, force: bool = False) -> list[dict]:
    """Store `result_path`'s figures in RUN_DIR/device_results.json and lay them over run.json; return the
    records added."""
    from pipeline import device_results
    from pipeline.artifacts import atomic_write_json, sha256_file

    run_dir, result_path = Path(run_dir), Path(result_path)
    run = read_run(run_dir)
    doc = read_result(result_path)
    want = resolve_target(run, target) if target else None
    items = entries(doc, device)
    for e in items:
        if e["source"] != "device-measured":
            raise DataError(f"refusing to import {e['name']}: its figures are labelled '{e['source']}', not "
                            "'device-measured'",
                            hint="run bench.py on the device with --source device-measured (host figures are "
                                 "already in run.json)")
    for e in items:
        check_figures(e, result_path.name)
    matched = [(match(run, e, want), e) for e in items]  # every entry must match before anything is written
    notes = [arch_note(run, e, run["artifacts"][idx].get("target"), force) for idx, e in matched]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    file_sha = sha256_file(result_path)
    added = []
    for (idx, e), note in zip(matched, notes):
        a = run["artifacts"][idx]
        latency = {**e["latency"], "iterations": e["iterations"], "stable": e["stable"], "batch": e["batch"],
                   "threads": e["threads"], "runtime": e["runtime"], "runtime_version": e["runtime_version"],
                   "device": e["device"], "source": "device-measured", "measured_at": e["created"],
                   "imported_at": now, "file": result_path.name}
        rss = None
        if e["rss"]["value"] is not None:
            rss = {**{k: v for k, v in e["rss"].items() if v is not None}, "source": "device-measured",
                   "device": e["device"]}
        if note:
            latency["note"] = note
        added.append({"artifact": a["name"], "artifact_sha256": a.get("sha256"), "target": a.get("target"),
                      "sha256": e["sha256"], "device": e["device"], "machine": e.get("machine"),
                      "runtime": e["runtime"], "p50_ms": e["latency"]["p50"], "imported_at": now,
                      "file": result_path.name, "file_sha256": file_sha, "notes": [note] if note else [],
                      "latency_ms": latency, "peak_rss_mb": rss})
    device_results.add(run_dir, added)
    atomic_write_json(run_dir / "run.json", device_results.merge_into(run, run_dir))
    return added


def cmd_import_results(args) -> int:
    from pipeline.profile.trt_import import is_trt_profile

    if is_trt_profile(Path(args.result)):  # trtexec layer profile from build_engine.sh (pipeline/profile/)
        from pipeline.profile.trt_import import cmd_import_trt_profile

        return cmd_import_trt_profile(args)
    added = import_results(args.run_dir, args.result, args.target, args.device, force=args.force)
    for r in added:
        print(f"imported {r['artifact']}: p50 {r['p50_ms']} ms on {r['device']} ({r['runtime']}, device-measured)"
              + (f"; note: {r['notes'][0]}" if r["notes"] else ""))
    print(f"stored in {Path(args.run_dir) / 'device_results.json'}; run.json updated")
    return 0
