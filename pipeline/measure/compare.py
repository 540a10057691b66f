"""Compare a benchmark report against a stored baseline: the CI gate.

    python -m pipeline.measure.compare new.json benchmarks/baselines/x86.json --max-regression 10% \
        --markdown "$GITHUB_STEP_SUMMARY" --junit compare.xml

Cases are matched by name. For each case present in both reports:

* latency regression when   new.p50 > base.p50 * (1 + max_regression + noise_factor * noise)
  with noise = max over the two reports' cases of
      max(cv_between_repeats, 1.2533 * cv_within_repeats / sqrt(iterations))
  cv_between_repeats is the spread of the repeats' medians (what reruns of the job vary by);
  1.2533 * cv / sqrt(n) is the relative standard error of a median of n samples (normal approximation),
  which only matters for short runs. p50 is the median of the repeats' medians (harness).
  and, when both cases carry a 95% interval of their p50 (`latency_ms.ci95_ms`, 6+ repeats), only when the
  slowdown is real at that level: new.ci95[0] > base.ci95[1] * (1 + max_regression) (absolute milliseconds;
  the normalised check keeps the noise rule alone)
* accuracy regression when  new.accuracy < base.accuracy - max_accuracy_drop   (both have accuracy)

Which latency is gated (the "basis", printed per case and in one line of the summary):
* "normalised" when both reports carry a reference kernel (pipeline/reference_kernel.py: an int8 GEMM and
  an fp32 GEMM of fixed size, timed in fresh children before and after the cases): the case's p50 divided by
  the reference time of the same arithmetic (int8 cases by the int8 GEMM, others by the fp32 GEMM) at the
  case's thread count. This ratio survives a change of CPU or of background load much better than
  milliseconds do; the reference kernel's spread between its children is added to the noise.
* "+absolute" when, in addition, the host fingerprint matches (CPU model, logical cores, runtime versions):
  the absolute p50 is gated too, and either regressing fails the case.
* "absolute" when a report has no reference kernel (older baselines): milliseconds only, as before.

Cases only in the baseline are "missing" (a failure only with --fail-on-missing), cases only in the new
report are "new". Cases whose batch, threads, runtime or source differ are "incomparable" (a warning).
Exit codes: 0 no regression, 1 regression, 2 unreadable or invalid input (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pipeline.errors import DataError

MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # 1.2533: SE(median) = 1.2533 * sigma / sqrt(n)


@dataclass
class CaseComparison:
    name: str
    status: str  # ok | regression | improved | missing | new | incomparable
    runtime: str | None = None
    batch: int | None = None
    base_p50: float | None = None
    new_p50: float | None = None
    ratio: float | None = None  # new_p50 / base_p50
    limit_ratio: float | None = None  # 1 + max_regression + noise_factor * noise
    noise: float | None = None
    latency_regression: bool = False
    accuracy_regression: bool = False
    base_accuracy: float | None = None
    new_accuracy: float | None = None
    messages: list[str] = field(default_factory=list)
    basis: str | None = None  # normalised | normalised+absolute | absolute (what the latency gate used)
    abs_ratio: float | None = None  # new_p50 / base_p50 in milliseconds, whatever the basis
    abs_limit: float | None = None

    @property
    def failed(self) -> bool:
        return self.latency_regression or self.accuracy_regression


@dataclass
class CompareResult:
    cases: list[CaseComparison]
    max_regression: float
    max_accuracy_drop: float
    noise_factor: float = 1.0
    fail_on_missing: bool = False
    warnings: list[str] = field(default_factory=list)
    basis_lines: list[str] = field(default_factory=list)  # which latency was gated, and why

    @property
    def regressions(self) -> list[CaseComparison]:
        return [c for c in self.cases if c.failed]

    @property
    def missing(self) -> list[str]:
        return [c.name for c in self.cases if c.status == "missing"]

    @property
    def added(self) -> list[str]:
        return [c.name for c in self.cases if c.status == "new"]

    @property
    def failed(self) -> bool:
        return bool(self.regressions) or (self.fail_on_missing and bool(self.missing))

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        n = len([c for c in self.cases if c.status not in ("missing", "new")])
        parts = [f"{n} compared", f"{len(self.regressions)} regression(s)"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing")
        if self.added:
            parts.append(f"{len(self.added)} new")
        return ("FAIL: " if self.failed else "OK: ") + ", ".join(parts)


def case_noise(case: dict) -> float:
    """Relative noise of one case's p50 (see module docstring)."""
    lat = case.get("latency_ms") or {}
    between = float(lat.get("cv_between_repeats") or 0.0)
    within = float(lat.get("cv_within_repeats") or 0.0)
    n = int(lat.get("iterations") or 0)
    se = MEDIAN_SE_FACTOR * within / math.sqrt(n) if n > 0 and within > 0 else 0.0
    return max(between, se)


