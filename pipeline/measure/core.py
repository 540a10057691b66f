"""One measurement core: latencies with 95% intervals, and decisions that noise cannot flip.

    from pipeline.measure.core import Settings, measure
    m = measure({"int8": run_a, "float": run_b}, Settings())
    m.figures["int8"].median_ms, m.figures["int8"].ci95_ms       # per-call latency and its interval
    d = m.difference("float", "int8")                             # paired, per-round: float - int8
    d.verdict                                                      # "slower" | "faster" | "tie"

How it measures (the rules of docs/ARCHITECTURE.md "Measuring"):
- warm-up: `warmup` untimed calls of every function;
- calibrated inner loops: each function is called `loops` times per block, `loops` chosen so that one block
  lasts at least `min_block_s` (2 ms: a sub-0.1 ms model is timed over many calls, never one perf_counter pair
  around a few microseconds; yet short against the scheduler's slice, so most blocks run unpreempted);
- preempted blocks: each block's wall time is compared with this process's CPU time over it; a block that
  spent more than 20% of its time off the CPU (a neighbour had it) is left out of figures and paired
  differences while 6 or more blocks remain, and counted (`preempted_blocks`; over 25% is a noisy host); so
  is a block over 1.5x its function's median (steal time the CPU accounting does not see);
- interleaved round-robin blocks: every round times one block of every function, the order rotated every two
  rounds and reversed every other round, so a drift of the host (a neighbour starting, frequency scaling)
  hits all functions alike and no function keeps one position;
- the figure of one block is its time per call (block time / loops); the figure of a function is the median
  of its blocks, with a 95% interval;
- paired differences: round r gives d_r = block_a[r] - block_b[r]; the difference is the median of the d_r
  with its 95% interval (over the rounds where neither block was preempted; with fewer than 6 of those, an
  unpaired, conservative interval from the two figures' 97.5% intervals). "A is faster than B" only when that
  interval excludes zero, and the unpaired interval agrees (it guards against a pairing artifact: a scheduler
  slice landing on the same position of many rounds), and the difference is beyond TIE_MARGIN (2%) of the
  faster figure (criterion.rs's noise threshold); otherwise a tie;
- it keeps measuring until every figure's relative half-width is <= `rel_half_width` (default 5%) and every
  two functions share >= 9 rounds where neither block was preempted, or the time cap `max_time_s` is hit
  (or max_blocks), and says which (`stopped`: "converged" | "time cap" | "max blocks"), with the number of
  blocks and samples, the CV of the blocks and the host's load average; `noisy` when a CV is above CV_NOISY
  (the bench's acceptance threshold), the 1-minute load average is above the cores, or over 25% of the blocks
  were preempted.

The interval: the distribution-free order-statistic interval for the median (the sign test inverted: with n
blocks, [x_(k), x_(n-k+1)] where k is the largest rank with 2 * P(Binom(n, 1/2) <= k-1) <= 0.05). Why this
and not a bootstrap or mean +- t*sd: latencies are skewed (a busy neighbour adds a long right tail), the
median is the figure we report, and this interval assumes nothing about the shape beyond independent blocks;
it is exact (coverage >= 95% for any n >= 6), deterministic (no resampling seed: the same blocks give the
same decision every time) and cheap. Its price: it needs at least 6 blocks (MIN_BLOCKS is 9, the first n
whose interval drops the extremes), and its width moves in steps of one order statistic.
"""
from __future__ import annotations

import functools
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

