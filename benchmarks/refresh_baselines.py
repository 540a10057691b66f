"""Regenerate the stored baselines of a benchmark suite (benchmarks/baselines/*.json).

    python benchmarks/refresh_baselines.py                      # suite ci, host x86-host: run + bench HERE
    python benchmarks/refresh_baselines.py --suite ci --host x86-host --repeats 5
    python benchmarks/refresh_baselines.py --device raspberry-pi-5 --from-report device.json   # a device job's report
    python benchmarks/refresh_baselines.py --host x86-host --from-report runs/suite-ci/bench.json

A host baseline is measured on the machine that runs this command, so run it on the host the baseline is
named after (it records that host's CPU, core count and a hash of its hostname in "baseline"). A device
baseline is never measured here: it is the bench report that the device job uploaded (every case must be
device-measured). Only the baseline file is replaced, atomically; commit it with the change that explains
why the numbers moved.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.suite import Suite, load_suite, run_suite  # noqa: E402
from pipeline.errors import ConfigError, DataError, PipelineError  # noqa: E402


def label_baseline(report: dict, suite: Suite, name: str, command: str) -> dict:
    """The report with a "baseline" block saying where, when and how it was measured."""
    env = report.get("environment") or {}
    out = dict(report)
    out["baseline"] = {
        "host_label": name,
        "suite": suite.name,
        "refreshed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "measured_on": {k: env.get(k) for k in ("cpu_model", "board", "logical_cores", "usable_cores", "machine",
                                                "hostname_sha256", "python", "runtimes", "load_average_1m")
                        if env.get(k) is not None},
        "sources": sorted({c["source"] for c in report["cases"]}),
        "command": command,
        "note": "compare gates latency against this file only on the same kind of host (CPU model and cores) "
                "when the suite says latency_gate: same-host; accuracy always",
    }
    return out


def write_baseline(report: dict, suite: Suite, name: str, command: str) -> Path:
    from pipeline.measure.harness import validate
    from pipeline.artifacts import atomic_write_json

    doc = label_baseline(report, suite, name, command)
    validate(doc, "baseline report")
    path = suite.baseline_path(name)
    atomic_write_json(path, doc)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/refresh_baselines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="ci", help="suite name or YAML path (default ci)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--host", help="host baseline to refresh (default: the suite's first host)")
    who.add_argument("--device", help="device baseline to install from --from-report")
    p.add_argument("--from-report", help="use this bench report instead of running the suite here")
    p.add_argument("--out", help="work folder for the suite run (default: a temporary folder)")
    p.add_argument("--repeats", type=int, help="override the suite's repeats (more = steadier baseline)")
    args = p.parse_args(argv)
    command = "python benchmarks/refresh_baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        from pipeline.measure.compare import load_report

        suite = load_suite(args.suite)
        if args.device:
            if args.device not in suite.devices:
                raise ConfigError(f"suite {suite.name!r} has no device {args.device!r}",
                                  hint=f"choose one of: {', '.join(suite.devices) or '(none)'}")
            if not args.from_report:
                raise ConfigError("a device baseline comes from the device: give --from-report DEVICE.json",
                                  hint="download the bench report the device job uploaded (docs/CI.md)")
            report = load_report(args.from_report)
            bad = [c for c in report["cases"] if c["source"] != "device-measured"]
            if bad:
                raise DataError(f"{args.from_report}: case {bad[0]['name']} is {bad[0]['source']!r}, not "
                                "device-measured", hint="use the report written on the device with "
                                                        "`python -m pipeline bench BUNDLE --source device-measured`")
            path = write_baseline(report, suite, args.device, command)
        else:
            host = args.host or next(iter(suite.hosts))
            if host not in suite.hosts:
                raise ConfigError(f"suite {suite.name!r} has no host {host!r}",
                                  hint=f"choose one of: {', '.join(suite.hosts)}")
            if args.from_report:
                report_path = Path(args.from_report)
            else:
                work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"baseline-{suite.name}-"))
                rc = run_suite(suite, work, repeats=args.repeats)
                if rc != 0:
                    print(f"error: the suite run failed (exit {rc}); the baseline was not changed", file=sys.stderr)
                    return rc
                report_path = work / "bench.json"
            report = load_report(report_path)
            if any(c["source"] == "device-measured" for c in report["cases"]):
                raise DataError(f"{report_path}: has device-measured cases; a host baseline is measured on the host",
                                hint="use --device NAME for a device report")
            path = write_baseline(report, suite, host, command)
    except PipelineError as e:
        print(f"error: {e.message}" + (f"\n  fix: {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    print(f"wrote {path}")
    for c in report["cases"]:
        lat = c["latency_ms"]
        print(f"  {c['name']}: p50 {lat['p50']:.4g} ms, CV across {lat.get('n_repeats', '?')} repeats "
              f"{lat['cv_between_repeats'] * 100:.2f}% ({c['source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