FINGERPRINT_KEYS = ("cpu_model", "logical_cores", "runtimes")


def host_fingerprint_diff(env_new: dict, env_base: dict) -> list[str]:
    """What differs between two hosts' fingerprints (CPU model, logical cores, runtime versions); [] = same.
    A key missing from either report counts as a difference: an unknown host is not the same host."""
    return [f"{k} {env_base.get(k)!r} (baseline) vs {env_new.get(k)!r} (new)" for k in FINGERPRINT_KEYS
            if env_new.get(k) is None or env_new.get(k) != env_base.get(k)]


def reference_for(report: dict, case: dict) -> tuple[float, float] | None:
    """(reference ms, its spread) for `case`: the int8 GEMM for int8 cases, else the fp32 GEMM, at the case's
    threads; None when the report has no usable reference kernel."""
    ref = report.get("reference_kernel") or {}
    by = (ref.get("by_threads") or {}).get(str(case.get("threads") or 1)) or {}
    kind = "int8_gemm" if str(case.get("precision") or "").startswith("int8") else "fp32_gemm"
    ms = by.get(f"{kind}_ms")
    if not isinstance(ms, (int, float)) or ms <= 0:
        return None
    return float(ms), float(by.get(f"{kind}_cv") or 0.0)


def _acc(case: dict) -> float | None:
    a = case.get("accuracy")
    if isinstance(a, dict):
        a = a.get("value")
    return float(a) if isinstance(a, (int, float)) else None


