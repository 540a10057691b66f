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

A baseline is only as good as the quiet of the machine it was measured on: the command refuses when the
1-minute load average exceeds half the usable cores, before measuring and in any child of the measurement
(`--force` records anyway and says so in the file's "baseline" block). Paths are stored relative to the
suite's work folder (no temporary folder of one machine ends up in the repository). The report carries the
reference kernel the compare gate normalises latency by (pipeline/reference_kernel.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.suite import Suite, load_suite, run_suite  # noqa: E402
from pipeline.errors import ConfigError, DataError, GateError, PipelineError  # noqa: E402

LOAD_LIMIT = 0.5  # refuse above this 1-minute load average per usable core


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_problem(load: float | None, cores: int | None, where: str) -> dict | None:
    """A record of the excess load when `load` is above LOAD_LIMIT x `cores`, else None."""
    if load is None or not cores:
        return None
    if load > LOAD_LIMIT * cores:
        return {"where": where, "load_average_1m": round(float(load), 2), "cores": int(cores),
                "limit": LOAD_LIMIT * cores}
    return None


def report_load_problem(report: dict) -> dict | None:
    """The highest load of other work any measuring child (or the report itself) recorded, when above the
    limit. A child's own threads are part of the load it sees (a 1-thread benchmark alone on the machine
    shows ~1.0), so they are subtracted: what remains is everything else that ran beside the measurement."""
    env = report.get("environment") or {}
    cores = env.get("usable_cores") or env.get("logical_cores")
    loads = []
    if isinstance(env.get("load_average_1m"), (int, float)):
        loads.append(env["load_average_1m"] - 1)  # taken right after the last child
    for c in report.get("cases") or []:
        for r in c.get("repeats") or []:
            load = (r.get("environment") or {}).get("load_average_1m")
            if isinstance(load, (int, float)):
                loads.append(load - int(r.get("threads") or c.get("threads") or 1))
    if not loads:
        return None
    worst = load_problem(max(loads), cores, "while measuring (the benchmark's own threads subtracted)")
    return worst


def refuse_or_note(problem: dict | None, force: bool) -> dict | None:
    """GateError (exit 1) for a busy machine unless --force; with --force the record to store."""
    if problem is None:
        return None
    if force:
        return {**problem, "forced": True}
    raise GateError(f"the machine is busy {problem['where']}: 1-minute load average {problem['load_average_1m']} on "
                    f"{problem['cores']} cores exceeds {problem['limit']:g} (half the cores); a baseline measured "
                    "now would hold the load of other jobs, not this code's speed",
                    hint="rerun on an idle machine (or pass --force to record anyway, noted in the file)")


def relative_paths(doc, base: Path | None):
    """`doc` with every absolute path made relative to `base` (or reduced to its file name when outside it)."""
    if isinstance(doc, dict):
        return {k: relative_paths(v, base) for k, v in doc.items()}
    if isinstance(doc, list):
        return [relative_paths(v, base) for v in doc]
    if isinstance(doc, str) and os.path.isabs(doc) and "\n" not in doc and len(doc) < 4096:
        p = Path(doc)
        if base is not None:
            try:
                return p.resolve().relative_to(base.resolve()).as_posix()
            except (ValueError, OSError):
                pass
        return p.name
    return doc


def label_baseline(report: dict, suite: Suite, name: str, command: str, load: dict | None = None) -> dict:
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
        "load": load or {"forced": False, "limit_per_core": LOAD_LIMIT},
        "reference_kernel": "present" if (report.get("reference_kernel") or {}).get("by_threads") else "absent",
        "note": "compare gates latency normalised by the reference kernel on any host, and the absolute p50 too "
                "when the host fingerprint (CPU model, cores, runtime versions) matches; accuracy always",
    }
    return out


def write_baseline(report: dict, suite: Suite, name: str, command: str, load: dict | None = None,
                   base_dir: Path | None = None) -> Path:
    from pipeline.measure.harness import validate
    from pipeline.artifacts import atomic_write_json

    doc = label_baseline(relative_paths(report, base_dir), suite, name, command, load)
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
    p.add_argument("--force", action="store_true", help="record even when the machine is busy (1-minute load "
                                                        "above half the cores); the file says so")
    args = p.parse_args(argv)
    # the command as stored: absolute paths relative to the repository (or just their names)
    command = "python benchmarks/refresh_baselines.py " + " ".join(
        relative_paths(a, ROOT) for a in (argv if argv is not None else sys.argv[1:]))
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
            load = refuse_or_note(report_load_problem(report), args.force)
            path = write_baseline(report, suite, args.device, command, load, Path(args.from_report).parent)
        else:
            host = args.host or next(iter(suite.hosts))
            if host not in suite.hosts:
                raise ConfigError(f"suite {suite.name!r} has no host {host!r}",
                                  hint=f"choose one of: {', '.join(suite.hosts)}")
            load = None
            if args.from_report:
                report_path = Path(args.from_report)
            else:
                try:
                    now = os.getloadavg()[0]
                except (AttributeError, OSError):
                    now = None
                load = refuse_or_note(load_problem(now, usable_cores(), "before measuring"), args.force)
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
            load = refuse_or_note(report_load_problem(report), args.force) or load
            path = write_baseline(report, suite, host, command, load, report_path.parent)
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
