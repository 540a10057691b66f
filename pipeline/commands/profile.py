"""`python -m pipeline profile RUN_DIR --target NAME [--json FILE]`: where the time goes, per PyTorch module.

Profiles the target's FP32 and INT8 artifacts with the runtime's own per-op profiler on this host
(ONNX Runtime: enable_profiling; OpenVINO: PERF_COUNT counters; LiteRT: prefix differences, see
pipeline/profile/litert.py), maps each op back to the module path of the PyTorch model, and prints per
module the float and INT8 time, the precision the runtime ran and the reformat/Q/DQ cost. The profiler runs
in repeats until the figures have 95% intervals within 5% (or --max-time): every row is a median with its
interval, never negative; a row whose interval reaches zero reads "below resolution" (null in the JSON);
rows / end-to-end has its own verdict; a noisy host (CV above 5% or the load average above the cores) is
said with its load figure (`noisy: true`) and repeated more. The result is stored in run.json
(targets.<profile>.layer_profile), report.md / report.html are refreshed at once, and --json FILE gets it.
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
    p.add_argument("--iterations", type=int, default=200,
                   help="profiled inferences per model in each repeat (default 200)")
    p.add_argument("--max-time", type=float, default=60.0,
                   help="seconds of repeats before giving up on a 5%% interval (default 60; doubled on a noisy host)")
    p.add_argument("--no-store", action="store_true", help="do not write the profile into run.json")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_profile)


def _ms(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def print_profile(doc: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from pipeline.report.profile_table import noise_lines, row_cell, total_cell

    table = Table(title=f"per-layer profile: {doc['target']} ({doc['runtime']} {doc['runtime_version']}, "
                        f"{doc['threads']} thread(s), batch 1, {doc['source']}; ms, median [95% interval])")
    for col in ("module", "ops", "float ms", "int8 ms", "int8/float", "int8 precision", "reformat/Q/DQ ms (int8)"):
        table.add_column(col)
    for r in doc["rows"]:
        ratio = (f"{r['int8_ms'] / r['float_ms']:.2f}" if r["int8_ms"] is not None and r["float_ms"] else "—")
        types = ", ".join(dict.fromkeys(o["type"] for o in r["ops"] if o["variant"] == "int8")) or \
            ", ".join(dict.fromkeys(o["type"] for o in r["ops"]))
        table.add_row(escape(r["label"]), types, row_cell(r, "float"), row_cell(r, "int8"), ratio,
                      r["precision"] or "—", _ms(r["overhead_ms"]["int8"]))
    table.add_row("sum of rows", "", total_cell(doc, "sum_float_ms"), total_cell(doc, "sum_int8_ms"), "", "", "")
    table.add_row("end-to-end p50", "", total_cell(doc, "total_float_ms"), total_cell(doc, "total_ms"), "", "", "")
    console.print(table)
    for line in noise_lines(doc):
        console.print(escape(line))
    console.print(escape(f"left out of the rows: {doc['left_out'].get('int8')}"))
    call = {v: c for v, c in (doc.get("call_overhead_ms") or {}).items() if c is not None}
    if call:
        console.print("row '(runtime call overhead)': the runtime's fixed cost per call, measured on a one-op model "
                      "(same runtime and threads): "
                      + ", ".join(f"{v} {c:.4f} ms" for v, c in call.items()))
    if doc.get("unmapped_ops"):
        console.print(escape(f"not mapped to a module ({len(doc['unmapped_ops'])}): " + "; ".join(doc["unmapped_ops"])))


def cmd_profile(args) -> int:
    from pipeline.console import console as _console
    from pipeline.run_json import read_run
    from pipeline.profile.target import profile_target, store_profile

    run_dir = Path(args.run_dir)
    run = read_run(run_dir)
    from pipeline.profile.intervals import RepeatSettings

    doc = profile_target(run_dir, run, args.target, threads=args.threads, iterations=max(10, args.iterations),
                         repeat=RepeatSettings(max_time_s=max(1.0, args.max_time)))
    console = _console()
    print_profile(doc, console)
    if not args.no_store:
        store_profile(run_dir, doc)
        console.print(f"stored in {run_dir / 'run.json'} (targets.{doc['target']}.layer_profile)")
        from pipeline.report.render import write_report_safe

        rep = write_report_safe(run_dir, console=console)  # the per-layer tables show at once
        if rep is not None:
            console.print(f"report refreshed: {rep.markdown}, {rep.html}")
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(Path(args.json), strict_json.dumps(doc, indent=2))
        console.print(f"wrote {args.json}")
    return 0
