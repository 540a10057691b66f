"""Strict JSON: what the tool writes and reads holds no NaN, Infinity or -Infinity.

Python's json module writes `NaN` / `Infinity` literals by default and reads them back (and reads `1e999` as
infinity): neither is JSON (RFC 8259), and most readers (browsers, jq, Go, Java) refuse the file.

- `dumps`: a non-finite float anywhere in the object is written as null (JSON has no value for it; a figure
  that could not be measured is "unknown"), with allow_nan=False as the guard.
- `loads`: a non-finite number anywhere in the document (a literal or an overflowing 1e999) is refused with a
  DataError (exit 2) naming the field, e.g. `latency_ms.p50 is Infinity`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import DataError


def _show(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def nonfinite_fields(obj: Any, where: str = "") -> list[tuple[str, float]]:
    """(field path, value) of every non-finite float in `obj` (dict keys joined by '.', list items as [i])."""
    out: list[tuple[str, float]] = []
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                out.append((path or "(the document)", v))
        elif isinstance(v, dict):
            stack.extend((f"{path}.{k}" if path else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return out


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (a copy of the containers that hold one)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """json.dumps that never writes NaN/Infinity (they become null); `default=str` unless given."""
    kw.setdefault("default", str)
    return json.dumps(finite(obj), allow_nan=False, **kw)


def check(obj: Any, where: str, hint: str) -> Any:
    """DataError (exit 2) naming the first non-finite field of `obj`; `obj` when there is none."""
    bad = nonfinite_fields(obj)
    if bad:
        path, v = bad[0]
        more = f" (and {len(bad) - 1} more non-finite field(s))" if len(bad) > 1 else ""
        raise DataError(f"{where}: {path} is {_show(v)}{more}: not a finite number, and not valid JSON",
                        hint=hint)
    return obj


def loads(text: str | bytes, where: str | Path, hint: str = "write the file again with finite numbers") -> Any:
    """json.loads, then `check`: ValueError for text that is not JSON, DataError for a non-finite number."""
    return check(json.loads(text), str(where), hint)
