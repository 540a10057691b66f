"""The terminal summary table of a run (rows = artifacts), built from run.json."""
from __future__ import annotations

from typing import Any

from pipeline.stats import format_ci


def _fmt_num(v, fmt="{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _human(n) -> str:
    if n is None:
        return "—"
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.2f}{unit}"
        n /= 1000
    return f"{n:.2f}T"


def _source(value, source) -> str:
    """A figure without a recorded source is `unknown`, never assumed measured."""
    if source:
        return str(source)
    return "—" if value is None else "unknown"


def summary_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    teacher_acc = next((a["accuracy"] for a in summary["artifacts"] if a["role"] == "teacher"), None)
    rows = []
    for a in summary["artifacts"]:
        lat = a.get("latency_ms") or {}
        rss = a.get("peak_rss_mb") or {}
        acc = a.get("accuracy")
        rows.append({
            "artifact": a["name"],
            "precision": a["precision"],
            "accuracy": format_ci(acc, a.get("accuracy_ci95")),  # with its 95% Wilson interval when recorded
            "accuracy source": "—" if acc is None else str((a.get("accuracy_provenance") or {}).get("source")
                                                         or "unknown"),
            "vs teacher": "—" if acc is None or teacher_acc is None else f"{acc - teacher_acc:+.4f}",
            "params": _human(a.get("params")),
            "MACs": _human(a.get("macs")),
            "size": _human(a.get("size_bytes")) + "B",
            "p50 ms": _fmt_num(lat.get("p50"), "{:.3f}"),
            "p90 ms": _fmt_num(lat.get("p90"), "{:.3f}"),
            "latency source": _source(lat.get("p50"), lat.get("source")),
            "peak MB": _fmt_num(rss.get("value"), "{:.1f}"),
            "memory source": _source(rss.get("value"), rss.get("source")),
        })
    return rows


def print_summary(summary: dict[str, Any], console) -> None:
    from rich.markup import escape as e
    from rich.table import Table

    rows = summary_rows(summary)
    table = Table(title=f"run {summary['name']} ({summary['seconds']:.1f} s)")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("artifact", "precision", "accuracy source", "latency source",
                                                    "memory source")
                         else "right")
    for r in rows:
        table.add_row(*(e(v) for v in r.values()))
    console.print(table)
    for name, t in summary.get("targets", {}).items():
        q = t.get("quantize") or {}
        if q.get("kept_in_float"):
            console.print(f"[yellow]{e(name)}: kept in float to hold the accuracy budget: {e(str(q['kept_in_float']))}[/yellow]")
    for note in summary.get("notes", []):
        console.print(f"[dim]note: {e(note)}[/dim]")
    for name, why in summary.get("skipped_targets", {}).items():
        console.print(f"[yellow]skipped {e(name)}: {e(why)}[/yellow]")
    for name, why in summary.get("failed_targets", {}).items():
        console.print(f"[red]failed {e(name)}: {e(why)}[/red]")


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = "| " + " | ".join(rows[0]) + " |"
    sep = "|" + "|".join("---" for _ in rows[0]) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(r.values()) + " |" for r in rows)]) + "\n"
