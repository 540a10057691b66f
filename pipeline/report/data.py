"""What the report shows, read from run.json and the stage folders (no plotting here).

Every latency figure keeps the source it was recorded with (measured | host-measured | estimated |
device-measured); nothing in this module turns an estimate into a measurement.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import ConfigError
from pipeline import strict_json

SOURCE_MEANING = {
    "measured": "target runtime ran on this host",
    "host-measured": "target artifact ran on this host, not on the device",
    "estimated": "roofline from MACs/bytes and the profile's peaks, not run",
    "device-measured": "imported from the bundle's benchmark on the real device",
    "unknown": "no source was recorded with this figure",
}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json of RUN_DIR, checked to be a pipeline run summary."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist",
                          hint="pass the --out folder of a finished `python -m pipeline run`")
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run_dir} is not a finished run folder",
                          hint="pass the --out folder of a finished `python -m pipeline run` (run.json is written last)")
    try:
        summary = strict_json.loads(path.read_text(), path, hint="rerun `python -m pipeline run` to rewrite it")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON: {e}", hint="rerun `python -m pipeline run` to rewrite it")
    if not isinstance(summary, dict) or not isinstance(summary.get("artifacts"), list) \
            or not isinstance(summary.get("stages"), list):
        raise ConfigError(f"{path} is not a pipeline run summary (no artifacts/stages lists)",
                          hint="pass the run folder written by `python -m pipeline run`")
    from pipeline.device_results import merge_into

    return merge_into(summary, run_dir)  # results imported after run.json was written


# --------------------------------------------------------------------------- accuracy vs latency


@dataclass
class Point:
    name: str
    latency_ms: float
    accuracy: float
    source: str
    precision: str = ""
    target: str | None = None
    pareto: bool = False


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, lowest latency first.

    points: (latency, accuracy) pairs; lower latency and higher accuracy are better. A point is
    dominated when another is at least as good on both and strictly better on one; identical points
    do not dominate each other, so both stay on the front.
    """
    front = []
    for i, (li, ai) in enumerate(points):
        dominated = any((lj <= li and aj >= ai) and (lj < li or aj > ai)
                        for j, (lj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def accuracy_latency_points(summary: dict) -> tuple[list[Point], list[str]]:
    """Plottable points (accuracy and a p50 latency with a source) and why the others are left out."""
    points, left_out = [], []
    for a in summary["artifacts"]:
        lat = a.get("latency_ms") or {}
        p50, src, acc = lat.get("p50"), lat.get("source"), a.get("accuracy")
        if acc is None:
            left_out.append(f"{a['name']}: accuracy not evaluated")
        elif p50 is None or not src or src == "not measured":
            left_out.append(f"{a['name']}: latency {src or 'not measured'}")
        else:
            points.append(Point(a["name"], float(p50), float(acc), str(src), a.get("precision", ""), a.get("target")))
    for i in pareto_front([(p.latency_ms, p.accuracy) for p in points]):
        points[i].pareto = True
    return points, left_out


# --------------------------------------------------------------------------- sizes


@dataclass
class SizeBar:
    label: str
    size_bytes: int
    kind: str          # teacher | student | pruned | target
    how: str           # how the size was obtained


def _stage_meta(run_dir: Path, summary: dict, stage: str) -> dict | None:
    rec = next((s for s in summary["stages"] if s.get("stage") == stage or s.get("name") == stage), None)
    if not rec or not rec.get("dir"):
        return None
    try:
        return json.loads((run_dir / rec["dir"] / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def size_bars(run_dir: str | Path, summary: dict) -> tuple[list[SizeBar], list[str]]:
    """Model size per stage: teacher FP32, student FP32 (before pruning when pruned), pruned, each target's INT8."""
    run_dir = Path(run_dir)
    arts = {a["name"]: a for a in summary["artifacts"]}
    bars, notes = [], []
    t = arts.get("teacher")
    if t and t.get("size_bytes"):
        bars.append(SizeBar("teacher FP32", int(t["size_bytes"]), "teacher", "ONNX file size"))
    s = arts.get("student")
    if s and s.get("size_bytes"):
        if s.get("pruned"):
            meta = _stage_meta(run_dir, summary, "distill")
            params = ((meta or {}).get("metrics") or {}).get("params")
            if params:
                bars.append(SizeBar("student FP32 (before pruning)", int(params) * 4, "student",
                                    "computed: parameters × 4 bytes (no ONNX of the unpruned student is written)"))
            else:
                notes.append("student before pruning: distill stage metrics not found, bar left out")
            bars.append(SizeBar("student FP32 pruned", int(s["size_bytes"]), "pruned", "ONNX file size"))
        else:
            bars.append(SizeBar("student FP32", int(s["size_bytes"]), "student", "ONNX file size"))
    for a in summary["artifacts"]:
        if a.get("role") == "target" and a["name"].endswith(":int8") and a.get("size_bytes"):
            prec = str(a.get("precision") or "int8").upper()
            bars.append(SizeBar(f"{a.get('target') or a['name']} {prec}", int(a["size_bytes"]), "target",
                                "model files of the target (sum of file sizes)"))
    return bars, notes


# --------------------------------------------------------------------------- latency distributions


@dataclass
class BenchCase:
    label: str                 # artifact name the case measured
    stage: str
    case: str
    source: str
    stats: dict[str, float]    # min, p50, p90, p99, max over all repeats (ms)
    repeat_p50: list[float] = field(default_factory=list)
    iterations: int = 0


def _case_label(stage_name: str, case: str) -> str:
    if stage_name == "benchmark-fp32":
        return case
    return f"{stage_name.removeprefix('benchmark-')}:{case}"


def bench_cases(run_dir: str | Path, summary: dict) -> tuple[list[BenchCase], list[str]]:
    """Measured cases from every benchmark stage's bench.json (per-repeat latency results)."""
    run_dir = Path(run_dir)
    cases, notes = [], []
    for rec in summary["stages"]:
        stage = str(rec.get("stage") or rec.get("name") or "")
        if not stage.startswith("benchmark"):
            continue
        path = run_dir / str(rec.get("dir", "")) / "bench.json"
        try:
            bench = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            notes.append(f"{stage}: bench.json not readable ({type(e).__name__}); its cases are not shown")
            continue
        for cname, c in bench.items():
            if not isinstance(c, dict):
                continue
            reps = [r for r in c.get("repeats") or [] if isinstance(r, dict) and r.get("latency_ms")]
            if not reps:
                notes.append(f"{stage}/{cname}: no per-repeat results")
                continue
            agg = c.get("latency_ms") or {}
            rl = [r["latency_ms"] for r in reps]

            def over_repeats(key, fn, rl=rl, agg=agg):
                vals = [float(x[key]) for x in rl if x.get(key) is not None]
                return fn(vals) if vals else (float(agg[key]) if agg.get(key) is not None else None)

            def aggregate(key, rl=rl, agg=agg):  # the case's own aggregate (median of medians), else the median
                if agg.get(key) is not None:
                    return float(agg[key])
                vals = sorted(float(x[key]) for x in rl if x.get(key) is not None)
                return vals[len(vals) // 2] if vals else None

            stats = {"min": over_repeats("min", min), "p50": aggregate("p50"), "p90": aggregate("p90"),
                     "p99": aggregate("p99"), "max": over_repeats("max", max)}
            if stats["p50"] is None:
                notes.append(f"{stage}/{cname}: no p50 in bench.json")
                continue
            src = c.get("source") or reps[0].get("source") or "unknown"  # never assumed measured
            cases.append(BenchCase(_case_label(stage, cname), stage, cname, str(src), stats,
                                   [float(x["p50"]) for x in rl if x.get("p50") is not None],
                                   sum(int(r.get("iterations") or 0) for r in reps)))
    return cases, notes


def single_figures(summary: dict, cases: list[BenchCase]) -> list[tuple[str, dict]]:
    """Artifacts whose latency has no per-iteration results here (estimates, device imports): (name, latency)."""
    covered = {c.label for c in cases}
    out = []
    for a in summary["artifacts"]:
        lat = a.get("latency_ms") or {}
        if a["name"] in covered or lat.get("p50") is None or lat.get("source") in (None, "not measured"):
            continue
        out.append((a["name"], lat))
    return out


# --------------------------------------------------------------------------- device-measured results


def device_rows(summary: dict) -> list[dict[str, str]]:
    """One row per artifact with an imported device result (labelled device-measured, never mixed with host rows)."""
    rows = []
    for a in summary.get("artifacts") or []:
        lat = a.get("device_latency_ms")
        if not isinstance(lat, dict):
            continue
        rss = a.get("device_peak_rss_mb") or {}
        f = lambda v, fmt="{:.4g}": "—" if v is None else fmt.format(v)  # noqa: E731
        rows.append({"artifact": a["name"], "device": str(lat.get("device") or "?"),
                     "runtime": f"{lat.get('runtime') or '?'} {lat.get('runtime_version') or ''}".strip(),
                     "batch": f(lat.get("batch"), "{}"), "p50 ms": f(lat.get("p50")), "p90 ms": f(lat.get("p90")),
                     "peak MB": f(rss.get("value"), "{:.1f}"), "source": str(lat.get("source") or "unknown"),
                     "imported": str(lat.get("imported_at") or "?"), "note": str(lat.get("note") or "")})
    return rows
