"""The per-layer profile tables of report.md / report.html (from run.json targets.<profile>.layer_profile)."""
from __future__ import annotations


def _ms(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def profile_sections(summary: dict) -> list[tuple[str, str, list[dict[str, str]]]]:
    """[(title, caption, rows)] for every target that has a per-layer profile."""
    out = []
    for name, t in (summary.get("targets") or {}).items():
        doc = (t or {}).get("layer_profile")
        if not doc or not doc.get("rows"):
            continue
        rows = []
        for r in doc["rows"]:
            ratio = f"{r['int8_ms'] / r['float_ms']:.2f}" if r.get("int8_ms") is not None and r.get("float_ms") else "—"
            rows.append({"module": r.get("label") or str(r.get("module")),
                         "ops": ", ".join(dict.fromkeys(o["type"] for o in r.get("ops", []))),
                         "float ms": _ms(r.get("float_ms")), "int8 ms": _ms(r.get("int8_ms")), "int8/float": ratio,
                         "int8 precision": r.get("precision") or "—",
                         "reformat/Q/DQ ms (int8)": _ms((r.get("overhead_ms") or {}).get("int8"))})
        rows.append({"module": "sum of rows", "ops": "", "float ms": _ms(doc.get("sum_float_ms")),
                     "int8 ms": _ms(doc.get("sum_int8_ms")), "int8/float": "", "int8 precision": "",
                     "reformat/Q/DQ ms (int8)": ""})
        rows.append({"module": "end-to-end p50", "ops": "", "float ms": _ms(doc.get("total_float_ms")),
                     "int8 ms": _ms(doc.get("total_ms")), "int8/float": "", "int8 precision": "",
                     "reformat/Q/DQ ms (int8)": ""})
        left = (doc.get("left_out") or {})
        cap = (f"{doc.get('runtime')} {doc.get('runtime_version')} on {doc.get('host')}, "
               f"{doc.get('threads') or '—'} thread(s), batch 1, source: {doc.get('source')}. Method: "
               + "; ".join(f"{k}: {v}" for k, v in (doc.get("method") or {}).items())
               + ". Left out of the rows: " + "; ".join(dict.fromkeys(left.values())) + ".")
        call = {v: c for v, c in (doc.get("call_overhead_ms") or {}).items() if c is not None}
        if call:
            cap += (" Row '(runtime call overhead)': the runtime's fixed cost per call, measured on a one-op model: "
                    + ", ".join(f"{v} {c:.4f} ms" for v, c in call.items()) + ".")
        if doc.get("unmapped_ops"):
            cap += f" Not mapped to a PyTorch module: {len(doc['unmapped_ops'])} op(s) (rows 'unmapped ...')."
        out.append((f"Per-layer profile: {name}", cap, rows))
    return out
