"""Per-layer profiles with intervals: the backend's profile repeated, every row a median over the repeats with a
95% interval (pipeline/measure/core.py's order-statistic interval), never a negative figure.

Rules (docs/ARCHITECTURE.md "Per-layer profile"):
- the backend profiler runs in repeats (float then INT8 in each repeat, so a drift of the host hits both); a row's
  figure per repeat is what build_rows gives it in that repeat (0 when the row has no op in that repeat);
- a row's figure is the median over the repeats, its interval the order-statistic 95% interval, its lower end
  clamped at 0 (a latency is not negative; a negative prefix difference is noise);
- a row whose interval reaches 0 (or whose median is <= 0) is indistinguishable from zero: its value is null and
  `below_resolution.<variant>` is true: "below resolution", never a number that noise made up;
- it repeats until the end-to-end figures have a relative half-width <= 5% and every row's half-width is <= 5% of
  the end-to-end figure, or the time cap; a noisy host (the CV of the end-to-end figures across repeats above
  CV_NOISY, or the load average above the cores) doubles the repeats and the time cap before it gives up;
- rows / end-to-end is a median over the repeats with its interval and a verdict of its own.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from pipeline.measure.core import CONFIDENCE, cores, cv, host_noise, load_average, median_ci
from pipeline.profile.mapping import OnnxIndex
from pipeline.profile.schema import VARIANTS, OpTime, VariantProfile, build_rows, profile_doc

COVERAGE_TOLERANCE = 0.15  # rows / end-to-end within 15%: the rows explain the end-to-end time


@dataclass(frozen=True)
class RepeatSettings:
    min_repeats: int = 6       # the least n with a 95% order-statistic interval ([min, max] at n = 6..8)
    max_repeats: int = 12
    max_time_s: float = 60.0
    rel_half_width: float = 0.05
    noisy_factor: int = 2      # a noisy host: max_repeats and max_time_s times this


def _stat(values: list[float]) -> tuple[float, list[float] | None]:
    ci = median_ci(values, CONFIDENCE)
    return statistics.median(values), None if ci is None else [max(0.0, ci[0]), max(0.0, ci[1])]


def _row_values(repeats: list[dict[str, VariantProfile]], index: OnnxIndex | None) -> dict[str, dict[str, list[float]]]:
    """label -> variant -> figure per repeat (0.0 where the row has no op in that repeat)."""
    per: dict[str, dict[str, list[float | None]]] = {}
    for i, variants in enumerate(repeats):
        rows, _ = build_rows(variants, index)
        for r in rows:
            d = per.setdefault(r["label"], {v: [None] * len(repeats) for v in VARIANTS})
            for v in VARIANTS:
                if r[f"{v}_ms"] is not None:
                    d[v][i] = r[f"{v}_ms"]
    out: dict[str, dict[str, list[float]]] = {}
    for label, d in per.items():
        out[label] = {v: [0.0 if x is None else float(x) for x in vals] for v, vals in d.items()
                      if any(x is not None for x in vals)}
    return out


def _merge(repeats: list[dict[str, VariantProfile]]) -> dict[str, VariantProfile]:
    """One VariantProfile per variant: every op at its median over the repeats (never below 0), end-to-end and call
    overhead at their medians."""
    out = {}
    for v in repeats[0]:
        vps = [r[v] for r in repeats if v in r]
        first = vps[0]
        by_name: dict[str, list[OpTime]] = {}
        for vp in vps:
            for op in vp.ops:
                by_name.setdefault(op.name, []).append(op)
        ops = []
        for name, same in by_name.items():
            vals = [o.ms for o in same] + [0.0] * (len(vps) - len(same))
            o = same[0]
            ops.append(OpTime(name=name, type=o.type, ms=max(0.0, statistics.median(vals)), precision=o.precision,
                              names=o.names, module_hint=o.module_hint))
        calls = [vp.call_overhead_ms for vp in vps if vp.call_overhead_ms is not None]
        out[v] = VariantProfile(ops=ops, total_ms=statistics.median(vp.total_ms for vp in vps), runtime=first.runtime,
                                runtime_version=first.runtime_version, method=first.method,
                                iterations=sum(vp.iterations for vp in vps), left_out=first.left_out,
                                call_overhead_ms=max(0.0, statistics.median(calls)) if calls else None,
                                extra_ms=first.extra_ms)
    return out


def _converged(repeats: list[dict[str, VariantProfile]], index: OnnxIndex | None, rel: float) -> bool:
    totals = {v: [r[v].total_ms for r in repeats] for v in repeats[0]}
    ref = {}
    for v, vals in totals.items():
        med, ci = _stat(vals)
        if ci is None or med <= 0 or (ci[1] - ci[0]) / 2 > rel * med:
            return False
        ref[v] = med
    for d in _row_values(repeats, index).values():
        for v, vals in d.items():
            _, ci = _stat(vals)
            if ci is None or (ci[1] - ci[0]) / 2 > rel * ref.get(v, 0.0):
                return False
    return True


def _noise(repeats: list[dict[str, VariantProfile]]) -> tuple[bool, str | None, float | None, int]:
    load1, n = load_average(), cores()
    cvs = [cv([r[v].total_ms for r in repeats]) for v in repeats[0]]
    noisy, why = host_noise(cvs, load1, n)
    return noisy, why, load1, n


def repeat_profiles(run_once: Callable[[], dict[str, VariantProfile]], index: OnnxIndex | None,
                    settings: RepeatSettings = RepeatSettings()) -> tuple[list[dict[str, VariantProfile]], dict]:
    """Run the backend profile until converged or capped; returns (the repeats, how it stopped)."""
    repeats: list[dict[str, VariantProfile]] = []
    start = time.perf_counter()
    stopped = "max repeats"
    max_rep, cap = settings.max_repeats, settings.max_time_s
    extended = False
    while len(repeats) < max_rep:
        repeats.append(run_once())
        if len(repeats) < settings.min_repeats:
            continue
        if _converged(repeats, index, settings.rel_half_width):
            stopped = "converged"
            break
        noisy, *_ = _noise(repeats)
        if noisy and not extended:  # a noisy host: repeat more before giving up
            max_rep, cap, extended = max_rep * settings.noisy_factor, cap * settings.noisy_factor, True
        if time.perf_counter() - start >= cap:
            stopped = "time cap"
            break
    noisy, why, load1, n = _noise(repeats)
    return repeats, {"repeats": len(repeats), "stopped": stopped, "seconds": round(time.perf_counter() - start, 1),
                     "noisy": noisy, "noisy_reason": why, "load1": load1, "cores": n,
                     "repeats_extended_for_noise": extended, "rel_half_width_target": settings.rel_half_width}


def coverage_verdict(med: float, ci: list[float] | None, noisy: bool, why: str | None) -> str:
    lo_ok, hi_ok = 1 - COVERAGE_TOLERANCE, 1 + COVERAGE_TOLERANCE
    if ci is not None and lo_ok <= ci[0] and ci[1] <= hi_ok:
        return "the rows explain the end-to-end time (interval within 15%)"
    if lo_ok <= med <= hi_ok:
        return "within 15% by the median" + ("" if ci is None else f"; interval [{ci[0]:.2f}, {ci[1]:.2f}] is wider")
    if noisy:
        return f"outside 15%: not trusted, noisy host ({why})"
    return ("outside 15% on a quiet host: the rows miss (or double count) part of the end-to-end time; see "
            "left_out and the method")


def interval_doc(target: str, backend: str, source: str, host: str, threads: int,
                 repeats: list[dict[str, VariantProfile]], index: OnnxIndex | None, info: dict) -> dict:
    """profile_doc of the merged repeats, every row and figure with its interval, nothing negative."""
    doc = profile_doc(target, backend, source, host, threads, _merge(repeats), index)
    values = _row_values(repeats, index)
    for r in doc["rows"]:
        r["ci95_ms"], r["below_resolution"], r["samples"] = {}, {}, {}
        for v in VARIANTS:
            vals = values.get(r["label"], {}).get(v)
            if vals is None:
                r[f"{v}_ms"] = None
                continue
            med, ci = _stat(vals)
            below = med <= 0 or ci is None or ci[0] <= 0
            r[f"{v}_ms"] = None if below else round(med, 6)
            r["ci95_ms"][v] = None if ci is None else [round(x, 6) for x in ci]
            r["below_resolution"][v] = below
            r["samples"][v] = len(vals)
        for o in r["ops"]:
            o["ms"] = max(0.0, o["ms"])
        r["overhead_ms"] = {k: max(0.0, x) for k, x in r["overhead_ms"].items()}
    doc.update(info)
    n_rep = len(repeats)
    for v, key in (("int8", "total_ms"), ("float", "total_float_ms")):
        if v not in repeats[0]:
            continue
        totals = [rep[v].total_ms for rep in repeats]
        med, ci = _stat(totals)
        doc[key] = round(med, 6)
        doc[f"{key[:-3]}_ci95_ms"] = None if ci is None else [round(x, 6) for x in ci]
        sums = [max(0.0, sum(d[v][i] for d in values.values() if v in d)) for i in range(n_rep)]
        s_med, s_ci = _stat(sums)
        doc[f"sum_{v}_ms"] = round(s_med, 6)
        doc[f"sum_{v}_ci95_ms"] = None if s_ci is None else [round(x, 6) for x in s_ci]
        cov = [s / t for s, t in zip(sums, totals) if t > 0]
        c_med, c_ci = _stat(cov)
        doc.setdefault("coverage", {})[v] = {
            "median": round(c_med, 4), "ci95": None if c_ci is None else [round(x, 4) for x in c_ci],
            "verdict": coverage_verdict(c_med, c_ci, bool(info.get("noisy")), info.get("noisy_reason"))}
    doc["samples"] = {v: sum(rep[v].iterations for rep in repeats if v in rep) for v in repeats[0]}
    doc["iterations"] = doc["samples"]
    doc["interval_method"] = ("median over the profile's repeats; distribution-free order-statistic 95% interval "
                              "(pipeline/measure/core.py), lower end clamped at 0; a row whose interval reaches 0 "
                              "is below resolution (null)")
    return doc
