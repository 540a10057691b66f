"""`report.md` and a single-file `report.html` (plots embedded as base64 PNG) for one run folder.

Written after run.json by every run, and on demand by `python -m pipeline report RUN_DIR [--out DIR]`.
"""
from __future__ import annotations

import base64
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.artifacts import atomic_write_bytes, atomic_write_text
from pipeline.report.data import (SOURCE_MEANING, accuracy_latency_points, bench_cases, device_rows, load_run,
                                  single_figures, size_bars)
from pipeline.report.profile_table import profile_sections
from pipeline.report.prune_table import prune_int8_sections
from pipeline.stats import format_ci
from pipeline.summary import markdown_table, summary_rows


@dataclass
class Figure:
    file: str          # PNG file name next to the report
    title: str
    caption: str
    png: bytes
    table: list[dict[str, str]] = field(default_factory=list)   # shown under the figure (e.g. the Pareto front)
    table_title: str = ""


@dataclass
class Report:
    markdown: Path
    html: Path
    pngs: list[Path]


def _one_line(s) -> str:
    return " ".join(str(s).split())


def _sources_in(values) -> str:
    found = [s for s in dict.fromkeys(values) if s]
    return ", ".join(f"{s} ({SOURCE_MEANING.get(s, 'unknown source')})" for s in found) or "none"


def build_figures(run_dir: Path, summary: dict) -> tuple[list[Figure], list[str]]:
    from pipeline.report import plots

    name = summary.get("name", run_dir.name)
    figs, notes = [], []
    points, left_out = accuracy_latency_points(summary)
    if points:
        front = [p for p in points if p.pareto]
        ci95 = {a["name"]: a.get("accuracy_ci95") for a in summary["artifacts"]}
        cap = ("Accuracy on the test split against latency p50 at batch 1, one marker per artifact; marker shape and "
               f"colour give the latency source. Sources in this plot: {_sources_in(p.source for p in points)}. "
               "Circled points joined by the dashed step line form the Pareto front (no other artifact is both "
               "faster and at least as accurate). The front spans all sources and devices: an estimated latency "
               "for a device is not directly comparable with a latency measured on this host.")
        if left_out:
            cap += " Not plotted: " + "; ".join(left_out) + "."
        figs.append(Figure("report_accuracy_latency.png", "Accuracy vs latency", cap,
                           plots.accuracy_latency_png(points, name),
                           [{"#": str(points.index(p) + 1), "artifact": p.name, "precision": p.precision,
                             "accuracy": format_ci(p.accuracy, ci95.get(p.name)), "p50 ms": f"{p.latency_ms:.4g}",
                             "latency source": p.source} for p in front], "Pareto front"))
    else:
        notes.append("accuracy vs latency: no artifact has both an accuracy and a latency ("
                     + "; ".join(left_out) + ")")
    bars, size_notes = size_bars(run_dir, summary)
    notes += size_notes
    if bars:
        hows = list(dict.fromkeys(b.how for b in bars))
        figs.append(Figure("report_sizes.png", "Model size per stage",
                           "Size on disk of each stage's model. Sources: " + "; ".join(
                               f"{', '.join(b.label for b in bars if b.how == h)}: {h}" for h in hows)
                           + ". Sizes are file sizes read from this run folder, not estimates, unless marked computed.",
                           plots.sizes_png(bars, name)))
    cases, case_notes = bench_cases(run_dir, summary)
    notes += case_notes
    singles = single_figures(summary, cases)
    if cases or singles:
        cap = ("Latency per inference at batch 1. Each measured case is drawn from the per-repeat results of its "
               "bench.json: box from min to p90 of the timed iterations, bar at p50 (median of the repeats' "
               "medians), whisker to p99, × at the maximum, black dots at each repeat's p50. "
               f"Sources of the distributions: {_sources_in(c.source for c in cases)}.")
        if singles:
            cap += (" Single markers (dotted to p90 where one is given) are figures with no per-iteration results here, "
                    "labelled with their source and never drawn as a distribution: "
                    + "; ".join(f"{n} ({lat.get('source')})" for n, lat in singles) + ".")
        figs.append(Figure("report_latency.png", "Latency distributions", cap, plots.latency_png(cases, singles, name)))
    else:
        notes.append("latency distributions: no benchmark results and no latency figures in this run")
    figs += frontier_figures(summary)
    return figs, notes


