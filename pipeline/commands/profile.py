"""`python -m pipeline profile RUN_DIR --target NAME [--json FILE]`: where the time goes, per PyTorch module.

Profiles the target's FP32 and INT8 artifacts with the runtime's own per-op profiler on this host
(ONNX Runtime: enable_profiling; OpenVINO: PERF_COUNT counters; LiteRT: prefix differences, see
pipeline/profile/litert.py), maps each op back to the module path of the PyTorch model, and prints per
module the float and INT8 time, the precision the runtime ran and the reformat/Q/DQ cost. The result is
stored in run.json (targets.<profile>.layer_profile), shown in report.html, and written by --json FILE.
TensorRT: profiled on the device by the bundle's build_engine.sh, brought back by import-results.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from pipeline import strict_json


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="per-layer profile of a target (float vs INT8 per PyTorch module)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding run.json")
    p.add_argument("--target", required=True, help="profile name or alias of one of the run's targets")
    p.add_argument("--json", metavar="FILE", help="also write the profile as JSON here")
    p.add_argument("--threads", type=int, help="threads (default: the benchmark's for this target)")
    p.add_argument("--iterations", type=int, default=200, help="profiled inferences per model (default 200)")
    p.add_argument("--no-store", action="store_true", help="do not write the profile into run.json")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_profile)


def _ms(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def print_profile(doc: dict, console) -> None:
    from rich.table import Table

    from pipeline.profile.schema import coverage

    table = Table(title=f"per-layer profile: {doc['target']} ({doc['runtime']} {doc['runtime_version']}, "
                        f"{doc['threads']} thread(s), batch 1, {doc['source']})")
    for col in ("module", "ops", "float ms", "int8 ms", "int8/float", "int8 precision", "reformat/Q/DQ ms (int8)"):
        table.add_column(col)
    for r in doc["rows"]:
        ratio = (f"{r['int8_ms'] / r['float_ms']:.2f}" if r["int8_ms"] is not None and r["float_ms"] else "—")
        types = ", ".join(dict.fromkeys(o["type"] for o in r["ops"] if o["variant"] == "int8")) or \
            ", ".join(dict.fromkeys(o["type"] for o in r["ops"]))
        table.add_row(r["label"], types, _ms(r["float_ms"]), _ms(r["int8_ms"]), ratio, r["precision"] or "—",
                      _ms(r["overhead_ms"]["int8"]))
    cov = coverage(doc)
    table.add_row("sum of rows", "", _ms(doc.get("sum_float_ms")), _ms(doc.get("sum_int8_ms")), "", "", "")
    table.add_row("end-to-end p50", "", _ms(doc.get("total_float_ms")), _ms(doc.get("total_ms")), "", "", "")
    console.print(table)
    console.print("rows / end-to-end: " + ", ".join(f"{v} {c:.2f}" for v, c in cov.items() if c is not None))
    console.print(f"left out of the rows: {doc['left_out'].get('int8')}")
    call = {v: c for v, c in (doc.get("call_overhead_ms") or {}).items() if c is not None}
    if call:
        console.print("row '(runtime call overhead)': the runtime's fixed cost per call, measured on a one-op model "
                      "(same runtime and threads): "
                      + ", ".join(f"{v} {c:.4f} ms" for v, c in call.items()))
    if doc.get("unmapped_ops"):
        console.print(f"not mapped to a module ({len(doc['unmapped_ops'])}): " + "; ".join(doc["unmapped_ops"]))


def cmd_profile(args) -> int:
    from pipeline.console import console as _console
    from pipeline.run_json import read_run
    from pipeline.profile.target import profile_target, store_profile

    run_dir = Path(args.run_dir)
    run = read_run(run_dir)
    doc = profile_target(run_dir, run, args.target, threads=args.threads, iterations=max(10, args.iterations))
    console = _console()
    print_profile(doc, console)
    if not args.no_store:
        store_profile(run_dir, doc)
        console.print(f"stored in {run_dir / 'run.json'} (targets.{doc['target']}.layer_profile)")
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(Path(args.json), strict_json.dumps(doc, indent=2))
        console.print(f"wrote {args.json}")
    return 0
