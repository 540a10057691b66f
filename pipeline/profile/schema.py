"""One per-layer profile schema for every backend (run.json `targets.<profile>.layer_profile`, report, --json).

    {"target": profile name, "backend", "runtime", "runtime_version", "host", "source": measured |
     host-measured | device-measured, "method": how per-op times were taken, "threads", "batch": 1,
     "total_ms": measured end-to-end p50 of the INT8 artifact, "total_float_ms": same for the float one,
     "sum_int8_ms"/"sum_float_ms": sum of the rows, "left_out": what the rows do not cover,
     "unmapped_ops": runtime ops not mapped to a module, "call_overhead_ms": the runtime's fixed cost per call
     measured on a one-op model (the part of total_ms no row can hold),
     "rows": [{"module": PyTorch module path ('' = the model's own forward, None = unmapped),
               "label", "ops": [{"name", "type", "kind", "variant", "ms", "precision"}],
               "float_ms", "int8_ms", "precision" (INT8 artifact), "float_precision",
               "overhead_ms": {"float", "int8"} (reformat / Q / DQ ops inside the row)}]}
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.profile.mapping import OnnxIndex, op_kind

VARIANTS = ("float", "int8")
OVERHEAD_KINDS = ("quantize", "reformat")
CALL_ROW = "(runtime call overhead)"


@dataclass
class OpTime:
    """One runtime op: its median time per inference over the profiled iterations."""

    name: str
    type: str
    ms: float
    precision: str | None = None
    names: tuple[str, ...] = ()     # other names to resolve it by (OpenVINO: originalLayersNames)
    module_hint: str | None = None  # a module path the runtime itself gives (LiteRT tensor names)


@dataclass
class VariantProfile:
    """The ops of one artifact and its end-to-end p50 measured in the same process, same threads."""

    ops: list[OpTime]
    total_ms: float
    runtime: str
    runtime_version: str
    method: str
    iterations: int
    left_out: str
    # The runtime's fixed cost per call, measured the same way on a one-op model (Relu on the same input):
    # what no op's counter holds. It becomes a row of its own (CALL_ROW), never part of a module's row.
    call_overhead_ms: float | None = None
    # Other time no op counter holds, each a row of its own: label -> (ms, source of the figure).
    extra_ms: dict[str, tuple[float, str]] = field(default_factory=dict)


def short_precision(p: str | None) -> str | None:
    if not p:
        return None
    p = p.lower()
    for k, v in (("bf16", "bf16"), ("f16", "f16"), ("fp16", "f16"), ("f32", "f32"), ("fp32", "f32"),
                 ("float32", "f32"), ("float", "f32"), ("u8", "u8"), ("uint8", "u8"), ("i8", "i8"), ("int8", "i8"),
                 ("i32", "i32"), ("int32", "i32"), ("int64", "i64"), ("i64", "i64")):
        if p.endswith(k) or p == k:
            return v
    return p


def build_rows(variants: dict[str, VariantProfile], index: OnnxIndex | None) -> tuple[list[dict], list[str]]:
    """Group every op of both variants by module; unmapped ops get rows of their own (module None)."""
    rows: dict[str, dict] = {}
    unmapped: list[str] = []
    order: list[str] = []
    for variant, vp in variants.items():
        for op in vp.ops:
            module = op.module_hint
            if module is None and index is not None:
                module, _ = index.resolve([op.name, *op.names], op.type)
            kind = op_kind(op.type)
            if module is None:
                key = f"unmapped {kind}: {op.type}"
                unmapped.append(f"{variant} {op.type} {op.name!r}")
            else:
                key = module
            if key not in rows:
                order.append(key)
                rows[key] = {"module": module, "label": (module or "(top level)") if module is not None else key,
                             "ops": [], "float_ms": None, "int8_ms": None, "precision": None,
                             "float_precision": None, "overhead_ms": {"float": 0.0, "int8": 0.0}}
            r = rows[key]
            r["ops"].append({"name": op.name, "type": op.type, "kind": kind, "variant": variant,
                             "ms": round(op.ms, 6), "precision": op.precision})
            r[f"{variant}_ms"] = (r[f"{variant}_ms"] or 0.0) + op.ms
            if kind in OVERHEAD_KINDS:
                r["overhead_ms"][variant] += op.ms
    _add_fixed_rows(variants, rows, order)
    for r in rows.values():
        for variant, col in (("int8", "precision"), ("float", "float_precision")):
            precs = [o["precision"] for o in r["ops"] if o["variant"] == variant and o["kind"] == "compute"
                     and o["precision"]] or [o["precision"] for o in r["ops"] if o["variant"] == variant
                                             and o["precision"]]
            r[col] = "+".join(dict.fromkeys(precs)) or None
        for k in ("float_ms", "int8_ms"):
            if r[k] is not None:
                r[k] = round(r[k], 6)
        r["overhead_ms"] = {k: round(v, 6) for k, v in r["overhead_ms"].items()}
    return [rows[k] for k in order], unmapped


def _add_fixed_rows(variants: dict[str, VariantProfile], rows: dict[str, dict], order: list[str]) -> None:
    """Rows for the time that is in the end-to-end figure but in no op's counter: the runtime's measured
    fixed cost per call, and what a backend declares in extra_ms (e.g. a counter's resolution)."""
    for variant, vp in variants.items():
        fixed = dict(vp.extra_ms)
        if vp.call_overhead_ms is not None:
            fixed = {CALL_ROW: (vp.call_overhead_ms, "measured"), **fixed}
        for label, (ms, source) in fixed.items():
            if label not in rows:
                order.append(label)
                rows[label] = {"module": None, "label": label, "ops": [], "float_ms": None, "int8_ms": None,
                               "precision": None, "float_precision": None, "source": source,
                               "overhead_ms": {"float": 0.0, "int8": 0.0}}
            r = rows[label]
            r["ops"].append({"name": label, "type": "fixed", "kind": "fixed", "variant": variant,
                             "ms": round(ms, 6), "precision": None})
            r[f"{variant}_ms"] = ms


def profile_doc(target: str, backend: str, source: str, host: str, threads: int,
                variants: dict[str, VariantProfile], index: OnnxIndex | None) -> dict:
    rows, unmapped = build_rows(variants, index)
    any_v = next(iter(variants.values()))
    doc = {"target": target, "backend": backend, "runtime": any_v.runtime, "runtime_version": any_v.runtime_version,
           "host": host, "source": source, "threads": threads, "batch": 1,
           "method": {v: vp.method for v, vp in variants.items()},
           "iterations": {v: vp.iterations for v, vp in variants.items()},
           "total_ms": round(variants["int8"].total_ms, 6) if "int8" in variants else None,
           "total_float_ms": round(variants["float"].total_ms, 6) if "float" in variants else None,
           "rows": rows, "unmapped_ops": unmapped,
           "left_out": {v: vp.left_out for v, vp in variants.items()},
           "call_overhead_ms": {v: None if vp.call_overhead_ms is None else round(vp.call_overhead_ms, 6)
                                for v, vp in variants.items()}}
    for v in VARIANTS:
        vals = [r[f"{v}_ms"] for r in rows if r[f"{v}_ms"] is not None]
        doc[f"sum_{v}_ms"] = round(sum(vals), 6) if vals else None
    return doc


def coverage(doc: dict) -> dict[str, float | None]:
    """Sum of the rows / measured end-to-end p50, per variant (1.0 = the rows explain all the time)."""
    out = {}
    for v, total in (("int8", doc.get("total_ms")), ("float", doc.get("total_float_ms"))):
        s = doc.get(f"sum_{v}_ms")
        out[v] = (s / total) if s is not None and total else None
    return out