def compare_reports(
    new: dict,
    baseline: dict,
    max_regression: float = 0.10,
    max_accuracy_drop: float = 0.0,
    *,
    noise_factor: float = 1.0,
    fail_on_missing: bool = False,
    force: bool = False,
) -> CompareResult:
    """Compare two benchmark reports (schema.json, kind benchmark-report) case by case (by name).

    Reports from two instruction-set classes (environment.isa, targets/isa.py) are refused with a DataError
    unless `force`: their INT8 kernels differ, so a change between them is not a regression of the model."""
    if max_regression < 0 or max_accuracy_drop < 0 or noise_factor < 0:
        raise DataError("max_regression, max_accuracy_drop and noise_factor must be >= 0")
    new_cases = {c["name"]: c for c in new.get("cases", [])}
    base_cases = {c["name"]: c for c in baseline.get("cases", [])}
    result = CompareResult([], max_regression, max_accuracy_drop, noise_factor, fail_on_missing)

    env_n, env_b = new.get("environment") or {}, baseline.get("environment") or {}
    for key in ("cpu_model", "board", "logical_cores"):
        if key in env_n and key in env_b and env_n[key] != env_b[key]:
            result.warnings.append(f"environment differs: {key} {env_b[key]!r} (baseline) vs {env_n[key]!r} (new)")
    isa_n, isa_b = env_n.get("isa"), env_b.get("isa")
    if isa_n and isa_b and isa_n != isa_b:
        if not force:
            raise DataError(f"the reports come from different instruction-set classes: baseline {isa_b}, new {isa_n} "
                            "(their INT8 kernels compute different numbers at different speeds)",
                            hint="compare reports of one class (re-record the baseline on this host class), or "
                                 "pass --force to gate across classes anyway")
        result.warnings.append(f"instruction-set classes differ (--force): baseline {isa_b}, new {isa_n}")
    elif bool(isa_n) != bool(isa_b):
        result.warnings.append(f"instruction-set class recorded on one side only: baseline {isa_b or 'unknown'}, "
                               f"new {isa_n or 'unknown'}")
    host_diff = host_fingerprint_diff(env_n, env_b)
    ref_versions = {(new.get("reference_kernel") or {}).get("version"),
                    (baseline.get("reference_kernel") or {}).get("version")}
    same_kernel = len(ref_versions) == 1 and None not in ref_versions

    for name, b in base_cases.items():
        n = new_cases.get(name)
        if n is None:
            result.cases.append(CaseComparison(
                name, "missing", runtime=b.get("runtime"), batch=b.get("batch"),
                base_p50=b["latency_ms"]["p50"], base_accuracy=_acc(b),
                messages=["case is in the baseline but not in the new report"],
            ))
            continue
        cc = CaseComparison(name, "ok", runtime=n.get("runtime"), batch=n.get("batch"),
                            base_p50=b["latency_ms"]["p50"], new_p50=n["latency_ms"]["p50"],
                            base_accuracy=_acc(b), new_accuracy=_acc(n))
        diffs = [k for k in ("runtime", "batch", "threads", "source") if n.get(k) != b.get(k)]
        if diffs:
            cc.status = "incomparable"
            cc.messages.append("settings differ: " + ", ".join(f"{k} {b.get(k)!r} -> {n.get(k)!r}" for k in diffs))
        else:
            _gate_latency(cc, n, b, new, baseline, max_regression, noise_factor, host_diff, same_kernel)
            if n.get("sha256") and b.get("sha256") and n["sha256"] != b["sha256"]:
                cc.messages.append("artifact changed (sha256 differs)")
        if cc.base_accuracy is not None and cc.new_accuracy is not None:
            if cc.new_accuracy < cc.base_accuracy - max_accuracy_drop - 1e-12:
                cc.accuracy_regression = True
                cc.messages.append(
                    f"accuracy {cc.new_accuracy:.4f} < baseline {cc.base_accuracy:.4f} - allowed drop {max_accuracy_drop:.4f}"
                )
        elif cc.base_accuracy is not None:
            cc.messages.append("the baseline has an accuracy, the new report does not")
        if cc.failed:
            cc.status = "regression"
        result.cases.append(cc)

    for name, n in new_cases.items():
        if name not in base_cases:
            result.cases.append(CaseComparison(
                name, "new", runtime=n.get("runtime"), batch=n.get("batch"), new_p50=n["latency_ms"]["p50"],
                new_accuracy=_acc(n), messages=["no baseline for this case"],
            ))
    result.basis_lines = _basis_lines(result, host_diff, same_kernel, new, baseline)
    return result


def _real_by_intervals(n: dict, b: dict, max_regression: float) -> bool | None:
    """With a 95% interval on both cases (pipeline/measure/core.py order-statistic interval of the repeats' p50,
    6+ repeats): a slowdown is real only when the new interval's lower end is above the baseline interval's
    upper end x (1 + max_regression). None when either case has no interval (the noise rule alone decides)."""
    cn, cb = (n.get("latency_ms") or {}).get("ci95_ms"), (b.get("latency_ms") or {}).get("ci95_ms")
    if not (isinstance(cn, list) and isinstance(cb, list) and len(cn) == 2 and len(cb) == 2):
        return None
    return cn[0] > cb[1] * (1.0 + max_regression)