CONFIDENCE = 0.95
# The acceptance figure for stable host numbers (docs/CI.md): a CV above it is a noisy host. pipeline bench
# uses the same constant (pipeline.commands.bench.CV_TARGET is this one).
CV_NOISY = 0.05
# A block is preempted when more than 20% of its wall time (and >= 0.2 ms) was not this process's CPU time:
# on a loaded host the scheduler takes the CPU away in slices of a few ms, which adds whole slices to a block
# (measured here at load 6.5 on 2 cores: blocks of one model at 0.04, 0.10 and 0.17 ms per call). Such blocks
# are left out of figures and paired differences while enough remain; more than 25% preempted is a noisy host.
PREEMPT_FRACTION = 0.2
PREEMPT_MIN_S = 0.0002
PREEMPTED_NOISY = 0.25
# A block over 1.5x its function's median (of the blocks the CPU check kept) holds a scheduler slice too: a
# hypervisor's steal time is counted as this process's CPU time, so the CPU check misses it (measured here: blocks
# at 2.6x and 4x the model's own time that the CPU check kept). Only for measure()'s blocks (marks given).
SLICE_FACTOR = 1.5
# Differences under 2% of the faster figure are a tie even when their interval excludes zero (criterion.rs's
# noise threshold): two sessions of the same ONNX graph read ~1% apart here, measurably and reproducibly
# within a process, which is no reason to ship a more complex set.
TIE_MARGIN = 0.02
MIN_BLOCKS = 9  # the order-statistic 95% interval needs n >= 6 (6..8 give [min, max]); 9 gives [x_(2), x_(8)]

Verdict = Literal["faster", "slower", "tie"]


@dataclass(frozen=True)
class Settings:
    warmup: int = 5                 # untimed calls of each function before the first block
    # a block lasts at least this long (calibrated inner loop): short against the scheduler's slice (a few ms),
    # so most blocks run unpreempted even on a loaded host, long against perf_counter's cost (~0.1 us)
    min_block_s: float = 0.002
    min_blocks: int = MIN_BLOCKS    # blocks of every function before convergence is checked
    max_blocks: int = 1000
    tie_margin: float = TIE_MARGIN  # a relative difference under this is a tie
    rel_half_width: float = 0.05    # stop when every figure's half-width / median <= this ...
    max_time_s: float = 20.0        # ... or when this much time was spent measuring (the time cap)
    confidence: float = CONFIDENCE


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover - no load average on this OS
        return None


@functools.lru_cache(maxsize=4096)
def order_stat_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (k, n-k+1) of the distribution-free interval for the median of n values, or None when n
    is too small for that confidence (n < 6 at 95%)."""
    from scipy.stats import binom

    alpha = 1.0 - confidence
    k = 0
    # largest k with 2 * P(X <= k-1) <= alpha, X ~ Binom(n, 1/2)
    while k + 1 <= n // 2 and 2.0 * float(binom.cdf(k, n, 0.5)) <= alpha:
        k += 1
    return (k, n - k + 1) if k >= 1 else None


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Distribution-free interval for the median of `values` (None when there are too few)."""
    ranks = order_stat_ranks(len(values), confidence)
    if ranks is None:
        return None
    s = sorted(values)
    return float(s[ranks[0] - 1]), float(s[ranks[1] - 1])


def cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    m = statistics.fmean(values)
    return statistics.stdev(values) / m if m > 0 else None


@dataclass
class Figure:
    """One function's latency: the median of its blocks (ms per call) and its 95% interval."""

    median_ms: float
    ci95_ms: tuple[float, float] | None
    blocks: int
    samples: int  # calls timed (blocks x loops)
    cv: float | None
    loops: int = 1
    block_ms: list[float] = field(default_factory=list, repr=False)  # every round's block, in round order
    kept: list[bool] = field(default_factory=list, repr=False)       # False: the host preempted that block
    preempted: int = 0
    # False when too few unpreempted blocks were left and the figure holds preempted ones: never "converged"
    clean: bool = True

    @property
    def rel_half_width(self) -> float:
        if self.ci95_ms is None or self.median_ms <= 0:
            return math.inf
        return (self.ci95_ms[1] - self.ci95_ms[0]) / 2.0 / self.median_ms

    def to_json(self) -> dict[str, Any]:
        return {"median_ms": round(self.median_ms, 6),
                "ci95_ms": None if self.ci95_ms is None else [round(v, 6) for v in self.ci95_ms],
                "blocks": self.blocks, "samples": self.samples, "loops": self.loops, "preempted_blocks": self.preempted,
                "clean": self.clean,
                "cv": None if self.cv is None else round(self.cv, 4)}


