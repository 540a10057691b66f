"""Mixed precision by measured latency: which layers to keep in float so the INT8 model holds the accuracy
budget at the least measured latency (not the fewest float layers).

Inputs, all measured on this host: each candidate layer's sensitivity (validation accuracy recovered when
that one layer stays float) and its latency cost (end-to-end latency, batch 1, the profile's threads, with
that one layer in float minus the all-INT8 model's, medians in one process). The chooser predicts each set's
drop and cost additively, builds and measures the most promising sets (validation accuracy and latency), and
keeps, among the measured sets that hold the budget, the simplest of those not measurably slower than the
fastest (see "Decisions on intervals" below). Every configuration tried goes to
run.json `targets.<profile>.quantize.frontier`; the report draws it with its Pareto front.

End-to-end differences rather than a per-layer profile: they include the Q/DQ and reformat costs a layer's
precision change brings to its neighbours, which per-op timings leave out.

Decisions on intervals (pipeline/measure/core.py): every latency is the median of interleaved blocks with a 95%
interval, and every comparison is a paired difference with its own interval. A layer's cost is the paired
difference (that layer in float minus all-INT8) when its interval is above zero, else 0 ("no measurable
difference"): never negative. Among the measured sets that hold the budget, "A is faster than B" only when the
paired difference's interval excludes zero; the sets not measurably slower than the fastest are a tie, broken by
the simpler set (fewer float layers), and the chosen frontier row says so in `decision` (and the log).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.measure.core import Measurement, Settings, fmt_ci, measure

log = logging.getLogger(__name__)

MAX_CANDIDATES = 10  # exhaustive search over subsets of the 10 most sensitive layers (at most 1023 sets)


class CandidateSkipped(Exception):
    """A float-layer set that cannot be built (the backend refused it, or it leaves no INT8 layer): recorded
    in the frontier with its reason, and the search goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Trial:
    float_layers: list[str]
    val_accuracy_drop: float | None  # None: skipped (see `skipped`)
    val_accuracy: float | None = None
    latency_ms: float | None = None
    source: str = "measured"
    runtime: str = ""
    kind: str = "candidate"  # int8 | sensitivity | candidate
    chosen: bool = False
    holds_budget: bool = False
    skipped: str | None = None  # why this set was not built or measured
    latency_ci95_ms: list[float] | None = None  # 95% interval of latency_ms (order-statistic, over blocks)
    samples: int | None = None  # calls timed (blocks x inner loops)
    decision: str | None = None  # on the chosen row: why it was chosen (faster, or a tie broken by simplicity)

    @property
    def key(self) -> str:
        return "|".join(self.float_layers)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["val_accuracy_drop"] is not None:
            d["val_accuracy_drop"] = round(d["val_accuracy_drop"], 5)
        for k in ("skipped", "decision"):
            if d[k] is None:
                del d[k]
        if d["latency_ms"] is not None:
            d["latency_ms"] = round(d["latency_ms"], 5)
        if d["latency_ci95_ms"] is not None:
            d["latency_ci95_ms"] = [round(v, 5) for v in d["latency_ci95_ms"]]
        return d


# Settings of the mixed-precision measurements: 5% relative half-width or 30 s for all the models together.
LATENCY_SETTINGS = Settings(warmup=5, rel_half_width=0.05, max_time_s=30.0)


def measure_models(models: dict[str, Path], example: np.ndarray, threads: int | None,
                   settings: Settings = LATENCY_SETTINGS) -> Measurement:
    """Every model loaded in this process and timed by the measurement core (interleaved round-robin blocks,
    calibrated inner loops, medians with 95% intervals, paired differences)."""
    from targets.standalone.runtime import load_model

    fns = {}
    for key, path in models.items():
        m = load_model(Path(path), threads=threads)
        x = example
        if m.layout == "nhwc" and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        fns[key] = (lambda m=m, x=x: m.run(x))
    return measure(fns, settings)


def measure_latencies(models: dict[str, Path], example: np.ndarray, threads: int | None, runs: int = 30,
                      rounds: int = 5, warmup: int = 5) -> dict[str, float]:
    """Median latency (ms, batch 1) of each model (measure_models; `runs` and `rounds` are now lower bounds:
    the core's calibrated blocks and convergence rule decide how long it measures)."""
    from pipeline.measure.core import MIN_BLOCKS

    settings = Settings(warmup=warmup, min_block_s=LATENCY_SETTINGS.min_block_s, min_blocks=max(rounds, MIN_BLOCKS),
                        rel_half_width=LATENCY_SETTINGS.rel_half_width, max_time_s=LATENCY_SETTINGS.max_time_s)
    m = measure_models(models, example, threads, settings)
    return {k: f.median_ms for k, f in m.figures.items()}


