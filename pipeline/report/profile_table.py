"""The per-layer profile tables of report.md / report.html (from run.json targets.<profile>.layer_profile)."""
from __future__ import annotations


def _ms(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def row_cell(r: dict, variant: str) -> str:
    """A row's figure for one variant: `0.0123 [0.0120, 0.0131]`, "below resolution" (its 95% interval reaches
    zero: no number), or — (the variant has no op in this row)."""
    if (r.get("below_resolution") or {}).get(variant):
        ci = (r.get("ci95_ms") or {}).get(variant)
        return "below resolution" + (f" (< {ci[1]:.4f})" if ci and ci[1] >= 0.00005 else "")
    v = r.get(f"{variant}_ms")
    ci = (r.get("ci95_ms") or {}).get(variant)
    if v is None:
        return "—"
    return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def total_cell(doc: dict, key: str) -> str:
    v, ci = doc.get(key), doc.get(f"{key[:-3]}_ci95_ms")
    if v is None:
        return "—"
    return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def noise_lines(doc: dict) -> list[str]:
    """The verdict lines of a profile: rows / end-to-end per variant, how the repeats stopped, the host's noise."""
    out = []
    for v, c in (doc.get("coverage") or {}).items():
        ci = c.get("ci95")
        out.append(f"rows / end-to-end ({v}): {c['median']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                   + f": {c['verdict']}")
    if doc.get("repeats"):
        out.append(f"{doc['repeats']} repeats, {doc.get('stopped')} ({doc.get('seconds')} s; target: 95% half-width "
                   f"<= {doc.get('rel_half_width_target', 0.05):.0%} of the end-to-end figure)"
                   + ("; repeated more for a noisy host" if doc.get("repeats_extended_for_noise") else ""))
    if doc.get("noisy"):
        why = str(doc.get("noisy_reason"))
        load = "" if "load average" in why else f" (load average {doc.get('load1')}, {doc.get('cores')} cores)"
        out.append(f"noisy host: {why}{load}; rerun on a quiet host for tighter figures")
    elif "noisy" in doc:
        out.append(f"host quiet enough (load average {doc.get('load1')}, {doc.get('cores')} cores)")
    return out


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
                         "float ms": row_cell(r, "float"), "int8 ms": row_cell(r, "int8"), "int8/float": ratio,
                         "int8 precision": r.get("precision") or "—",
                         "reformat/Q/DQ ms (int8)": _ms((r.get("overhead_ms") or {}).get("int8"))})
        rows.append({"module": "sum of rows", "ops": "", "float ms": _ms(doc.get("sum_float_ms")),
                     "int8 ms": _ms(doc.get("sum_int8_ms")), "int8/float": "", "int8 precision": "",
                     "reformat/Q/DQ ms (int8)": ""})
        rows.append({"module": "end-to-end p50", "ops": "", "float ms": total_cell(doc, "total_float_ms"),
                     "int8 ms": total_cell(doc, "total_ms"), "int8/float": "", "int8 precision": "",
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
        lines = noise_lines(doc)
        if lines:
            cap += " " + ". ".join(lines) + "."
        if doc.get("unmapped_ops"):
            cap += f" Not mapped to a PyTorch module: {len(doc['unmapped_ops'])} op(s) (rows 'unmapped ...')."
        out.append((f"Per-layer profile: {name}", cap, rows))
    return out