def frontier_figures(summary: dict) -> list[Figure]:
    """One figure per target whose accuracy budget chose float layers by measured latency."""
    from pipeline.measure.core import fmt_ci
    from pipeline.report import plots
    from pipeline.report.data import pareto_front

    figs = []
    for name, t in (summary.get("targets") or {}).items():
        rows = [r for r in ((t.get("quantize") or {}).get("frontier") or [])
                if r.get("latency_ms") is not None and r.get("val_accuracy") is not None]
        if not rows:
            continue
        front = pareto_front([(r["latency_ms"], r["val_accuracy"]) for r in rows])
        table = [{"#": str(i + 1), "float layers": ", ".join(r["float_layers"]) or "none (all INT8)",
                  "val accuracy": f"{r['val_accuracy']:.4f}",
                  "p50 ms [95% CI]": fmt_ci(r["latency_ms"], r.get("latency_ci95_ms")),
                  "source": f"{r['source']} ({r['runtime']})", "holds budget": "yes" if r["holds_budget"] else "no",
                  "Pareto": "yes" if i in front else "", "shipped": "yes" if r.get("chosen") else ""}
                 for i, r in enumerate(rows)]
        table += [{"#": "-", "float layers": ", ".join(r.get("float_layers") or []), "val accuracy": "skipped",
                   "p50 ms [95% CI]": "-", "source": str(r["skipped"]), "holds budget": "-", "Pareto": "", "shipped": ""}
                  for r in ((t.get("quantize") or {}).get("frontier") or []) if r.get("skipped")]
        cap = (f"Mixed precision for {name}: each float-layer configuration the accuracy budget tried, validation "
               "accuracy against end-to-end latency p50 at batch 1 measured in one process on this host "
               f"({rows[0]['source']}, {rows[0]['runtime']}), median of interleaved blocks with its 95% interval. "
               "Ringed points joined by the dashed line are the Pareto front; the star is the configuration shipped: "
               "among the sets holding the budget, the fewest float layers of those not measurably slower than the "
               "fastest (a paired 95% interval that includes zero is a tie).")
        decision = next((r.get("decision") for r in rows if r.get("chosen") and r.get("decision")), None)
        if decision:
            cap += f" Decision: {decision}."
        figs.append(Figure(f"report_frontier_{name}.png", f"Mixed precision frontier: {name}", cap,
                           plots.frontier_png(rows, name, front), table, "Configurations tried"))
    return figs


def quantize_mode_rows(summary: dict) -> list[dict[str, str]]:
    """PTQ and QAT (quantization-aware distillation) INT8 accuracy on the test split, side by side."""
    def f(v):
        return "—" if v is None else f"{v:.4f}"

    rows = []
    for name, t in (summary.get("targets") or {}).items():
        q = t.get("quantize") or {}
        if "mode" not in q:
            continue
        rows.append({"target": name, "mode shipped": q["mode"], "PTQ accuracy": f(q.get("ptq_accuracy")),
                     "QAT accuracy": f(q.get("qat_accuracy")),
                     "QAT val drop": f((q.get("qat") or {}).get("val_accuracy_drop"))})
    return rows


def _target_notes(summary: dict) -> list[str]:
    out = []
    for name, t in (summary.get("targets") or {}).items():
        eng = ((t.get("compile") or {}).get("engine")) or {}
        if eng and not eng.get("built", True):
            out.append(f"{name}: {eng.get('reason')}")
        g = t.get("gate") or {}
        if g:
            out.append(f"{name}: accuracy gate {g.get('decision')} (decided on {g.get('decided_on')}): {g.get('reason')}")
        slow = t.get("int8_slower_than_fp32") or {}
        if slow:
            out.append(f"{name}: warning: {slow.get('reason')}")
        q = t.get("quantize") or {}
        if q.get("kept_in_float"):
            out.append(f"{name}: kept in float to hold the accuracy budget: {q['kept_in_float']}")
        isa = t.get("isa") or {}
        if isa.get("evaluated_with"):  # which kernels made the INT8 figures (docs/ARCHITECTURE.md, Instruction sets)
            scheme = isa.get("scheme") or {}
            how = scheme.get("weights") or (f"overflow_fix {scheme['overflow_fix']}" if scheme.get("overflow_fix")
                                            else None)
            made = f"INT8 made for {isa['target']}" + (f" ({how})" if how else "") + "; " if isa.get("target") else ""
            out.append(f"{name}: {made}INT8 accuracy computed with {isa['evaluated_with']}, on a "
                       f"{isa.get('host') or 'unknown'} host")
    return out


