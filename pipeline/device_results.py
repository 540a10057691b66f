"""Device results imported into a run: their own file, merged into every later run.json, report and bench.

`python -m pipeline import-results` stores each result in RUN_DIR/device_results.json (written atomically;
one record per (model sha256, profile, batch): a later import of the same model on the same profile replaces
the earlier one, which the new record lists under `replaces`). run.json is rebuilt by every `run` (also a fully cached one), so the results live here and
`merge_into` lays them over the summary: on the artifact they timed (name and sha256 must still match:
a result of a model the run no longer has is listed as stale, never shown as the new model's figure).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{p}: unreadable ({type(e).__name__}: {e})",
                        hint="restore it, or delete it and import the device results again") from None
    recs = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise DataError(f"{p}: has no 'results' list", hint="delete it and import the device results again")
    return recs


def _key(rec: dict) -> tuple:
    """The same model on the same profile at the same batch size is one result: a new import replaces it."""
    return (rec.get("sha256"), rec.get("target"), (rec.get("latency_ms") or {}).get("batch"))


def add(run_dir: str | Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge `records` into RUN_DIR/device_results.json (same sha256, profile and batch: the new one replaces
    the old one, which it lists in `replaces`); returns everything stored."""
    from pipeline.artifacts import atomic_write_json

    stored = load(run_dir)
    for rec in records:
        old = [r for r in stored if _key(r) == _key(rec)]
        stored = [r for r in stored if _key(r) != _key(rec)]
        if old:
            rec = {**rec, "replaces": [{"imported_at": o.get("imported_at"), "file_sha256": o.get("file_sha256")}
                                       for o in old]}
        stored.append(rec)
    atomic_write_json(path_of(run_dir), {"schema_version": SCHEMA_VERSION, "results": stored})
    return stored


def merge_into(summary: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Lay RUN_DIR's device results over `summary` (a run.json dict), in place; returns it.

    Each record goes onto the artifact it timed (same name and run.json sha256): `device_latency_ms`,
    `device_peak_rss_mb`, both `source: device-measured`; host figures are never touched. The records
    are listed in summary["device_results"], the ones whose artifact changed in "device_results_stale"."""
    recs = load(run_dir)
    if not recs:
        return summary
    arts = {a.get("name"): a for a in summary.get("artifacts") or []}
    applied, stale = [], []
    for rec in recs:
        a = arts.get(rec.get("artifact"))
        if a is None or a.get("sha256") != rec.get("artifact_sha256"):
            stale.append({k: rec.get(k) for k in ("artifact", "target", "sha256", "device", "imported_at")})
            continue
        a["device_latency_ms"] = rec["latency_ms"]
        if rec.get("peak_rss_mb"):
            a["device_peak_rss_mb"] = rec["peak_rss_mb"]
        applied.append({k: rec.get(k) for k in ("artifact", "target", "sha256", "device", "runtime", "p50_ms",
                                                "imported_at", "file", "file_sha256", "machine", "notes")})
    summary["device_results"] = applied
    if stale:
        summary["device_results_stale"] = stale
        notes = summary.setdefault("notes", [])
        for s in stale:
            notes.append(f"device result for {s['artifact']} on {s['device']} (imported {s['imported_at']}) is not "
                         "shown: the run's artifact changed since (import a result of the new model)")
    return summary