@dataclass
class Difference:
    """a - b, paired by round: the median of the per-round differences and its 95% interval."""

    a: str
    b: str
    median_ms: float
    ci95_ms: tuple[float, float] | None
    rounds: int
    method: str = "paired"  # paired | unpaired (too few rounds where neither block was preempted)
    # The conservative unpaired interval from the two figures' 97.5% intervals, when the difference came from a
    # Measurement: a verdict needs it to agree with the paired one (see verdict).
    check_ci95_ms: tuple[float, float] | None = None
    margin_ms: float = 0.0  # |difference| under this is a tie (TIE_MARGIN of the faster figure)

    def _side(self, ci: tuple[float, float] | None) -> Verdict:
        if ci is None:
            return "tie"
        if ci[0] > self.margin_ms:
            return "slower"
        if ci[1] < -self.margin_ms:
            return "faster"
        return "tie"

    @property
    def verdict(self) -> Verdict:
        """"slower" (a measurably slower than b), "faster", or "tie" (the interval holds zero, or too few rounds).
        With a check interval both must exclude zero on the same side: the pairing removes drift, but on this
        2-core host a scheduler slice that lands on the same position of many rounds made two identical models
        read 0.066 ms apart by the paired interval alone while their own intervals overlapped."""
        v = self._side(self.ci95_ms)
        if self.check_ci95_ms is not None and self._side(self.check_ci95_ms) != v:
            return "tie"
        return v

    @property
    def cost_ms(self) -> float:
        """The cost of a over b in a decision: the median difference when it is measurably positive, else 0
        ("no measurable difference"; a measurable gain is also 0 here: a cost is never negative)."""
        return max(0.0, self.median_ms) if self.verdict == "slower" else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "median_ms": round(self.median_ms, 6),
                "ci95_ms": None if self.ci95_ms is None else [round(v, 6) for v in self.ci95_ms],
                "rounds": self.rounds, "method": self.method, "verdict": self.verdict,
                "margin_ms": round(self.margin_ms, 6),
                "check_ci95_ms": None if self.check_ci95_ms is None else [round(v, 6) for v in self.check_ci95_ms]}


def difference_of(a: str, b: str, blocks_a: Sequence[float], blocks_b: Sequence[float],
                  confidence: float = CONFIDENCE, keep: Sequence[bool] | None = None) -> Difference:
    """Per-round differences a - b; `keep` (per round) leaves out rounds where either block was preempted when
    enough rounds remain for an interval."""
    d = [x - y for x, y in zip(blocks_a, blocks_b)]
    if keep is not None:
        kept = [x for x, k in zip(d, keep) if k]
        if order_stat_ranks(len(kept), confidence) is not None:
            d = kept
    return Difference(a, b, statistics.median(d) if d else 0.0, median_ci(d, confidence), len(d))


