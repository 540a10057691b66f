"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot state, no display needed).

Each function returns PNG bytes. Marker shape and colour follow the latency source everywhere, and every
legend names the source, so an estimate never looks like a measurement.
"""
from __future__ import annotations

import io
import math

from pipeline.report.data import SOURCE_MEANING, BenchCase, Point, SizeBar

DPI = 110
STYLE = {  # source -> (colour, marker, filled)
    "measured": ("#1f77b4", "o", True),
    "host-measured": ("#ff7f0e", "s", True),
    "estimated": ("#7f3fbf", "D", False),
    "device-measured": ("#2ca02c", "*", True),
}
OTHER = ("#555555", "X", True)
SIZE_COLOURS = {"teacher": "#8c8c8c", "student": "#1f77b4", "pruned": "#17becf", "target": "#ff7f0e"}


def style(source: str) -> tuple[str, str, bool]:
    return STYLE.get(source, OTHER)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _source_handles(sources):
    from matplotlib.lines import Line2D

    handles = []
    for s in sources:
        c, m, filled = style(s)
        handles.append(Line2D([], [], linestyle="none", marker=m, markersize=9, color=c,
                              markerfacecolor=c if filled else "white", markeredgewidth=1.6,
                              label=f"{s}: {SOURCE_MEANING.get(s, 'unknown source')}"))
    return handles


def _log_x(ax):
    """Log x axis with plain tick labels at 1-2-5 steps (0.02, 0.05, 0.1 ...), no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_if_wide(ax, values, ratio=4.0):
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) >= ratio:
        _log_x(ax)
        return True
    return False


def _place_labels(fig, ax, xy_px, texts, avoid_px, fontsize=9):
    """Put a short text next to each point without overlapping other labels or markers (greedy).
    avoid_px: (x, y, radius) of every marker, in figure pixels."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    placed: list = []
    markers = [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for x, y, r in avoid_px]
    axbox = ax.get_window_extent(renderer)
    dirs = [(1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0)]
    out = []
    for (x, y), text in zip(xy_px, texts):
        best = None
        for radius in (12, 20, 30, 42, 56):
            for dx, dy in dirs:
                ox, oy = dx * radius, dy * radius
                t = ax.annotate(text, (x, y), xycoords="figure pixels", xytext=(ox * 72 / fig.dpi, oy * 72 / fig.dpi),
                                textcoords="offset points", fontsize=fontsize, fontweight="bold",
                                ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                                va="bottom" if dy > 0 else ("top" if dy < 0 else "center"))
                bb = t.get_window_extent(renderer).expanded(1.1, 1.15)
                ok = (not any(bb.overlaps(p) for p in placed) and not any(bb.overlaps(m) for m in markers)
                      and axbox.contains(bb.x0, bb.y0) and axbox.contains(bb.x1, bb.y1))
                t.remove()
                if ok:
                    best = (ox, oy, dx, dy, bb, radius)
                    break
            if best:
                break
        if best is None:
            best = (12, 12, 1, 1, None, 12)
        ox, oy, dx, dy, bb, radius = best
        t = ax.annotate(text, (x, y), xycoords="figure pixels", xytext=(ox * 72 / fig.dpi, oy * 72 / fig.dpi),
                        textcoords="offset points", fontsize=fontsize, fontweight="bold",
                        ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
                        va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
                        arrowprops={"arrowstyle": "-", "color": "#555555", "lw": 0.8, "shrinkA": 1, "shrinkB": 5})
        placed.append(bb or t.get_window_extent(renderer))
        out.append(t)
    return out


def accuracy_latency_png(points: list[Point], run_name: str) -> bytes:
    """Accuracy vs latency p50, one marker per artifact, shape/colour by source, Pareto front marked."""
    h = max(5.6, 3.6 + 0.2 * len(points))
    fig = _figure(12, h)
    ax = fig.add_axes([0.07, 0.6 / h, 0.50, 1 - 1.2 / h])
    xs = [p.latency_ms for p in points]
    log = _log_if_wide(ax, xs)
    for s in dict.fromkeys(p.source for p in points):
        c, m, filled = style(s)
        sel = [p for p in points if p.source == s]
        ax.scatter([p.latency_ms for p in sel], [p.accuracy for p in sel], marker=m, s=110 if m == "*" else 60,
                   c=c if filled else "white", edgecolors=c, linewidths=1.6, zorder=3)
    front = sorted((p for p in points if p.pareto), key=lambda p: p.latency_ms)
    if front:
        ax.scatter([p.latency_ms for p in front], [p.accuracy for p in front], s=260, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=2)
        if len(front) > 1:
            ax.step([p.latency_ms for p in front], [p.accuracy for p in front], where="post", color="black",
                    lw=1, ls="--", zorder=1)
    # margins so markers and labels stay inside the axes
    lo, hi = min(xs), max(xs)
    if log:
        ax.set_xlim(lo / 1.6, hi * 1.6)
    else:
        pad = (hi - lo) * 0.18 or max(hi * 0.25, 1e-3)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    ys = [p.accuracy for p in points]
    ypad = (max(ys) - min(ys)) * 0.25 or 0.02
    ax.set_ylim(min(ys) - ypad, min(1.0 + ypad * 0.3, max(ys) + ypad))
    ax.set_xlabel("latency p50 (ms, batch 1)" + (" — log scale" if log else ""))
    ax.set_ylabel("accuracy (test split)")
    ax.set_title(f"Accuracy vs latency p50 — run {run_name}", fontsize=12, loc="left")
    ax.grid(True, which="major", alpha=0.3)
    fig.canvas.draw()
    px = [tuple(ax.transData.transform((p.latency_ms, p.accuracy))) for p in points]
    ring = 0.5 * math.sqrt(260) * fig.dpi / 72 + 1   # the Pareto ring's radius in pixels
    _place_labels(fig, ax, px, [str(i + 1) for i in range(len(points))],
                  [(x, y, ring if p.pareto else 7) for (x, y), p in zip(px, points)])

    from matplotlib.lines import Line2D

    handles = _source_handles(dict.fromkeys(p.source for p in points))
    handles.append(Line2D([], [], linestyle="--", color="black", marker="o", markersize=13, markerfacecolor="none",
                          label="Pareto front (higher accuracy, lower latency)"))
    leg = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.585, 1 - 0.55 / h), fontsize=8.5,
                     frameon=False, title="marker = latency source", title_fontsize=9, alignment="left")
    fig.canvas.draw()
    below = fig.transFigure.inverted().transform(
        (0, leg.get_window_extent(fig.canvas.get_renderer()).y0))[1] - 0.03
    key = "\n".join(f"{i + 1:>2}  {p.name}{'' if p.name.endswith(':' + p.precision) else ' · ' + p.precision} · {p.source}{'  ← Pareto' if p.pareto else ''}"
                    for i, p in enumerate(points))
    fig.text(0.595, below, "points (number = label in the plot)\n" + key, va="top", ha="left", fontsize=8.5,
             family="monospace")
    return _png(fig)


def _human_bytes(n: float, digits: int = 4) -> str:
    """1234567 -> '1.235 MB' (decimal units, `digits` significant digits, no misleading rounding)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.{digits}g} {unit}"
        n /= 1000
    return f"{n:.{digits}g} GB"


