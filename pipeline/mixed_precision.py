"""Mixed precision by measured latency: which layers to keep in float so the INT8 model holds the accuracy
budget at the least measured latency (not the fewest float layers).

Inputs, all measured on this host: each candidate layer's sensitivity (validation accuracy recovered when
that one layer stays float) and its latency cost (end-to-end latency, batch 1, the profile's threads, with
that one layer in float minus the all-INT8 model's, medians in one process). The chooser predicts each set's
drop and cost additively, builds and measures the most promising sets (validation accuracy and latency), and
keeps the measured set that holds the budget at the least measured latency. Every configuration tried goes to
run.json `targets.<profile>.quantize.frontier`; the report draws it with its Pareto front.

End-to-end differences rather than a per-layer profile: they include the Q/DQ and reformat costs a layer's
precision change brings to its neighbours, which per-op timings leave out.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["val_accuracy_drop"] is not None:
            d["val_accuracy_drop"] = round(d["val_accuracy_drop"], 5)
        if d["skipped"] is None:
            del d["skipped"]
        if d["latency_ms"] is not None:
            d["latency_ms"] = round(d["latency_ms"], 5)
        return d


def measure_latencies(models: dict[str, Path], example: np.ndarray, threads: int | None, runs: int = 30,
                      rounds: int = 5, warmup: int = 5) -> dict[str, float]:
    """Median latency (ms, batch 1) of each model, all loaded in this process and timed round-robin in
    `rounds` rounds of `runs` calls, so a drift of the host touches every model alike."""
    from targets.standalone.runtime import load_model

    loaded = {}
    for key, path in models.items():
        m = load_model(Path(path), threads=threads)
        x = example
        if m.layout == "nhwc" and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for _ in range(warmup):
            m.run(x)
        loaded[key] = (m, x)
    per_round: dict[str, list[float]] = {k: [] for k in loaded}
    for _ in range(rounds):
        for key, (m, x) in loaded.items():
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                m.run(x)
                t.append(time.perf_counter() - t0)
            per_round[key].append(float(np.median(t)) * 1e3)
    return {k: float(np.median(v)) for k, v in per_round.items()}


def plan_sets(base_drop: float, budget: float, gains: dict[str, float], costs: dict[str, float], max_layers: int,
              limit: int) -> list[tuple[str, ...]]:
    """Float-layer sets worth building, best first: sets whose additive prediction (base drop minus the sum
    of the layers' gains) holds the budget, by least predicted latency cost (sum of the layers' measured
    costs), then fewer layers; then, up to `limit`, the greedy sequence adding layers by gain per ms of cost
    (layers that recover nothing alone last, by gain then cost: sensitivities are not additive)."""
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


def choose(trials: Sequence[Trial], budget: float) -> Trial | None:
    """The measured configuration that holds the budget at the least measured latency (then fewer layers)."""
    ok = [t for t in trials if t.val_accuracy_drop is not None and t.val_accuracy_drop <= budget
          and t.latency_ms is not None]
    return min(ok, key=lambda t: (t.latency_ms, len(t.float_layers))) if ok else None


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
    lat = measure_latencies({"|".join(k): b.model_file for k, b in built.items()}, example, threads)
    gains = {n: base_drop - (trials[(n,)].val_accuracy_drop or 0.0) for n in usable}
    costs = {n: lat[n] - lat[""] for n in usable}
    tried_sets = {tuple(t.float_layers) for t in skipped}
    for j, s in enumerate(plan_sets(base_drop, q.max_accuracy_drop, gains, costs, q.max_fallback_layers,
                                    q.max_fallback_trials)):
        if s in trials or s in tried_sets:
            continue
        tried_sets.add(s)
        build(s, f"set-{j}", "candidate", "latency-candidate")
    # Every configuration measured again together, so the figures compared come from one session.
    lat = measure_latencies({"|".join(k): b.model_file for k, b in built.items()}, example, threads)
    for k, t in trials.items():
        t.latency_ms, t.source, t.runtime = lat["|".join(k)], source, runtime
        t.holds_budget = t.val_accuracy_drop is not None and t.val_accuracy_drop <= q.max_accuracy_drop
    best = choose([t for k, t in trials.items() if k], q.max_accuracy_drop)
    if best is not None:
        best.chosen = True
    frontier = [t.to_json() for t in trials.values()] + [t.to_json() for t in skipped]
    if best is None or best.val_accuracy_drop is None:
        return None, frontier
    return (built[tuple(best.float_layers)], best.val_accuracy_drop), frontier
