"""`python -m pipeline compare NEW.json BASELINE.json`: the CI gate, a thin wrapper over pipeline/measure/compare.py.

Latency is gated normalised by the reference kernel both reports carry (an int8 and an fp32 GEMM timed with
the cases), plus the absolute p50 when the host fingerprint matches; the output says which ("basis").

    python -m pipeline compare bench.json benchmarks/baselines/x86-host.json --max-regression 10% \
        --max-accuracy-drop 0.01 --markdown "$GITHUB_STEP_SUMMARY" --junit compare.xml

Exit codes: 0 no regression, 1 a latency or accuracy regression (or a missing case with
--fail-on-missing), 2 an unreadable or invalid report.
"""
from __future__ import annotations

import os

from pipeline.errors import DataError


def write_output(path: str, text: str) -> None:
    """Write a summary file whole (temp then rename); $GITHUB_STEP_SUMMARY is appended to, as GitHub expects."""
    from pipeline.artifacts import atomic_write_text

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and os.path.abspath(path) == os.path.abspath(summary):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    atomic_write_text(path, text)


def print_result(result, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=result.summary())
    for col, just in (("case", "left"), ("runtime", "left"), ("batch", "right"), ("base p50 ms", "right"),
                      ("new p50 ms", "right"), ("change", "right"), ("limit", "right"), ("basis", "left"),
                      ("accuracy base → new", "left"), ("status", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]  # "left"/"right" literals
    f = lambda v, fmt="{:.4g}": "—" if v is None else fmt.format(v)  # noqa: E731
    style = {"regression": "red", "improved": "green", "ok": "", "missing": "yellow", "incomparable": "yellow"}
    for c in result.cases:
        acc = "—" if c.base_accuracy is None and c.new_accuracy is None else \
            f"{f(c.base_accuracy, '{:.4f}')} → {f(c.new_accuracy, '{:.4f}')}"
        st = style.get(c.status, "")
        table.add_row(escape(c.name), c.runtime or "—", f(c.batch, "{}"), f(c.base_p50), f(c.new_p50),
                      "—" if c.ratio is None else f"{(c.ratio - 1) * 100:+.1f}%",
                      "—" if c.limit_ratio is None else f"+{(c.limit_ratio - 1) * 100:.1f}%", c.basis or "—", acc,
                      f"[{st}]{c.status}[/{st}]" if st else c.status)
    console.print(table)
    for c in result.cases:
        for m in c.messages:
            console.print(f"{c.status} {c.name}: {m}", markup=False, highlight=False)
    for line in result.basis_lines:  # which latency was gated: normalised by the reference kernel, absolute
        console.print(f"basis: {line}", markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)
    console.print(result.summary(), markup=False, highlight=False)


def cmd_compare(args) -> int:
    from pipeline.measure.compare import compare_reports, load_report, to_junit, to_markdown
    from pipeline.console import console as _console

    hint = "give two benchmark reports written by `python -m pipeline bench --json` (pipeline/measure/schema.json)"
    try:
        new = load_report(args.new)
        base = load_report(args.baseline)
    except DataError as e:
        raise DataError(e.message, hint=hint) from None
    result = compare_reports(new, base, args.max_regression, args.max_accuracy_drop,
                             noise_factor=args.noise_factor, fail_on_missing=args.fail_on_missing,
                             force=args.force)
    for path, text in ((args.markdown, to_markdown), (args.junit, to_junit)):
        if path:
            try:
                write_output(path, text(result))
            except OSError as e:
                raise DataError(f"cannot write {path}: {e.strerror or e}", hint="choose a writable path") from None
    if not args.quiet:
        print_result(result, _console())
    return result.exit_code


def add_parser(sub) -> None:
    """Register `compare` on the CLI's subparsers."""
    from pipeline.measure.compare import parse_fraction

    p = sub.add_parser("compare", help="gate a benchmark report against a baseline (exit 1 on regression)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("new", help="new benchmark report (JSON)")
    p.add_argument("baseline", help="stored baseline report (JSON), e.g. benchmarks/baselines/x86-host.json")
    p.add_argument("--max-regression", type=parse_fraction, default=0.10,
                   help="allowed p50 growth beyond the measured noise: 10%% or 0.10 (default 10%%)")
    p.add_argument("--max-accuracy-drop", type=parse_fraction, default=0.0,
                   help="allowed accuracy drop as a fraction, e.g. 0.01 (default 0)")
    p.add_argument("--noise-factor", type=float, default=1.0, help="multiplier of the measured noise (1.0)")
    p.add_argument("--fail-on-missing", action="store_true", help="a baseline case absent from NEW fails")
    p.add_argument("--markdown", metavar="OUT.md", help="Markdown summary (appended when it is $GITHUB_STEP_SUMMARY)")
    p.add_argument("--junit", metavar="OUT.xml", help="JUnit XML, one testcase per case")
    p.add_argument("--quiet", action="store_true", help="print nothing; the exit code tells")
    p.add_argument("--force", action="store_true",
                   help="gate reports of different instruction-set classes (refused by default: exit 2)")
    p.set_defaults(fn=cmd_compare)
