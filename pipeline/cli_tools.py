"""Subcommands beyond `run`: bench, compare, verify, report, import-results (registered here)."""
from __future__ import annotations


def add_commands(sub) -> None:
    _add_bench(sub)
    _add_compare(sub)
    _add_verify(sub)
    _add_import_results(sub)
    _add_report(sub)


def _add_bench(sub) -> None:
    from pipeline.commands import bench

    bench.add_parser(sub)


def _add_compare(sub) -> None:
    from pipeline.commands import compare

    compare.add_parser(sub)


def _add_report(sub) -> None:
    def cmd_report(args) -> int:
        from pipeline.report import write_report

        if args.out:
            from pipeline.out_path import check_out_dir

            check_out_dir(args.out)
        r = write_report(args.run_dir, args.out)
        print(f"wrote {r.markdown}\nwrote {r.html}" + "".join(f"\nwrote {p}" for p in r.pngs))
        return 0

    p = sub.add_parser("report", help="write report.md and a single-file report.html (plots) for a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding run.json")
    p.add_argument("--out", help="folder for report.md, report.html and report_*.png (default RUN_DIR)")
    p.set_defaults(fn=cmd_report)


def _add_verify(sub) -> None:
    from pipeline.commands import verify

    verify.add_parser(sub)


def _add_import_results(sub) -> None:
    from pipeline.commands import import_results

    import_results.add_parser(sub)