def _gate_latency(cc: CaseComparison, n: dict, b: dict, new: dict, baseline: dict, max_regression: float,
                  noise_factor: float, host_diff: list[str], same_kernel: bool) -> None:
    """Gate one case's latency: normalised by the reference kernel where both reports have it, absolute
    milliseconds too on the same host (or alone without a reference kernel). Sets cc's ratio, limit, basis."""
    noise = max(case_noise(n), case_noise(b))
    if not (cc.base_p50 and cc.base_p50 > 0) or cc.new_p50 is None:
        cc.noise, cc.limit_ratio = noise, 1.0 + max_regression + noise_factor * noise
        return
    cc.abs_ratio = cc.new_p50 / cc.base_p50
    cc.abs_limit = 1.0 + max_regression + noise_factor * noise
    rn, rb = reference_for(new, n), reference_for(baseline, b)
    checks = []  # (label, ratio, limit, text)
    if rn and rb and same_kernel:
        norm_noise = max(noise, rn[1], rb[1])
        norm_ratio = (cc.new_p50 / rn[0]) / (cc.base_p50 / rb[0])
        norm_limit = 1.0 + max_regression + noise_factor * norm_noise
        cc.ratio, cc.limit_ratio, cc.noise = norm_ratio, norm_limit, norm_noise
        checks.append(("normalised", norm_ratio, norm_limit,
                       f"p50 / reference kernel is {norm_ratio:.2f}x the baseline's (p50 {cc.new_p50:.4g} ms / "
                       f"{rn[0]:.4g} ms vs {cc.base_p50:.4g} ms / {rb[0]:.4g} ms; limit {norm_limit:.3f}x = 1 + "
                       f"{max_regression:.3g} allowed + {noise_factor * norm_noise:.3g} noise)"))
        cc.basis = "normalised"
        if not host_diff:
            checks.append(("absolute", cc.abs_ratio, cc.abs_limit,
                           f"p50 {cc.new_p50:.4g} ms is {cc.abs_ratio:.2f}x the baseline {cc.base_p50:.4g} ms on the "
                           f"same host (limit {cc.abs_limit:.3f}x)"))
            cc.basis = "normalised+absolute"
    else:
        cc.ratio, cc.limit_ratio, cc.noise, cc.basis = cc.abs_ratio, cc.abs_limit, noise, "absolute"
        checks.append(("absolute", cc.abs_ratio, cc.abs_limit,
                       f"p50 {cc.new_p50:.4g} ms is {cc.abs_ratio:.2f}x the baseline {cc.base_p50:.4g} ms "
                       f"(limit {cc.abs_limit:.3f}x = 1 + {max_regression:.3g} allowed + {noise_factor * noise:.3g} "
                       "noise)"))
    real = _real_by_intervals(n, b, max_regression)
    for label, ratio, limit, text in checks:
        if ratio > limit:
            if label == "absolute" and real is False:
                cc.messages.append(f"not a regression: {text}, but the 95% intervals say it is not real (new lower "
                                   f"end {n['latency_ms']['ci95_ms'][0]:.4g} ms <= baseline upper end "
                                   f"{b['latency_ms']['ci95_ms'][1]:.4g} ms x {1 + max_regression:.3g})")
                continue
            cc.latency_regression = True
            cc.messages.append(text)
    if not cc.latency_regression and cc.ratio * cc.limit_ratio < 1.0:
        cc.status = "improved"


def _basis_lines(result: CompareResult, host_diff: list[str], same_kernel: bool, new: dict, baseline: dict) -> list[str]:
    used = {c.basis for c in result.cases if c.basis}
    lines = []
    if used & {"normalised", "normalised+absolute"}:
        lines.append("latency gated on p50 normalised by the reference kernel (int8 / fp32 GEMM timed with the cases "
                     "in the same session; pipeline/reference_kernel.py)")
        if host_diff:
            lines.append("absolute p50 reported, not gated: the host fingerprint differs (" + "; ".join(host_diff) + ")")
        else:
            lines.append("absolute p50 gated too: the host fingerprint matches (CPU model, cores, runtime versions)")
    if "absolute" in used:
        missing = [w for w, r in (("new report", new), ("baseline", baseline))
                   if not (r.get("reference_kernel") or {}).get("by_threads")]
        if missing:
            why = f"no reference kernel in the {' and the '.join(missing)}"
        elif not same_kernel:
            why = "the two reference kernels differ in version (not comparable)"
        else:
            why = "no reference kernel figure at these cases' thread count"
        lines.append(f"latency gated on absolute p50 for {sum(c.basis == 'absolute' for c in result.cases)} case(s): "
                     f"{why}")
    return lines


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
_ICON = {"ok": "✅ ok", "improved": "🚀 improved", "regression": "❌ regression", "missing": "⚠️ missing",
         "new": "🆕 new", "incomparable": "⚠️ incomparable"}


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _f(v: float | None, fmt: str = "{:.4g}") -> str:
    return "–" if v is None else fmt.format(v)