def _stage_rows(summary: dict) -> list[dict[str, str]]:
    # peak RSS: the pipeline process during the stage (measured, VmHWM reset per stage; children not included)
    return [{"stage": s.get("name", "?"), "cached": "yes" if s.get("cached") else "no",
             "seconds": f"{float(s.get('seconds') or 0):.2f}",
             "peak RSS MB": "—" if s.get("peak_rss_mb") is None else f"{float(s['peak_rss_mb']):.0f}"}
            for s in summary["stages"]]


def _md_escape(s: str) -> str:
    return _one_line(s).replace("|", "\\|")


def _bullets(items) -> list[str]:
    return [f"- {_md_escape(i)}" for i in items] or ["- none"]


def _device_section(summary: dict) -> list[str]:
    """Imported device results (python -m pipeline import-results), in a table of their own."""
    rows = device_rows(summary)
    if not rows:
        return []
    return ["## Device-measured results", "",
            "Imported from the bundle's benchmark run on the device (`python -m pipeline import-results`); "
            "source **device-measured**. Host figures above are unchanged.", "", markdown_table(rows)]


def render_markdown(summary: dict, figs: list[Figure], extra_notes: list[str]) -> str:
    rows = summary_rows(summary)
    md = [f"# Run report: {summary.get('name', '?')}", "",
          f"Created {summary.get('created', '?')}, total {summary.get('seconds', 0)} s. "
          "Every latency and memory figure carries its source: "
          + "; ".join(f"**{k}** = {v}" for k, v in SOURCE_MEANING.items()) + ".", ""]
    for f in figs:
        md += [f"## {f.title}", "", f"![{f.title}]({f.file})", "", f"*{_one_line(f.caption)}*", ""]
        if f.table:
            md += [f"**{f.table_title}**", "", markdown_table(f.table)]
    if quantize_mode_rows(summary):
        md += ["## Quantization: PTQ vs QAT", "", markdown_table(quantize_mode_rows(summary)), ""]
    for title, cap, prows in [*prune_int8_sections(summary), *profile_sections(summary)]:
        md += [f"## {title}", "", f"*{_one_line(cap)}*", "", markdown_table(prows)]
    md += ["## Summary", "", "Latency source and memory source are given for every row; `—` = not available.", "",
           markdown_table(rows) if rows else "no artifacts",
           *_device_section(summary), "## Stages", "",
           markdown_table(_stage_rows(summary)) if summary["stages"] else "no stages", "## Notes", "",
           *_bullets([*_target_notes(summary), *summary.get("notes", []), *extra_notes]), "",
           "## Skipped targets", "", *_bullets(f"{k}: {v}" for k, v in (summary.get("skipped_targets") or {}).items()),
           "", "## Failed targets", "",
           *_bullets(f"{k}: {v}" for k, v in (summary.get("failed_targets") or {}).items()), ""]
    return "\n".join(md)