def layer_costs(m: Measurement, layers: Sequence[str], base: str = "") -> dict[str, float]:
    """A layer's latency cost in a decision: (that layer in float) - (all INT8), paired; 0 unless the interval
    of the difference is above zero. Never negative."""
    return {n: m.difference(n, base).cost_ms for n in layers}


def plan_sets(base_drop: float, budget: float, gains: dict[str, float], costs: dict[str, float], max_layers: int,
              limit: int) -> list[tuple[str, ...]]:
    """Float-layer sets worth building, best first: sets whose additive prediction (base drop minus the sum
    of the layers' gains) holds the budget, by least predicted latency cost (sum of the layers' measured
    costs), then fewer layers; then, up to `limit`, the greedy sequence adding layers by gain per ms of cost
    (layers that recover nothing alone last, by gain then cost: sensitivities are not additive). A cost is
    never negative in a decision (a negative figure counts as 0: see layer_costs)."""
    costs = {n: max(0.0, c) for n, c in costs.items()}
    cands = sorted(gains, key=lambda n: (-gains[n], costs.get(n, 0.0)))[:MAX_CANDIDATES]
    holding = []
    for k in range(1, min(max_layers, len(cands)) + 1):
        for s in itertools.combinations(cands, k):
            if base_drop - sum(gains[n] for n in s) <= budget:
                holding.append((sum(costs.get(n, 0.0) for n in s), k, -sum(gains[n] for n in s), s))
    holding.sort()
    out = [tuple(sorted(s)) for *_, s in holding][:limit]
    helpful = sorted((n for n in cands if gains[n] > 0), key=lambda n: -gains[n] / max(costs.get(n, 0.0), 1e-3))
    order = helpful + [n for n in cands if gains[n] <= 0]
    for k in range(1, min(max_layers, len(order)) + 1):
        if len(out) >= limit:
            break
        s = tuple(sorted(order[:k]))
        if s not in out:
            out.append(s)
    return out


def _slower(t: Trial, than: Trial, m: Measurement | None) -> bool:
    """t measurably slower than `than`: the paired difference's 95% interval above zero (with a measurement
    holding both), else t's interval entirely above than's, else (bare figures, no interval) t's figure above."""
    if m is not None and t.key in m.figures and than.key in m.figures:
        return m.difference(t.key, than.key).verdict == "slower"
    if t.latency_ci95_ms is not None and than.latency_ci95_ms is not None:
        return t.latency_ci95_ms[0] > than.latency_ci95_ms[1]
    return (t.latency_ms or 0.0) > (than.latency_ms or 0.0)


def choose(trials: Sequence[Trial], budget: float, measurement: Measurement | None = None) -> Trial | None:
    """Among the measured configurations that hold the budget: the fastest by median, then every one not
    measurably slower than it (a tie: see _slower), and of those the simplest (fewest float layers, then the
    lower median). Sets `decision` on the chosen trial."""
    ok = [t for t in trials if t.val_accuracy_drop is not None and t.val_accuracy_drop <= budget
          and t.latency_ms is not None]
    if not ok:
        return None
    fastest = min(ok, key=lambda t: (t.latency_ms or 0.0, len(t.float_layers)))
    tied = [t for t in ok if not _slower(t, fastest, measurement)]
    best = min(tied, key=lambda t: (len(t.float_layers), t.latency_ms or 0.0))
    others = [t for t in tied if t is not best]
    name = ", ".join(best.float_layers) or "none"
    if not others:
        best.decision = (f"{{{name}}}: measurably faster than every other set holding the budget"
                         + (" (paired 95% intervals exclude zero)" if measurement is not None else ""))
    else:
        tied_names = "; ".join("{" + ", ".join(t.float_layers) + "}" for t in others)
        best.decision = (f"{{{name}}}: tie with {tied_names} (no measurable latency difference: the 95% interval "
                         "of the paired difference includes zero); broken by simplicity (fewest float layers)")
    return best