@dataclass
class Measurement:
    figures: dict[str, Figure]
    stopped: str                     # "converged" | "time cap" | "max blocks"
    seconds: float
    load1: float | None
    cores: int
    noisy: bool
    noisy_reason: str | None
    rel_half_width: float
    confidence: float = CONFIDENCE
    tie_margin: float = TIE_MARGIN

    def clean_pairs(self) -> bool:
        """Every figure clean, and every two functions with >= MIN_BLOCKS rounds where neither block was
        preempted (so every paired difference has an interval of its own): required before "converged"."""
        figs = list(self.figures.values())
        if not all(f.clean for f in figs):
            return False
        for i, fa in enumerate(figs):
            for fb in figs[i + 1:]:
                if fa.kept and fb.kept and sum(x and y for x, y in zip(fa.kept, fb.kept)) < MIN_BLOCKS:
                    return False
        return True

    def difference(self, a: str, b: str) -> Difference:
        """a - b: paired per round over the rounds where neither block was preempted; when fewer than 6 such
        rounds remain but there were preempted ones, unpaired: the difference of the two figures with the
        interval [lo_a - hi_b, hi_a - lo_b] from each figure's (1 + confidence) / 2 interval (97.5% each, so
        the difference's interval holds at >= 95% by Bonferroni), which is conservative."""
        fa, fb = self.figures[a], self.figures[b]
        keep = [x and y for x, y in zip(fa.kept, fb.kept)] if fa.kept and fb.kept else None
        unpaired = self._unpaired(a, b)
        unpaired.margin_ms = self.tie_margin * min(fa.median_ms, fb.median_ms)
        if keep is None or all(keep) or order_stat_ranks(sum(keep), self.confidence) is not None:
            d = difference_of(a, b, fa.block_ms, fb.block_ms, self.confidence, keep)
            d.check_ci95_ms, d.margin_ms = unpaired.ci95_ms, unpaired.margin_ms
            return d
        return unpaired

    def _unpaired(self, a: str, b: str) -> Difference:
        fa, fb = self.figures[a], self.figures[b]
        level = (1.0 + self.confidence) / 2.0

        def usable(f: Figure) -> list[float]:
            kept = [x for x, ok in zip(f.block_ms, f.kept or [True] * len(f.block_ms)) if ok]
            return kept if order_stat_ranks(len(kept), level) is not None else list(f.block_ms)

        ua, ub = usable(fa), usable(fb)
        ca, cb = median_ci(ua, level), median_ci(ub, level)
        ci = None if ca is None or cb is None else (ca[0] - cb[1], ca[1] - cb[0])
        return Difference(a, b, statistics.median(ua) - statistics.median(ub), ci, min(len(ua), len(ub)), "unpaired")

    def to_json(self) -> dict[str, Any]:
        return {"figures": {k: f.to_json() for k, f in self.figures.items()}, "stopped": self.stopped,
                "seconds": round(self.seconds, 2), "load1": self.load1, "cores": self.cores, "noisy": self.noisy,
                "noisy_reason": self.noisy_reason, "rel_half_width_target": self.rel_half_width,
                "method": "median of interleaved blocks; distribution-free order-statistic 95% interval"}


def host_noise(cvs: Sequence[float | None], load1: float | None, n_cores: int) -> tuple[bool, str | None]:
    """(noisy, reason): a CV above CV_NOISY, or the 1-minute load average above the cores."""
    reasons = []
    worst = max((c for c in cvs if c is not None), default=None)
    if worst is not None and worst > CV_NOISY:
        reasons.append(f"block CV {worst:.1%} > {CV_NOISY:.0%}")
    if load1 is not None and load1 > n_cores:
        reasons.append(f"load average {load1:.2f} > {n_cores} cores")
    return bool(reasons), "; ".join(reasons) or None


def from_blocks(blocks: Mapping[str, Sequence[float]], stopped: str = "given", seconds: float = 0.0,
                settings: Settings = Settings(), loops: Mapping[str, int] | None = None,
                kept: Mapping[str, Sequence[bool]] | None = None) -> Measurement:
    """A Measurement from per-round block figures (ms per call): what measure() builds, and what tests feed.
    `kept[k][r]` False marks a preempted block: left out of the figure while enough blocks remain for an
    interval (6); every block counts otherwise."""
    figs = {}
    for k, b in blocks.items():
        n_loops = (loops or {}).get(k, 1)
        keep = list((kept or {}).get(k) or [True] * len(b))
        if kept is not None and any(keep):
            ref = statistics.median(x for x, ok in zip(b, keep) if ok)
            keep = [ok and x <= SLICE_FACTOR * ref for x, ok in zip(b, keep)]
        use = [x for x, ok in zip(b, keep) if ok]
        clean = True
        if order_stat_ranks(len(use), settings.confidence) is None:
            use, clean = list(b), keep.count(False) == 0
        figs[k] = Figure(statistics.median(use), median_ci(use, settings.confidence), len(b), len(b) * n_loops,
                         cv(use), n_loops, list(b), keep, keep.count(False), clean)
    load1, n = load_average(), cores()
    noisy, why = host_noise([f.cv for f in figs.values()], load1, n)
    n_pre = sum(f.preempted for f in figs.values())
    n_all = sum(f.blocks for f in figs.values())
    if n_all and n_pre / n_all > PREEMPTED_NOISY:
        noisy, why = True, "; ".join(filter(None, [why, f"{n_pre} of {n_all} blocks preempted by other processes"]))
    return Measurement(figs, stopped, seconds, load1, n, noisy, why, settings.rel_half_width, settings.confidence,
                       settings.tie_margin)


