"""Device results imported into a run: their own file, merged into every later run.json, report and bench.

`python -m pipeline import-results` stores each result in RUN_DIR/device_results.json (written atomically;
every import is kept, with its imported_at: a later import of the same model on the same profile and batch is
shown, the earlier ones are listed under `earlier`, never overwritten; every figure is finite, strict JSON). run.json is rebuilt by every `run` (also a fully cached one), so the results live here and
`merge_into` lays them over the summary: on the artifact they timed (name and sha256 must still match:
a result of a model the run no longer has is listed as stale, never shown as the new model's figure).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import strict_json

FILE = "device_results.json"
SCHEMA_VERSION = "1"

# platform.machine() spellings -> the profiles' cpu_arch
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
         "armv8": "aarch64", "armv8l": "aarch64"}


def normalise_arch(machine: str | None) -> str | None:
    if not machine:
        return None
    return _ARCH.get(str(machine).strip().lower(), str(machine).strip().lower())


def path_of(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILE


def load(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/device_results.json ([] when there is none)."""
    from pipeline.errors import DataError

    p = path_of(run_dir)
    if not p.is_file():
        return []
    try:
        doc = strict_json.loads(p.read_text(encoding="utf-8"), p,
                                hint="delete it and import the device results again")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{p}: unreadable ({type(e).__name__}: {e})",
                        hint="restore it, or delete it and import the device results again") from None
    recs = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise DataError(f"{p}: has no 'results' list", hint="delete it and import the device results again")
    return recs


def _key(rec: dict) -> tuple:
    """The same model on the same profile at the same batch size: the latest import is the one shown."""
    return (rec.get("sha256"), rec.get("target"), (rec.get("latency_ms") or {}).get("batch"))


def add(run_dir: str | Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append `records` to RUN_DIR/device_results.json; returns everything stored.

    Nothing is replaced: a later import of the same model on the same profile and batch is kept beside the
    earlier ones (each with its imported_at); `merge_into` shows the latest and lists the earlier ones.
    Every figure is finite (strict_json refuses the rest on reading), so no import can poison a record."""
    from pipeline.artifacts import atomic_write_json

    stored = load(run_dir) + [strict_json.check(r, "device result", hint="import the unmodified bench.py JSON")
                              for r in records]
    atomic_write_json(path_of(run_dir), {"schema_version": SCHEMA_VERSION, "results": stored})
    return stored


def _earlier(rec: dict) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("imported_at", "p50_ms", "device", "file", "file_sha256")}


def merge_into(summary: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Lay RUN_DIR's device results over `summary` (a run.json dict), in place; returns it.

    Each record goes onto the artifact it timed (same name and run.json sha256): `device_latency_ms`,
    `device_peak_rss_mb`, both `source: device-measured`; host figures are never touched. The records
    are listed in summary["device_results"], the ones whose artifact changed in "device_results_stale"."""
    recs = load(run_dir)
    if not recs:
        return summary
    arts = {a.get("name"): a for a in summary.get("artifacts") or []}
    stale = []
    latest: dict[tuple, list[dict]] = {}  # key -> its records in import order (the last one is shown)
    for rec in recs:
        a = arts.get(rec.get("artifact"))
        if a is None or a.get("sha256") != rec.get("artifact_sha256"):
            stale.append({k: rec.get(k) for k in ("artifact", "target", "sha256", "device", "imported_at")})
            continue
        latest.setdefault((rec.get("artifact"), *_key(rec)), []).append(rec)
    applied = []
    for group in latest.values():
        rec, earlier = group[-1], [_earlier(r) for r in group[:-1]]
        a = arts[rec["artifact"]]
        a["device_latency_ms"] = {**rec["latency_ms"], **({"earlier": earlier} if earlier else {})}
        if rec.get("peak_rss_mb"):
            a["device_peak_rss_mb"] = rec["peak_rss_mb"]
        applied.append({**{k: rec.get(k) for k in ("artifact", "target", "sha256", "device", "runtime", "p50_ms",
                                                   "imported_at", "file", "file_sha256", "machine", "notes")},
                        "earlier": earlier})
    summary["device_results"] = applied
    if stale:
        summary["device_results_stale"] = stale
        notes = summary.setdefault("notes", [])
        for s in stale:
            notes.append(f"device result for {s['artifact']} on {s['device']} (imported {s['imported_at']}) is not "
                         "shown: the run's artifact changed since (import a result of the new model)")
    return summary
