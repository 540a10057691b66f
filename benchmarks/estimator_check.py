"""Check the roofline latency estimator (targets/estimate.py) against published device latencies.

Builds ImageNet ResNet-18 and ResNet-50 (benchmarks/reference_models.py), exports them to ONNX (legacy
exporter, opset 17) into a temporary folder, checks their MAC and parameter counts against the published
ones (within 3%), estimates their latency on the jetson-agx-xavier profile at FP16 batch 1 and compares
with the published TensorRT latencies in docs/PUBLISHED_FIGURES.md.

Honesty rules: the GPU efficiency factor was fitted ONCE, on the ResNet-50 point (role "fit"); the
ResNet-18 point (role "check") was not used to choose any number. The column "implied eff." shows the
efficiency each point alone would need: close values mean the model of the device is consistent.
Published figures that cannot be modelled honestly are listed as not compared, with the reason.

    python benchmarks/estimator_check.py [--json OUT] [--profiles DIR ...]

Exit 0 when every estimate/published ratio is within [0.5, 2], else 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.reference_models import REFERENCE  # noqa: E402
from targets.estimate import Cost, estimate_latency, model_cost  # noqa: E402
from targets.profiles import Profile, load_profiles, resolve_profile  # noqa: E402

RATIO_RANGE = (0.5, 2.0)
MAC_TOLERANCE = 0.03
TORCH2TRT = "NVIDIA-AI-IOT/torch2trt benchmarks (docs/PUBLISHED_FIGURES.md)"

#: published points that are compared; "fit" chose the efficiency, "check" did not
REFERENCE_POINTS: list[dict[str, Any]] = [
    {"model": "resnet18", "device": "jetson-agx-xavier", "precision": "fp16", "batch": 1, "published_ms": 1.64,
     "source": TORCH2TRT, "role": "check"},
    {"model": "resnet50", "device": "jetson-agx-xavier", "precision": "fp16", "batch": 1, "published_ms": 3.4,
     "source": TORCH2TRT, "role": "fit"},
]

#: published points that are NOT compared, and why
NOT_COMPARED = [
    {"model": "pruned ResNet-50", "device": "jetson-orin-nano / jetson-agx-orin", "published_ms": "3.24 / 0.95",
     "source": "Nota-NetsPresso netspresso-trainer device matrix (docs/PUBLISHED_FIGURES.md)",
     "reason": "pruning ratio (remaining channels per layer), precision and TensorRT version are not stated: "
               "the measured model cannot be rebuilt, so its MACs are unknown"},
    {"model": "MobileNetV3-small", "device": "jetson-orin-nano / jetson-agx-orin", "published_ms": "1.34 / 0.59",
     "source": "Nota-NetsPresso netspresso-trainer device matrix (docs/PUBLISHED_FIGURES.md)",
     "reason": "precision and whether pre/post-processing or transfers are timed are not stated; at about "
               "56 MMAC the figure measures per-layer overhead, not the roofline, so it could only be matched "
               "by fitting the overhead to it"},
]


def export_reference(name: str, out_dir: str | Path) -> tuple[Path, Cost]:
    """Export a reference model to ONNX (dynamo=False, opset 17) and check its counts within 3%."""
    import torch

    ctor, gmacs_pub, mparams_pub = REFERENCE[name]
    torch.manual_seed(0)
    model = ctor().eval()
    path = Path(out_dir) / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    cost = model_cost(path, batch=1)
    for what, got, want in (("GMACs", cost.macs / 1e9, gmacs_pub), ("M params", cost.params / 1e6, mparams_pub)):
        if abs(got / want - 1) > MAC_TOLERANCE:
            raise RuntimeError(f"{name}: {what} {got:.3f} differs from the published {want} by more than "
                               f"{MAC_TOLERANCE:.0%}: the reference model or the counter is wrong")
    return path, cost


def implied_efficiency(cost: Cost, profile: Profile, precision: str, batch: int, target_ms: float) -> float | None:
    """Efficiency at which the estimate equals ``target_ms`` (other profile fields unchanged), or None."""
    lo, hi = 1e-4, 1.0
    def at(eff: float) -> float:
        p = profile.model_copy(deep=True)
        p.efficiency.value = eff
        return estimate_latency(cost, p, precision, batch).latency_ms
    if at(hi) > target_ms or at(lo) < target_ms:
        return None  # not reachable by changing the efficiency alone
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid) > target_ms else (lo, mid)
    return (lo + hi) / 2


def run_check(extra_profiles: Sequence[str | Path] = (), workdir: str | Path | None = None) -> list[dict]:
    """Estimate every reference point; one dict per row."""
    profiles = load_profiles(extra_profiles)
    rows = []
    with tempfile.TemporaryDirectory(prefix="estimator_check_") as tmp:
        out = Path(workdir) if workdir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        costs: dict[str, Cost] = {}
        for point in REFERENCE_POINTS:
            if point["model"] not in costs:
                costs[point["model"]] = export_reference(point["model"], out)[1]
            cost = costs[point["model"]]
            prof = resolve_profile(point["device"], profiles)
            est = estimate_latency(cost, prof, point["precision"], point["batch"])
            ratio = est.latency_ms / point["published_ms"]
            rows.append({
                **point,
                "gmacs": round(cost.macs / 1e9, 3),
                "mparams": round(cost.params / 1e6, 2),
                "estimated_ms": round(est.latency_ms, 3),
                "ratio": round(ratio, 3),
                "within_range": RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1],
                "bound": est.bound,
                "compute_ms": round(est.compute_ms, 3),
                "memory_ms": round(est.memory_ms, 3),
                "overhead_ms": round(est.overhead_ms, 3),
                "efficiency": prof.efficiency.value,
                "implied_efficiency": _round(implied_efficiency(cost, prof, point["precision"], point["batch"],
                                                                point["published_ms"])),
                "efficiency_source": prof.efficiency.source,
                "formula": est.formula,
                "estimate_source": est.source,
            })
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def format_table(rows: list[dict]) -> str:
    head = ["model", "device", "prec", "published ms (source)", "estimated ms", "ratio est/pub", "role",
            "implied eff."]
    body = [[r["model"], r["device"], r["precision"], f"{r['published_ms']:g} ({r['source']})",
             f"{r['estimated_ms']:.2f}", f"{r['ratio']:.2f}", r["role"],
             "-" if r["implied_efficiency"] is None else f"{r['implied_efficiency']:.3f}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if rows:
        out.append("")
        out.append(f"profile efficiency {rows[0]['efficiency']:g}: {rows[0]['efficiency_source']}")
        for r in rows:
            out.append(f"{r['model']}: {r['estimated_ms']:.2f} ms = compute/memory maxima {r['estimated_ms'] - r['overhead_ms']:.2f}"
                       f" + overhead {r['overhead_ms']:.2f} ({r['bound']}-bound); {r['formula']}")
    out.append("")
    out.append("not compared:")
    for nc in NOT_COMPARED:
        out.append(f"  {nc['model']} on {nc['device']} ({nc['published_ms']} ms, {nc['source']}): {nc['reason']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the rows as JSON here")
    ap.add_argument("--profiles", nargs="*", default=[], help="extra profile files or directories")
    args = ap.parse_args(argv)
    rows = run_check(args.profiles)
    print(format_table(rows))
    ok = all(r["within_range"] for r in rows)
    print(f"\nPASS: every ratio within [{RATIO_RANGE[0]}, {RATIO_RANGE[1]}]"
          if ok else f"\nFAIL: some ratio outside [{RATIO_RANGE[0]}, {RATIO_RANGE[1]}]")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "not_compared": NOT_COMPARED,
                                               "ratio_range": list(RATIO_RANGE), "pass": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
