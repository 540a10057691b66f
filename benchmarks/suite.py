"""Run a benchmark suite: pipeline run -> pipeline bench -> (optionally) gate against the stored baseline.

    python benchmarks/suite.py ci                       # run + bench into runs/suite-ci
    python benchmarks/suite.py ci --out out --compare   # ... then compare with benchmarks/baselines/x86-host.json
    python benchmarks/suite.py ci --out out --compare-only   # gate an existing out/bench.json (CI gate job)
    python benchmarks/suite.py ci --check               # validate the suite file only

Writes into OUT: run/ (the pipeline run), bench.json (the report), bundles/<profile>.tar.gz (for the device
jobs), and with --compare: compare.md (also appended to $GITHUB_STEP_SUMMARY when set) and compare.xml (JUnit).
Exit codes: 0 ok, 1 a regression (or a failed gate in the run), 2 bad suite/baseline, 3 missing dependency.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator  # noqa: E402

from pipeline.errors import ConfigError, DataError, PipelineError  # noqa: E402

SUITES = ROOT / "benchmarks" / "suites"
BENCH_DIR = ROOT / "benchmarks"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSpec(_Strict):
    targets: list[str] = Field(min_length=1)
    sets: list[str] = Field(default_factory=list)

    @field_validator("sets")
    @classmethod
    def _key_value(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if "=" not in s]
        if bad:
            raise ValueError(f"each set is KEY=VALUE, got {bad[0]!r}")
        return v


class BenchSpec(_Strict):
    repeats: int = Field(3, ge=1, le=50)
    warmup: int = Field(20, ge=0)
    min_iters: int = Field(50, ge=1)
    min_time_s: float = Field(0.5, ge=0)
    batches: Optional[list[int]] = None
    threads: Optional[int] = Field(None, ge=1)
    only: list[str] = Field(default_factory=list)

    @field_validator("batches")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("batch sizes are >= 1")
        return v


class GateSpec(_Strict):
    max_regression: float = 0.10
    max_accuracy_drop: float = 0.0
    noise_factor: float = Field(1.0, ge=0)
    fail_on_missing: bool = True
    latency_gate: Literal["same-host", "always"] = "same-host"
    confirm_regressions: bool = True

    @field_validator("max_regression", "max_accuracy_drop", mode="before")
    @classmethod
    def _fraction(cls, v):
        from pipeline.measure.compare import parse_fraction

        try:
            return parse_fraction(str(v))
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None


class HostSpec(_Strict):
    baseline: str
    description: str = ""


class DeviceSpec(_Strict):
    runner_labels: list[str] = Field(min_length=1)
    baseline: str
    build_engine: bool = False


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    run: RunSpec
    bench: BenchSpec = Field(default_factory=BenchSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    hosts: dict[str, HostSpec] = Field(min_length=1)
    devices: dict[str, DeviceSpec] = Field(default_factory=dict)

    def baseline_path(self, host_or_device: str) -> Path:
        spec = self.hosts.get(host_or_device) or self.devices.get(host_or_device)
        if spec is None:
            known = ", ".join([*self.hosts, *self.devices])
            raise ConfigError(f"suite {self.name!r} has no host or device {host_or_device!r}",
                              hint=f"choose one of: {known}")
        p = Path(spec.baseline)
        return p if p.is_absolute() else BENCH_DIR / p


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SUITES / f"{name_or_path}.yaml"


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite (a name under benchmarks/suites/ or a YAML path); ConfigError when bad."""
    path = suite_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("*.yaml")))
        raise ConfigError(f"no suite {name_or_path!r} ({path})", hint=f"known suites: {known}")
    try:
        doc = yaml.safe_load(path.read_text())
        return Suite.model_validate(doc)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top)"
        raise ConfigError(f"{path}: {where}: {err['msg']}", hint="see benchmarks/suites/ci.yaml for the fields") from None


def check_suite(suite: Suite) -> list[str]:
    """Problems beyond the schema: unknown profiles, unreadable or invalid baselines. [] when fine."""
    from pipeline.measure.compare import load_report
    from targets.profiles import load_profiles, resolve_profile

    problems = []
    profiles = load_profiles()
    for t in [*suite.run.targets, *suite.devices]:
        try:
            resolve_profile(t, profiles)
        except PipelineError as e:
            problems.append(f"profile {t!r}: {e.message}")
    for name in [*suite.hosts, *suite.devices]:
        p = suite.baseline_path(name)
        if p.exists():
            try:
                load_report(p)
            except DataError as e:
                problems.append(f"baseline of {name}: {e.message}")
    return problems