def to_markdown(result: CompareResult) -> str:
    """A Markdown summary (heading, one table row per case, notes) for a GitHub job summary."""
    head = "❌ regression" if result.failed else "✅ no regression"
    lines = [
        f"### Benchmark comparison: {head}",
        "",
        f"{result.summary()}. A case regresses when its p50 (normalised by the reference kernel where both reports "
        f"have one) exceeds the baseline's × (1 + {result.max_regression:.3g} + noise), noise = max(cv between "
        f"repeats, 1.25·cv/√n) of both reports; accuracy may drop by {result.max_accuracy_drop:.3g}.",
        "",
        *[f"- {_md(line)}" for line in result.basis_lines],
        "",
        "| Case | Runtime | Batch | Base p50 (ms) | New p50 (ms) | Change | Limit | Basis | Accuracy (base → new) | Status |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for c in result.cases:
        change = "–" if c.ratio is None else f"{(c.ratio - 1) * 100:+.1f}%"
        limit = "–" if c.limit_ratio is None else f"+{(c.limit_ratio - 1) * 100:.1f}%"
        acc = "–"
        if c.base_accuracy is not None or c.new_accuracy is not None:
            acc = f"{_f(c.base_accuracy, '{:.4f}')} → {_f(c.new_accuracy, '{:.4f}')}"
        lines.append(
            f"| {_md(c.name)} | {_md(c.runtime or '–')} | {_f(c.batch, '{}')} | {_f(c.base_p50)} | {_f(c.new_p50)} "
            f"| {change} | {limit} | {_md(c.basis or '–')} | {acc} | {_ICON.get(c.status, c.status)} |"
        )
    notes = [f"- **{_md(c.name)}**: {_md(m)}" for c in result.cases for m in c.messages]
    notes += [f"- {_md(w)}" for w in result.warnings]
    if notes:
        lines += ["", "<details><summary>Notes</summary>", "", *notes, "", "</details>"]
    return "\n".join(lines) + "\n"


def to_junit(result: CompareResult) -> str:
    """JUnit XML: one testcase per case, <failure> for regressions (and missing cases with
    fail_on_missing), <skipped> for missing / new / incomparable cases."""
    suites = ET.Element("testsuites", name="benchmark-compare")
    suite = ET.SubElement(suites, "testsuite", name="benchmarks")
    props = ET.SubElement(suite, "properties")
    for k, v in (("max_regression", result.max_regression), ("max_accuracy_drop", result.max_accuracy_drop),
                 ("noise_factor", result.noise_factor)):
        ET.SubElement(props, "property", name=k, value=str(v))
    for i, line in enumerate(result.basis_lines):
        ET.SubElement(props, "property", name=f"latency_basis_{i}", value=line)
    failures = skipped = 0
    for c in result.cases:
        tc = ET.SubElement(suite, "testcase", classname=f"benchmarks.{c.runtime or 'unknown'}", name=c.name,
                           time=f"{(c.new_p50 or 0.0) / 1000.0:.6f}")
        detail = "\n".join(c.messages)
        if c.failed:
            failures += 1
            kinds = [k for k, f in (("LatencyRegression", c.latency_regression),
                                    ("AccuracyRegression", c.accuracy_regression)) if f]
            f = ET.SubElement(tc, "failure", message=c.messages[0] if c.messages else "regression", type="+".join(kinds))
            f.text = detail
        elif c.status == "missing" and result.fail_on_missing:
            failures += 1
            f = ET.SubElement(tc, "failure", message="case missing from the new report", type="MissingCase")
            f.text = detail
        elif c.status in ("missing", "new", "incomparable"):
            skipped += 1
            ET.SubElement(tc, "skipped", message=c.messages[0] if c.messages else c.status)
        out = ET.SubElement(tc, "system-out")
        g = lambda v: "none" if v is None else f"{v:.6g}"  # noqa: E731
        out.text = (
            f"status={c.status} basis={c.basis or 'none'} base_p50_ms={g(c.base_p50)} new_p50_ms={g(c.new_p50)} "
            f"ratio={g(c.ratio)} abs_ratio={g(c.abs_ratio)} "
            f"limit={g(c.limit_ratio)} noise={g(c.noise)} base_accuracy={g(c.base_accuracy)} "
            f"new_accuracy={g(c.new_accuracy)}"
            + (f"\n{detail}" if detail else "")
        )
    suite.set("tests", str(len(result.cases)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suites.set("tests", str(len(result.cases)))
    suites.set("failures", str(failures))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
def load_report(path: str | os.PathLike) -> dict:
    """Read and validate a report; a bench.py case result is accepted and wrapped as a one-case report.
    Raises DataError with one clear line."""
    from pipeline.measure.harness import case_from_results, make_report, validation_errors

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    from pipeline import strict_json

    strict_json.check(doc, str(path), hint="compare reports written by the harness (they hold finite figures only)")
    errors = validation_errors(doc)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"{path}: not a valid benchmark report: {errors[0]}{more}")
    if doc["kind"] == "case-result":
        env = dict(doc["environment"])
        return make_report([case_from_results([doc], name=doc["name"])], environment=env)
    return doc


def parse_fraction(s: str) -> float:
    """'10%' -> 0.10, '0.1' -> 0.1; bare numbers above 1 are refused as ambiguous."""
    t = str(s).strip()
    try:
        if t.endswith("%"):
            v = float(t[:-1]) / 100.0
        else:
            v = float(t)
            if v > 1:
                raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: write a percentage (10%) or a fraction (0.10)") from None
    if v < 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s!r}: must be >= 0")
    return v


def _write(path: str, text: str) -> None:
    append = bool(os.environ.get("GITHUB_STEP_SUMMARY")) and os.path.abspath(path) == os.path.abspath(
        os.environ["GITHUB_STEP_SUMMARY"]
    )
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m pipeline.measure.compare", description="Gate a benchmark report against a baseline.")
    p.add_argument("new", help="new benchmark report (JSON)")
    p.add_argument("baseline", help="stored baseline report (JSON)")
    p.add_argument("--max-regression", type=parse_fraction, default=0.10, help="allowed p50 growth: 10%% or 0.10")
    p.add_argument("--max-accuracy-drop", type=parse_fraction, default=0.0, help="allowed accuracy drop (0)")
    p.add_argument("--noise-factor", type=float, default=1.0, help="multiplier of the measured noise (1.0)")
    p.add_argument("--fail-on-missing", action="store_true", help="a baseline case absent from new fails")
    p.add_argument("--markdown", default=None, help="write a Markdown summary (appends to $GITHUB_STEP_SUMMARY)")
    p.add_argument("--junit", default=None, help="write JUnit XML")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--force", action="store_true", help="gate reports of different instruction-set classes")
    args = p.parse_args(argv)
    try:
        new = load_report(args.new)
        base = load_report(args.baseline)
        result = compare_reports(new, base, args.max_regression, args.max_accuracy_drop,
                                 noise_factor=args.noise_factor, fail_on_missing=args.fail_on_missing,
                                 force=args.force)
    except DataError as e:
        print(f"error: {e.message}" + (f" ({e.hint})" if getattr(e, "hint", None) else ""), file=sys.stderr)
        return 2
    try:
        if args.markdown:
            _write(args.markdown, to_markdown(result))
        if args.junit:
            _write(args.junit, to_junit(result))
    except OSError as e:
        print(f"error: cannot write output: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_result(result, lambda c: c.messages[0] if c.failed and c.messages else None)
    return result.exit_code


def print_result(result, message) -> None:
    """One line per case (`message(case)`: the text after it, or None), the basis lines, warnings, summary;
    shared by this command and benchmarks/suite.py."""
    for c in result.cases:
        ratio = "" if c.ratio is None else f" {c.ratio:.3f}x (limit {c.limit_ratio:.3f}x, {c.basis})"
        text = message(c)
        print(f"{c.status:12} {c.name}{ratio}" + (f"  {text}" if text else ""))
    for line in result.basis_lines:
        print(f"basis: {line}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(result.summary())


if __name__ == "__main__":
    sys.exit(main())