def _calibrate(fn: Callable[[], object], min_block_s: float) -> int:
    """Inner-loop count so one block lasts >= min_block_s, sized on the fastest of 3 tries at each step (a try
    the host preempted would make the loop too short for the model's own time)."""
    loops = 1
    while True:
        dt = min(_timed(fn, loops)[0] for _ in range(3))
        if dt >= min_block_s or loops >= 1 << 20:
            return loops
        loops = loops * 2 if dt <= 0 else max(loops * 2, min(loops * 10, int(loops * min_block_s / dt * 1.2) + 1))


def _timed(fn: Callable[[], object], loops: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of `loops` calls."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(loops):
        fn()
    return time.perf_counter() - t0, time.process_time() - c0


def preempted(wall_s: float, cpu_s: float) -> bool:
    """A block the host took the CPU away from: more than PREEMPT_FRACTION of its wall time (and at least
    PREEMPT_MIN_S) not spent on this process's CPU. A runtime with worker threads uses more CPU than wall
    time, so its blocks are never marked (their figures are plain wall time)."""
    return wall_s - cpu_s > max(PREEMPT_FRACTION * wall_s, PREEMPT_MIN_S)


def measure(fns: Mapping[str, Callable[[], object]], settings: Settings = Settings(),
            converged: Callable[[Measurement], bool] | None = None) -> Measurement:
    """Time every function in interleaved round-robin blocks until every figure's relative half-width is
    within settings.rel_half_width (or `converged(m)` says so, when given) or the time cap is hit."""
    names = list(fns)
    for k in names:
        for _ in range(settings.warmup):
            fns[k]()
    loops = {k: _calibrate(fns[k], settings.min_block_s) for k in names}
    blocks: dict[str, list[float]] = {k: [] for k in names}
    kept: dict[str, list[bool]] = {k: [] for k in names}
    start = time.perf_counter()
    stopped = "max blocks"
    r = 0
    while r < settings.max_blocks:
        # rotated every two rounds and reversed every other round: each function takes every position in turn
        # (with two functions: ab, ba, ba, ab, ...), so a position effect does not favour one of them
        rot = (r // 2) % len(names)
        order = names[rot:] + names[:rot]
        if r % 2:
            order = order[::-1]
        for k in order:
            wall, cpu = _timed(fns[k], loops[k])
            blocks[k].append(wall * 1e3 / loops[k])
            kept[k].append(not preempted(wall, cpu))
        r += 1
        if r >= settings.min_blocks:
            m = from_blocks(blocks, "", time.perf_counter() - start, settings, loops, kept)
            ok = m.clean_pairs() and (converged(m) if converged is not None else all(
                f.rel_half_width <= settings.rel_half_width for f in m.figures.values()))
            if ok:
                stopped = "converged"
                break
            if time.perf_counter() - start >= settings.max_time_s:
                stopped = "time cap"
                break
    return from_blocks(blocks, stopped, time.perf_counter() - start, settings, loops, kept)


def fmt_ci(median: float | None, ci: Sequence[float] | None, digits: int = 4) -> str:
    """`0.1234 [0.1200, 0.1290]` (ms) for logs and tables."""
    if median is None:
        return "—"
    if ci is None:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