def latency_source(backend: Any, numerics: str, target_isa: str | None = None) -> tuple[str, str]:
    """(source label, runtime) of host latencies for a backend; TensorRT's QDQ model runs in ONNX Runtime here.
    A host of another instruction-set class than the target's runs other kernels: host-measured."""
    if backend.host_source == "estimated":
        return "host-measured", "onnxruntime (reference runtime for TensorRT; not TensorRT's own latency)"
    from targets.isa import host_isa

    here = host_isa()
    if target_isa and target_isa != here:
        return "host-measured", f"{numerics} on {here} (target {target_isa})"
    return backend.host_source, numerics


def latency_fallback(layers: list[str], attempt: Callable[[list[str], str], tuple[Any, float]], base: Any,
                     base_drop: float, ref_acc: float, q: Any, tried: list[dict], backend: Any, example: np.ndarray,
                     threads: int | None, target_isa: str | None = None) -> tuple[tuple[Any, float] | None, list[dict]]:
    """Sensitivity and latency cost per layer, then candidate sets built and measured; returns
    ((built, val drop) of the chosen set or None, frontier rows)."""
    source, runtime = latency_source(backend, base.numerics, target_isa)
    built: dict[tuple[str, ...], Any] = {(): base}
    trials: dict[tuple[str, ...], Trial] = {(): Trial([], base_drop, ref_acc - base_drop, kind="int8")}
    skipped: list[Trial] = []

    def build(s: tuple[str, ...], tag: str, kind: str, tried_kind: str) -> bool:
        try:
            b, d = attempt(list(s), tag)
        except CandidateSkipped as e:
            skipped.append(Trial(list(s), None, kind=kind, skipped=e.reason))
            tried.append({"kept_in_float": list(s), "val_accuracy_drop": None, "kind": tried_kind,
                          "skipped": e.reason})
            return False
        built[s], trials[s] = b, Trial(list(s), d, ref_acc - d, kind=kind)
        tried.append({"kept_in_float": list(s), "val_accuracy_drop": round(d, 5), "kind": tried_kind})
        return True

    for i, layer in enumerate(layers):
        build((layer,), f"sens-{i}", "sensitivity", "sensitivity")
    usable = [n for n in layers if (n,) in trials]
    first = measure_models({"|".join(k): b.model_file for k, b in built.items()}, example, threads)
    gains = {n: base_drop - (trials[(n,)].val_accuracy_drop or 0.0) for n in usable}
    costs = layer_costs(first, usable)
    log.info("mixed precision: layer costs (0 = no measurable difference; %s after %d blocks): %s", first.stopped,
             min(f.blocks for f in first.figures.values()),
             ", ".join(f"{n} {c:.4f} ms" for n, c in costs.items()))
    tried_sets = {tuple(t.float_layers) for t in skipped}
    for j, s in enumerate(plan_sets(base_drop, q.max_accuracy_drop, gains, costs, q.max_fallback_layers,
                                    q.max_fallback_trials)):
        if s in trials or s in tried_sets:
            continue
        tried_sets.add(s)
        build(s, f"set-{j}", "candidate", "latency-candidate")
    # Every configuration measured again together, so the figures compared come from one session.
    m = measure_models({"|".join(k): b.model_file for k, b in built.items()}, example, threads)
    for k, t in trials.items():
        f = m.figures["|".join(k)]
        t.latency_ms, t.source, t.runtime = f.median_ms, source, runtime
        t.latency_ci95_ms = None if f.ci95_ms is None else list(f.ci95_ms)
        t.samples = f.samples
        t.holds_budget = t.val_accuracy_drop is not None and t.val_accuracy_drop <= q.max_accuracy_drop
    best = choose([t for k, t in trials.items() if k], q.max_accuracy_drop, m)
    if best is not None:
        best.chosen = True
        log.info("mixed precision: chose %s at %s ms (%s, %d blocks, load %s%s)", best.float_layers,
                 fmt_ci(best.latency_ms, best.latency_ci95_ms), m.stopped,
                 min(f.blocks for f in m.figures.values()), m.load1, "; noisy host: " + str(m.noisy_reason)
                 if m.noisy else "")
        log.info("mixed precision decision: %s", best.decision)
    frontier = [t.to_json() for t in trials.values()] + [t.to_json() for t in skipped]
    if best is None or best.val_accuracy_drop is None:
        return None, frontier
    return (built[tuple(best.float_layers)], best.val_accuracy_drop), frontier