def _html_table(rows: list[dict[str, str]], right=()) -> str:
    if not rows:
        return "<p>none</p>"
    e = html.escape
    head = "".join(f"<th>{e(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td{' class=r' if k in right else ''}>{e(str(v))}</td>" for k, v in r.items())
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_list(items) -> str:
    items = list(items)
    return "<ul>" + "".join(f"<li>{html.escape(_one_line(i))}</li>" for i in items) + "</ul>" if items else "<p>none</p>"


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#222;padding:0 12px}h1{font-size:24px}h2{font-size:19px;margin-top:30px;border-bottom:1px solid #ddd}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;margin-top:6px}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}td.r{text-align:right}th{background:#f4f4f4}
.sources{font-size:13px;color:#444}"""


def render_html(summary: dict, figs: list[Figure], extra_notes: list[str]) -> str:
    e = html.escape
    rows = summary_rows(summary)
    right = {"accuracy", "vs teacher", "params", "MACs", "size", "p50 ms", "p90 ms", "peak MB", "seconds", "peak RSS MB"}
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Run report: {e(summary.get('name', '?'))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Run report: {e(str(summary.get('name', '?')))}</h1>",
             f"<p>Created {e(str(summary.get('created', '?')))}, total {e(str(summary.get('seconds', 0)))} s.</p>",
             "<p class=sources>Every latency and memory figure carries its source: "
             + "; ".join(f"<b>{e(k)}</b> = {e(v)}" for k, v in SOURCE_MEANING.items()) + ".</p>"]
    for f in figs:
        b64 = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<h2>{e(f.title)}</h2><figure><img src=\"data:image/png;base64,{b64}\" alt=\"{e(f.title)}\">"
                     f"<figcaption>{e(_one_line(f.caption))}</figcaption></figure>")
        if f.table:
            parts.append(f"<h3>{e(f.table_title)}</h3>" + _html_table(f.table, right))
    if quantize_mode_rows(summary):
        parts += ["<h2>Quantization: PTQ vs QAT</h2>", _html_table(quantize_mode_rows(summary), right)]
    for title, cap, prows in [*prune_int8_sections(summary), *profile_sections(summary)]:
        parts.append(f"<h2>{e(title)}</h2><p class=sources>{e(_one_line(cap))}</p>"
                     + _html_table(prows, {"float ms", "int8 ms", "int8/float", "reformat/Q/DQ ms (int8)", "MACs ratio",
                                           "FP32 ratio", "INT8 ratio", "unpruned INT8 ms", "pruned INT8 ms", "ratio"}))
    parts += ["<h2>Summary</h2><p class=sources>Latency source and memory source are given for every row; "
              "— = not available.</p>", _html_table(rows, right),
              *(["<h2>Device-measured results</h2><p class=sources>Imported from the device (source "
                 "device-measured); host figures above are unchanged.</p>", _html_table(device_rows(summary), right)]
                if device_rows(summary) else []),
              "<h2>Stages</h2>", _html_table(_stage_rows(summary), right),
              "<h2>Notes</h2>", _html_list([*_target_notes(summary), *summary.get("notes", []), *extra_notes]),
              "<h2>Skipped targets</h2>",
              _html_list(f"{k}: {v}" for k, v in (summary.get("skipped_targets") or {}).items()),
              "<h2>Failed targets</h2>",
              _html_list(f"{k}: {v}" for k, v in (summary.get("failed_targets") or {}).items()),
              "</body></html>\n"]
    return "\n".join(parts)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, summary: dict | None = None) -> Report:
    """Write report.md, report.html and the report_*.png files for RUN_DIR into OUT_DIR (default RUN_DIR)."""
    run_dir = Path(run_dir)
    summary = load_run(run_dir) if summary is None else summary
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    figs, notes = build_figures(run_dir, summary)
    pngs = [atomic_write_bytes(out / f.file, f.png) for f in figs]
    md = atomic_write_text(out / "report.md", render_markdown(summary, figs, notes))
    page = atomic_write_text(out / "report.html", render_html(summary, figs, notes))
    return Report(md, page, pngs)


def write_report_safe(run_dir: str | Path, summary: dict | None = None, console=None) -> Report | None:
    """write_report for the end of a run: a plotting failure prints a warning and never fails the run."""
    try:
        return write_report(run_dir, summary=summary)
    except Exception as e:  # noqa: BLE001 - the run's results are already in run.json
        msg = (f"warning: report not written ({type(e).__name__}: {_one_line(e)}); run.json is complete. "
               f"Retry with `python -m pipeline report {run_dir}`")
        if console is not None:
            from rich.markup import escape

            console.print(f"[yellow]{escape(msg)}[/yellow]")
        else:
            print(msg, file=sys.stderr)
        return None