def sizes_png(bars: list[SizeBar], run_name: str) -> bytes:
    """Model size per stage as horizontal bars, value and ratio to the teacher written at each bar."""
    fig = _figure(11.5, 1.4 + 0.5 * len(bars))
    ax = fig.add_axes([0.25, 0.9 / (1.4 + 0.5 * len(bars)), 0.62, 1 - 1.45 / (1.4 + 0.5 * len(bars))])
    ys = list(range(len(bars)))[::-1]
    teacher = next((b.size_bytes for b in bars if b.kind == "teacher"), None)
    for y, b in zip(ys, bars):
        computed = b.how.startswith("computed")
        ax.barh(y, b.size_bytes, color=SIZE_COLOURS.get(b.kind, "#999999"), height=0.6,
                hatch="//" if computed else None, edgecolor="white" if not computed else "#333333", alpha=0.9)
        ratio = f"  ({teacher / b.size_bytes:.1f}× smaller than teacher)" if teacher and b.kind != "teacher" else ""
        ax.text(b.size_bytes, y, f"  {_human_bytes(b.size_bytes)}{ratio}{' — computed' if computed else ''}",
                va="center", fontsize=9)
    ax.set_yticks(ys, [b.label for b in bars], fontsize=9.5)
    ax.set_xlim(0, max(b.size_bytes for b in bars) * 1.55)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: _human_bytes(v, 3) if v > 0 else "0"))
    ax.set_xlabel("size on disk")
    ax.set_title(f"Model size per stage — run {run_name}", fontsize=12, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def latency_png(cases: list[BenchCase], singles: list[tuple[str, dict]], run_name: str) -> bytes:
    """Per measured case: box min–p90, line p50, whisker to p99, × max, dots = p50 of each repeat.
    Figures without per-iteration results (estimates, device imports) are single markers, labelled."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    rows = len(cases) + len(singles)
    h = 1.9 + 0.48 * rows
    fig = _figure(11.5, h)
    ax = fig.add_axes([0.25, 1.25 / h, 0.72, 1 - 1.95 / h])
    _log_x(ax)
    allx = [v for c in cases for v in (c.stats.get("min"), c.stats["p50"], c.stats.get("p99"), c.stats.get("max")) if v]
    allx += [v for _, lat in singles for v in (lat["p50"], lat.get("p90")) if v]
    lo_x, hi_x = min(allx) / 1.5, max(allx) * 3.0
    ax.set_xlim(lo_x, hi_x)
    labels = []
    y = rows - 1
    for c in cases:
        col, _, _ = style(c.source)
        st = c.stats
        lo = st["min"] if st.get("min") is not None else st["p50"]
        top = st["p90"] if st.get("p90") is not None else st["p50"]
        ax.add_patch(Rectangle((lo, y - 0.28), top - lo, 0.56, facecolor=col, alpha=0.35, edgecolor=col, lw=1.2))
        ax.plot([st["p50"]] * 2, [y - 0.28, y + 0.28], color=col, lw=2.6)
        if st.get("p99") is not None and st["p99"] > top:
            ax.plot([top, st["p99"]], [y, y], color=col, lw=1.2)
            ax.plot([st["p99"]] * 2, [y - 0.14, y + 0.14], color=col, lw=1.2)
        if st.get("max") is not None:
            ax.plot([st["max"]], [y], marker="x", color=col, ms=7, mew=1.5)
        if c.repeat_p50:
            ax.plot(c.repeat_p50, [y] * len(c.repeat_p50), linestyle="none", marker="o", ms=4,
                    color="black", zorder=4)
        labels.append((y, f"{c.label}\n{c.source}, {len(c.repeat_p50)} repeat(s), {c.iterations} iters"))
        y -= 1
    for name, lat in singles:
        src = lat.get("source", "?")
        col, m, filled = style(src)
        ax.plot([lat["p50"]], [y], linestyle="none", marker=m, ms=11 if m == "*" else 9, color=col,
                markerfacecolor=col if filled else "white", mew=1.8, zorder=4)
        if lat.get("p90") is not None:
            ax.plot([lat["p50"], lat["p90"]], [y, y], color=col, lw=1.2, ls=":")
        right = max(lat["p50"], lat.get("p90") or 0)
        # text on the side with room: right of the figure in the left 55 % of the axis, else left of the marker
        room_right = math.log(right / lo_x) / math.log(hi_x / lo_x) < 0.55
        ax.annotate(f"{src} p50 {lat['p50']:.4g} ms" + (f", p90 {lat['p90']:.4g} ms" if lat.get("p90") else "")
                    + " (single figure, no distribution)", (right if room_right else lat["p50"], y),
                    xytext=(9 if room_right else -11, 0), textcoords="offset points", va="center",
                    ha="left" if room_right else "right", fontsize=8.5, color=col, fontweight="bold")
        labels.append((y, f"{name}\n{src}"))
        y -= 1
    ax.set_ylim(-0.7, rows - 0.3)
    ax.set_yticks([t[0] for t in labels], [t[1] for t in labels], fontsize=8.5)
    ax.set_xlabel("latency per inference (ms, batch 1) — log scale")
    ax.set_title(f"Latency distribution per case — run {run_name}", fontsize=12, loc="left")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    handles = [Patch(facecolor="#999999", alpha=0.45, edgecolor="#666666", label="box: min to p90 of iterations"),
               Line2D([], [], color="#666666", lw=2.6, label="bar: p50 (median of repeats)"),
               Line2D([], [], color="#666666", lw=1.2, label="whisker: p99"),
               Line2D([], [], color="#666666", marker="x", linestyle="none", label="max"),
               Line2D([], [], color="black", marker="o", ms=4, linestyle="none", label="p50 of each repeat")]
    handles += _source_handles(dict.fromkeys([c.source for c in cases] + [lat.get("source") for _, lat in singles]))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return _png(fig)



def frontier_png(rows: list[dict], target: str, front: list[int]) -> bytes:
    """Mixed precision: validation accuracy vs measured latency of each float-layer configuration tried
    for one target; the Pareto front ringed and joined, the shipped configuration starred."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_axes([0.11, 0.13, 0.62, 0.77])
    xs, ys = [r["latency_ms"] for r in rows], [r["val_accuracy"] for r in rows]
    src = rows[0].get("source", "measured") if rows else "measured"
    c, m, filled = style(src)
    ax.scatter(xs, ys, marker=m, s=50, c=c if filled else "white", edgecolors=c, linewidths=1.4, zorder=3)
    if front:
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        ax.scatter(fx, fy, s=200, facecolors="none", edgecolors="black", linewidths=1.1, zorder=2)
        if len(front) > 1:
            ax.step(fx, fy, where="post", color="black", lw=1, ls="--", zorder=1)
    for i, r in enumerate(rows):
        if r.get("chosen"):
            ax.scatter([xs[i]], [ys[i]], marker="*", s=260, c="#d62728", zorder=4)
        ax.annotate(str(i + 1), (xs[i], ys[i]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"latency p50 (ms, batch 1) — {src}")
    ax.set_ylabel("accuracy (validation split)")
    ax.set_title(f"Float-layer configurations tried — {target}", fontsize=11, loc="left")
    ax.grid(True, alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none", marker=m, markersize=8, color=c,
                      markerfacecolor=c if filled else "white", label=f"{src} latency"),
               Line2D([], [], linestyle="--", color="black", marker="o", markersize=12, markerfacecolor="none",
                      label="Pareto front"),
               Line2D([], [], linestyle="none", marker="*", markersize=14, color="#d62728", label="shipped")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.74, 0.9), fontsize=7.5, frameon=False)
    return _png(fig)
