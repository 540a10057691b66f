"""Does a structured-pruned student also run faster in INT8? If not, which modules hold it, and which
`prune.round_to` fixes it?

Fewer MACs do not always mean less INT8 time: ONNX Runtime's U8S8 kernels on x86 work on channel blocks,
so a conv pruned from 16 to 8 channels can run slower in INT8 (measured: a CIFAR ResNet-20 student at 0.37x
MACs ran 1.01x the unpruned INT8 latency; rounding channels to 16 gave 0.52x MACs and 0.72x INT8 latency).

Used by the prune stage (pipeline/pruning.py, `prune.int8_check`) and by benchmarks/prune_int8.py:
- :func:`quantize_int8`: an FP32 ONNX to INT8 the way the onnxruntime target does it (U8S8 QDQ);
- :func:`measure_batch1`: FP32 and INT8 latency of several models at batch 1, interleaved in one process;
- :func:`int8_rows` / :func:`compare_modules`: per-module INT8 time from two per-layer profiles
  (pipeline.profile.ort), unpruned vs pruned, with the Q/DQ/reformat rows that do not shrink;
- :func:`choose_fix`: the round_to candidate with the lowest measured INT8 ratio;
- :func:`int8_check`: all of it for the prune stage, with a note line and a structured record.
Every latency here is measured in this process (source "measured"), never estimated.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Above this INT8 latency ratio (pruned / unpruned) the pruning is not paying off in INT8: name the
# modules and search another round_to (recipe: prune.int8_threshold).
THRESHOLD = 0.75
# round_to values tried as the fix (channel multiples that suit SIMD int8 kernels); the current one is skipped.
ROUND_TO_CANDIDATES = (4, 8, 16, 32)
# A candidate whose MACs ratio exceeds the target (or the current ratio) by more than this misses it by far.
MAX_MACS_EXCESS = 0.2
# Profiled inferences per INT8 model (the per-module comparison): enough for a stable trimmed mean, cheap.
PROFILE_ITERATIONS = 100
# The check's timing per model and repeat is capped here (the recipe's benchmark settings can ask for seconds):
# ratios of sub-millisecond models settle within a tenth of a second of runs.
CHECK_MIN_TIME_S = 0.1
CHECK_WARMUP = 20
NOTE_MODULES = 3  # modules named in the note line (the metrics and the report list up to 12)
RUNTIME = "onnxruntime"
PRECISION = "int8 (U8S8 QDQ, per-channel weights)"
OVERHEAD_KINDS = ("quantize", "reformat")


def quantize_int8(fp32_onnx: Path, out_onnx: Path, calibration: np.ndarray, calib) -> Path:
    """The onnxruntime target's INT8 model of `fp32_onnx` (U8S8 QDQ, `calib`: the recipe's calibration section)."""
    from targets.onnxruntime import quantize_u8s8

    return quantize_u8s8(fp32_onnx, out_onnx, calibration, calib)


def measure_batch1(fp32: dict[str, Path], int8: dict[str, Path], x: np.ndarray, threads: int, bench) -> dict[str, dict]:
    """{name: {"fp32": latency, "int8": latency}} at batch 1, every model measured in one interleaved session
    (pipeline.measure.in_process.measure_ort_latency; `bench`: the recipe's benchmark section)."""
    from pipeline.measure.in_process import measure_ort_latency

    models = {**{f"{k}|fp32": p for k, p in fp32.items()}, **{f"{k}|int8": p for k, p in int8.items()}}
    lat = measure_ort_latency(models, x, (1,), threads, bench.repeats, bench.warmup, bench.min_iters,
                              bench.min_time_s, bench.max_time_s)
    out: dict[str, dict] = {}
    for key, v in lat.items():
        name, prec = key.split("|")
        out.setdefault(name, {})[prec] = {**v["batch1"], "precision": "fp32" if prec == "fp32" else PRECISION}
    return out


def check_timing(bench):
    """The recipe's benchmark section with the check's caps on time and warmup per model and repeat."""
    return bench.model_copy(update={"min_time_s": min(bench.min_time_s, CHECK_MIN_TIME_S),
                                    "warmup": min(bench.warmup, CHECK_WARMUP)})


def ratio(lat: dict[str, dict], name: str, base: str, precision: str) -> float:
    return lat[name][precision]["p50_ms"] / lat[base][precision]["p50_ms"]


def int8_rows(int8_onnx: Path, fp32_onnx: Path, threads: int, iterations: int = PROFILE_ITERATIONS) -> list[dict]:
    """Per-module rows (pipeline.profile.schema) of one INT8 model, ops mapped through its FP32 export."""
    from pipeline.profile import ort as ort_profile
    from pipeline.profile.mapping import OnnxIndex
    from pipeline.profile.schema import build_rows

    vp = ort_profile.profile(int8_onnx, threads, iterations=iterations)
    return build_rows({"int8": vp}, OnnxIndex.from_onnx(fp32_onnx))[0]


def compare_modules(unpruned: list[dict], pruned: list[dict], threshold: float = THRESHOLD) -> list[dict]:
    """Per module INT8 ms unpruned vs pruned, the modules that hold the ratio up first.

    `kept_ms` = pruned ms - threshold x unpruned ms: the time above what the threshold allows; a row
    with kept_ms > 0 holds the whole model's ratio above the threshold. `overhead` marks rows that are
    Q/DQ/reformat ops or the runtime's fixed call cost (they do not shrink with the channels)."""
    a = {r["label"]: r for r in unpruned}
    b = {r["label"]: r for r in pruned}
    rows = []
    for k in dict.fromkeys([*a, *b]):
        ra, rb = a.get(k) or {}, b.get(k) or {}
        u, p = ra.get("int8_ms") or 0.0, rb.get("int8_ms") or 0.0
        ops = [*(ra.get("ops") or []), *(rb.get("ops") or [])]
        only_overhead = bool(ops) and all(o["kind"] in (*OVERHEAD_KINDS, "fixed") for o in ops)
        rows.append({"module": k, "unpruned_ms": round(u, 5), "pruned_ms": round(p, 5),
                     "ratio": round(p / u, 3) if u > 0 else None, "kept_ms": round(p - threshold * u, 5),
                     "qdq_ms": {"unpruned": (ra.get("overhead_ms") or {}).get("int8", 0.0),
                                "pruned": (rb.get("overhead_ms") or {}).get("int8", 0.0)},
                     "overhead": only_overhead})
    return sorted(rows, key=lambda r: -r["kept_ms"])


def holders(rows: list[dict], n: int = 12) -> tuple[list[dict], list[dict]]:
    """(up to n modules that hold the INT8 ratio up, Q/DQ/reformat/call-overhead rows that do not shrink)."""
    modules = [r for r in rows if not r["overhead"] and r["kept_ms"] > 0][:n]
    fixed = [r for r in rows if r["overhead"] and r["unpruned_ms"] > 0 and (r["ratio"] or 0) >= 0.95]
    return modules, fixed


def choose_fix(current: dict, candidates: list[dict]) -> dict | None:
    """The measured candidate with the lowest INT8 ratio, when it is lower than the current one's."""
    measured = [c for c in candidates if c.get("int8_ratio") is not None]
    if not measured:
        return None
    best = min(measured, key=lambda c: c["int8_ratio"])
    return best if best["int8_ratio"] < current["int8_ratio"] else None


def _row_text(r: dict) -> str:
    tail = f", {r['ratio']:.2f}x" if r["ratio"] is not None else ""
    return f"{r['module']} ({r['unpruned_ms']:.4f} -> {r['pruned_ms']:.4f} ms{tail})"


def note_line(check: dict) -> str:
    """The stage note: the INT8 ratio beside the MACs ratio, what holds it, the fix measured (never applied)."""
    cur = check["current"]
    text = (f"prune: INT8 latency {cur['int8_ratio']:.2f}x at {cur['macs_ratio']:.2f}x MACs (FP32 "
            f"{cur['fp32_ratio']:.2f}x; {RUNTIME} {check['runtime_version']} U8S8 QDQ, batch 1, {check['threads']} "
            f"thread(s), measured)")
    if not check["above_threshold"]:
        return text + f"; at or below {check['threshold']:.2f}x, no fix searched (check took {check['seconds']:.1f} s)"
    mods = check.get("held_by") or []
    fixed = check.get("qdq_not_shrinking") or []
    if mods or fixed:
        more = f", and {len(mods) - NOTE_MODULES} more module(s)" if len(mods) > NOTE_MODULES else ""
        named = [", ".join(_row_text(r) for r in mods[:NOTE_MODULES]) + more] if mods else []
        named += [_row_text(r) for r in fixed]
        text += "; held by " + ", ".join(named)
    fix = check.get("int8_fix") or {}
    chosen = fix.get("chosen")
    if chosen:
        rt = chosen["round_to"]
        text += (f"; measured fix: prune.round_to={rt} gives INT8 {chosen['int8_ratio']:.2f}x at "
                 f"{chosen['macs_ratio']:.2f}x MACs (rerun with --set prune.round_to={rt})")
    else:
        tried = ", ".join(str(c["round_to"]) for c in fix.get("candidates", []))
        text += f"; no round_to tried ({tried or 'none'}) lowers the INT8 ratio"
    return text + (f"; the check took {check['seconds']:.1f} s (turn it off with prune.int8_check=false)")


def int8_check(before: Path, after: Path, macs_ratio: float, round_to: int | None, target_macs: float | None,
               prune_fn: Callable[[int, Path], float], calibration: np.ndarray, calib, x: np.ndarray, threads: int,
               bench, folder: Path, threshold: float = THRESHOLD,
               candidates: tuple[int, ...] = ROUND_TO_CANDIDATES) -> dict[str, Any]:
    """Measure the INT8 latency ratio of the pruned model `after` against `before` (FP32 ONNX files);
    above `threshold`, profile both, prune copies with other round_to values and measure them.

    prune_fn(round_to, onnx_path) prunes a copy of the unpruned student with that round_to (no recovery:
    latency does not depend on it), exports it to onnx_path and returns its MACs ratio; it raises to say
    the candidate is not possible (e.g. a layer left empty). Nothing is applied: the fix is offered.
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    folder = Path(folder)
    q = {k: quantize_int8(p, folder / f"{k}_int8.onnx", calibration, calib) for k, p in (("before", before),
                                                                                         ("after", after))}
    lat = measure_batch1({"before": before, "after": after}, q, x, threads, bench)
    current: dict[str, Any] = {"round_to": round_to, "macs_ratio": macs_ratio,
                               "fp32_ratio": ratio(lat, "after", "before", "fp32"),
                               "int8_ratio": ratio(lat, "after", "before", "int8")}
    check: dict[str, Any] = {"runtime": RUNTIME, "runtime_version": ort.__version__, "precision": PRECISION,
                             "source": "measured", "batch": 1, "threads": threads, "threshold": threshold,
                             "latency_ms": lat, "current": current,
                             "above_threshold": current["int8_ratio"] > threshold}
    if check["above_threshold"]:
        rows = compare_modules(int8_rows(q["before"], before, threads), int8_rows(q["after"], after, threads),
                               threshold)
        check["modules"] = rows
        check["held_by"], check["qdq_not_shrinking"] = holders(rows)
        check["profile"] = {"method": "onnxruntime profiler, per module INT8 kernel ms (pipeline.profile.ort)",
                            "iterations": PROFILE_ITERATIONS}
        check["int8_fix"] = search_round_to(current, {"before": before, "after": after}, q, prune_fn, target_macs,
                                            calibration, calib, x, threads, bench, folder, candidates)
    check["seconds"] = round(time.perf_counter() - t0, 2)
    check["note"] = note_line(check)
    return check


def search_round_to(current: dict, fp32_models: dict[str, Path], int8_models: dict[str, Path],
                    prune_fn: Callable[[int, Path], float], target_macs: float | None, calibration: np.ndarray,
                    calib, x: np.ndarray, threads: int, bench, folder: Path,
                    candidates: tuple[int, ...] = ROUND_TO_CANDIDATES) -> dict[str, Any]:
    """Prune, quantize and measure each round_to candidate beside the unpruned ("before") and the current
    pruned ("after") model in one interleaved session: {"candidates": [...], "current": the current model's
    ratios in that session, "chosen": the candidate with the lowest INT8 ratio when it beats the current one}."""
    reference = target_macs if target_macs is not None else current["macs_ratio"]
    tried: list[dict[str, Any]] = []
    fp32: dict[str, Path] = {k: fp32_models[k] for k in ("before", "after")}
    int8: dict[str, Path] = {k: int8_models[k] for k in ("before", "after")}
    for rt in candidates:
        if rt == (current["round_to"] or 1):
            continue
        c: dict[str, Any] = {"round_to": rt}
        tried.append(c)
        path = folder / f"round_to_{rt}.onnx"
        try:
            c["macs_ratio"] = prune_fn(rt, path)
        except Exception as e:  # noqa: BLE001 - a candidate that cannot be pruned is reported, not fatal
            c["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        if c["macs_ratio"] > reference + MAX_MACS_EXCESS:
            goal = "prune.target_macs_ratio" if target_macs is not None else "the recipe's pruned model"
            c["skipped"] = (f"{c['macs_ratio']:.3f}x MACs misses {goal} ({reference:.3f}x) by more than "
                            f"{MAX_MACS_EXCESS}")
            continue
        fp32[f"r{rt}"] = path
        int8[f"r{rt}"] = quantize_int8(path, folder / f"round_to_{rt}_int8.onnx", calibration, calib)
    same = None
    if len(fp32) > 2:
        lat = measure_batch1(fp32, int8, x, threads, bench)
        same = {**current, "fp32_ratio": ratio(lat, "after", "before", "fp32"),
                "int8_ratio": ratio(lat, "after", "before", "int8")}
        for c in tried:
            k = f"r{c['round_to']}"
            if k in lat:
                c.update(fp32_ratio=ratio(lat, k, "before", "fp32"), int8_ratio=ratio(lat, k, "before", "int8"),
                         fp32_ms=lat[k]["fp32"]["p50_ms"], int8_ms=lat[k]["int8"]["p50_ms"])
    chosen = choose_fix(same, tried) if same else None
    for c in tried:
        c["chosen"] = c is chosen
    return {"candidates": tried, "current": same, "chosen": chosen, "applied": False, "source": "measured",
            "batch": 1, "runtime": RUNTIME}


def summary_record(metrics: dict) -> dict[str, Any] | None:
    """run.json `prune`: the prune stage's MACs, FP32 and INT8 latency ratios and the INT8 fix offered
    (the full per-module comparison stays in the stage's meta.json)."""
    if not metrics.get("enabled"):
        return None
    check = metrics.get("int8_check")
    return {"method": metrics.get("method"), "round_to": metrics.get("round_to"),
            "macs_ratio": metrics.get("macs_ratio"), "latency_ratio": metrics.get("latency_ratio"),
            "int8_latency_ratio": metrics.get("int8_latency_ratio"), "int8_fix": metrics.get("int8_fix"),
            "int8_check": {k: v for k, v in check.items() if k not in ("modules", "int8_fix")} if check else None}
