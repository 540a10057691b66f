"""The pruning + INT8 tables of report.md / report.html (from run.json `prune`, pipeline/prune_int8.py)."""
from __future__ import annotations


def _x(v) -> str:
    return "—" if v is None else f"{v:.3f}x"


def prune_int8_sections(summary: dict) -> list[tuple[str, str, list[dict[str, str]]]]:
    """[(title, caption, rows)]: the MACs / FP32 / INT8 ratios of the pruned student and of each round_to
    tried as the fix, then the modules that hold the INT8 ratio; none when the check did not run."""
    p = summary.get("prune") or {}
    check = p.get("int8_check")
    if not check or "current" not in check:  # not run, or failed (its note says why)
        return []
    cur = check["current"]
    fix = p.get("int8_fix") or {}
    same = fix.get("current") or cur
    rows = [{"round_to": str(cur.get("round_to") or 1), "MACs ratio": _x(cur["macs_ratio"]),
             "FP32 ratio": _x(same["fp32_ratio"]), "INT8 ratio": _x(same["int8_ratio"]),
             "status": "shipped (the recipe's)"}]
    for c in fix.get("candidates", []):
        status = f"skipped: {c['skipped']}" if "skipped" in c else ("offered fix (not applied)" if c.get("chosen")
                                                                      else "measured")
        rows.append({"round_to": str(c["round_to"]), "MACs ratio": _x(c.get("macs_ratio")),
                     "FP32 ratio": _x(c.get("fp32_ratio")), "INT8 ratio": _x(c.get("int8_ratio")), "status": status})
    cap = (f"Latency ratios pruned / unpruned at batch 1, {check['runtime']} {check['runtime_version']} "
           f"({check['precision']}), {check['threads']} thread(s), source: {check['source']}, models measured "
           f"interleaved in one process. Threshold {check['threshold']:.2f}x: ")
    if check["above_threshold"]:
        cap += ("the INT8 ratio is above it, so copies of the distilled student were pruned with the other round_to "
                "values (no recovery: latency does not depend on the weights) and measured in one session; the "
                "candidate rows' ratios and the first row's are from that session.")
    else:
        cap += "the INT8 ratio is at or below it; no fix searched."
    cap += f" The check took {check['seconds']:.1f} s (prune.int8_check=false turns it off)."
    out = [("Pruning: INT8 latency vs MACs", cap, rows)]
    held = [*(check.get("held_by") or []), *(check.get("qdq_not_shrinking") or [])]
    if held:
        mrows = [{"module": r["module"], "unpruned INT8 ms": f"{r['unpruned_ms']:.4f}",
                  "pruned INT8 ms": f"{r['pruned_ms']:.4f}", "ratio": _x(r["ratio"]),
                  "Q/DQ ms (unpruned -> pruned)": f"{r['qdq_ms']['unpruned']:.4f} -> {r['qdq_ms']['pruned']:.4f}",
                  "kind": "Q/DQ/reformat or call overhead" if r["overhead"] else "module"} for r in held]
        out.append(("Pruning: what holds the INT8 ratio",
                    "Per module INT8 kernel time, unpruned vs pruned, from the ONNX Runtime profiler (pipeline.profile."
                    f"ort, {(check.get('profile') or {}).get('iterations', '?')} profiled inferences each): modules "
                    "whose pruned time is above the threshold's share of their unpruned time, then the Q/DQ, "
                    "reformat and call-overhead rows that do not shrink with the channels.", mrows))
    return out