# --------------------------------------------------------------------------- steps


def _cli(*args: str, quiet: bool = False) -> int:
    """`python -m pipeline ARGS` as a child, output passed through (what a user would type)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if quiet:
        env["PIPELINE_QUIET"] = "1"
    print("+ python -m pipeline " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env).returncode


def run_step(suite: Suite, run_dir: Path) -> int:
    args = ["run", "--out", str(run_dir)]
    for t in suite.run.targets:
        args += ["--target", t]
    for s in suite.run.sets:
        args += ["--set", s]
    return _cli(*args)


def bench_step(suite: Suite, run_dir: Path, report: Path, repeats: int | None = None,
               only: list[str] | None = None) -> int:
    b = suite.bench
    args = ["bench", str(run_dir), "--json", str(report), "--repeats", str(repeats or b.repeats),
            "--warmup", str(b.warmup), "--min-iters", str(b.min_iters), "--min-time", str(b.min_time_s)]
    if b.batches:
        args += ["--batch", *map(str, b.batches)]
    if b.threads:
        args += ["--threads", str(b.threads)]
    for pat in b.only if only is None else only:
        args += ["--only", pat]
    return _cli(*args, quiet=True)


def collect_bundles(run_dir: Path, dest: Path) -> list[Path]:
    """Copy each target's bundle archive to dest/<profile>.tar.gz (what the device jobs download)."""
    import json

    run = json.loads((run_dir / "run.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for a in run["artifacts"]:
        if a.get("bundle") and a.get("target"):
            tar = Path(a["bundle"] + ".tar.gz")
            if tar.is_file():
                target = dest / f"{a['target']}.tar.gz"
                shutil.copyfile(tar, target)
                out.append(target)
    return out


def same_host(new_env: dict, base_env: dict) -> tuple[bool, str]:
    """Whether two reports were measured on the same kind of host (CPU model and logical cores)."""
    diffs = [f"{k} {base_env.get(k)!r} (baseline) vs {new_env.get(k)!r} (here)"
             for k in ("cpu_model", "logical_cores") if new_env.get(k) != base_env.get(k)]
    return (not diffs), "; ".join(diffs)


def gate_latency_only_on_same_host(result, new: dict, base: dict) -> bool:
    """With latency_gate same-host: absolute milliseconds are gated only when the hosts match; on another
    host those rows stay in the report, marked not gated. Cases gated on latency normalised by the reference
    kernel (pipeline/measure/compare.py) stay gated on any host. Returns whether all latency was gated."""
    ok, why = same_host(new.get("environment") or {}, base.get("environment") or {})
    absolute = [c for c in result.cases if c.basis == "absolute"]
    if ok or not absolute:
        return True
    for c in absolute:
        if c.latency_regression:
            c.latency_regression = False
            c.messages.append("latency not gated: the baseline was measured on another host")
            if c.status == "regression" and not c.failed:
                c.status = "ok"
    result.warnings.append(f"latency reported, not gated: the baseline comes from another host ({why}); "
                           "refresh the baseline on this runner class to gate latency (docs/CI.md)")
    return False


def _gate(suite: Suite, new: dict, base: dict):
    from pipeline.measure.compare import compare_reports

    g = suite.gate
    result = compare_reports(new, base, g.max_regression, g.max_accuracy_drop, noise_factor=g.noise_factor,
                             fail_on_missing=g.fail_on_missing)
    if g.latency_gate == "same-host":
        gate_latency_only_on_same_host(result, new, base)
    return result


def confirm_regressions(suite: Suite, result, new: dict, base: dict, run_dir: Path, out: Path):
    """Re-measure the cases that regressed in latency, once, and gate again with those figures: a slow
    moment of a shared host passes, a real regression shows twice. Returns the final comparison."""
    from pipeline.measure.compare import load_report

    slow = {c.name: c for c in result.cases if c.latency_regression}
    if not slow:
        return result
    print(f"re-measuring {', '.join(slow)} to confirm the latency regression", file=sys.stderr, flush=True)
    confirm = out / "bench-confirm.json"
    if bench_step(suite, run_dir, confirm, only=sorted({n.rsplit("@b", 1)[0] for n in slow})) != 0:
        result.warnings.append("the confirmation bench failed: the first measurement stands")
        return result
    again = {c["name"]: c for c in load_report(confirm)["cases"] if c["name"] in slow}
    merged = dict(new)
    merged["cases"] = [again.get(c["name"], c) for c in new["cases"]]
    final = _gate(suite, merged, base)
    for c in final.cases:
        first = slow.get(c.name)
        if first is not None:
            c.messages.append(f"re-measured (bench-confirm.json): first p50 {first.new_p50:.4g} ms ({first.ratio:.2f}x), "
                              f"then {c.new_p50:.4g} ms ({c.ratio:.2f}x); the second figure is gated")
    return final


def compare_step(suite: Suite, report: Path, baseline: Path, out: Path, run_dir: Path | None = None) -> int:
    """Gate ``report`` against ``baseline``; write compare.md / compare.xml (and the job summary).
    With ``run_dir`` and gate.confirm_regressions, latency regressions are re-measured once first."""
    from pipeline.measure.compare import load_report, to_junit, to_markdown
    from pipeline.commands.compare import write_output

    if not baseline.is_file():
        raise DataError(f"no baseline at {baseline}",
                        hint="create it on this host with `python benchmarks/refresh_baselines.py`")
    new, base = load_report(report), load_report(baseline)
    result = _gate(suite, new, base)
    if suite.gate.confirm_regressions and run_dir is not None:
        result = confirm_regressions(suite, result, new, base, run_dir, out)
    md = to_markdown(result)
    label = (base.get("baseline") or {}).get("host_label") or baseline.stem
    md = md.replace("### Benchmark comparison:", f"### Benchmark comparison ({suite.name} vs {label}):", 1)
    write_output(str(out / "compare.md"), md)
    write_output(str(out / "compare.xml"), to_junit(result))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        write_output(os.environ["GITHUB_STEP_SUMMARY"], md)
    from pipeline.measure.compare import print_result

    print_result(result, lambda c: c.messages[-1] if c.messages else None)
    return result.exit_code


def run_suite(suite: Suite, out: Path, *, compare: bool = False, host: str | None = None,
              baseline: Path | None = None, repeats: int | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    run_dir, report = out / "run", out / "bench.json"
    rc = run_step(suite, run_dir)
    if rc != 0:
        print(f"suite {suite.name}: the pipeline run failed (exit {rc})", file=sys.stderr)
        return rc
    bundles = collect_bundles(run_dir, out / "bundles")
    print(f"bundles: {', '.join(str(b) for b in bundles) or 'none'}")
    rc = bench_step(suite, run_dir, report, repeats)
    if rc != 0:
        return rc
    print(f"report: {report}")
    if not compare:
        return 0
    base = baseline or suite.baseline_path(host or next(iter(suite.hosts)))
    return compare_step(suite, report, base, out, run_dir=run_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/suite.py", description=__doc__.split("\n\n")[0])
    p.add_argument("suite", help="suite name (benchmarks/suites/NAME.yaml) or a YAML path")
    p.add_argument("--out", help="output folder (default runs/suite-NAME)")
    p.add_argument("--compare", action="store_true", help="gate against the stored baseline")
    p.add_argument("--compare-only", action="store_true", help="gate OUT/bench.json from an earlier run; run nothing")
    p.add_argument("--host", help="which host baseline of the suite to compare with (default: the first)")
    p.add_argument("--baseline", help="compare with this report instead")
    p.add_argument("--repeats", type=int, help="override the suite's repeats")
    p.add_argument("--check", action="store_true", help="only validate the suite (profiles, baselines) and exit")
    args = p.parse_args(argv)
    try:
        suite = load_suite(args.suite)
        if args.check:
            problems = check_suite(suite)
            for pr in problems:
                print(f"error: {pr}", file=sys.stderr)
            print(f"suite {suite.name}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
            return 2 if problems else 0
        out = Path(args.out) if args.out else ROOT / "runs" / f"suite-{suite.name}"
        if args.compare_only:
            report = out / "bench.json"
            if not report.is_file():
                raise DataError(f"no report at {report}", hint=f"run `python benchmarks/suite.py {suite.name} --out "
                                                               f"{out}` first (or download its bench.json there)")
            base = Path(args.baseline) if args.baseline else suite.baseline_path(args.host or next(iter(suite.hosts)))
            return compare_step(suite, report, base, out)
        return run_suite(suite, out, compare=args.compare, host=args.host,
                         baseline=Path(args.baseline) if args.baseline else None, repeats=args.repeats)
    except PipelineError as e:
        print(f"error: {e.message}" + (f"\n  fix: {e.hint}" if e.hint else ""), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
