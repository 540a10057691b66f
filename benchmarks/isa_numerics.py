"""INT8 numerics by instruction-set class: the table in docs/ARCHITECTURE.md ("Instruction sets").

    python benchmarks/isa_numerics.py                 # this host, and x86-64-v3 / x86-64-v2 under qemu-user
    python benchmarks/isa_numerics.py --cpus Haswell  # only the AVX2 emulation

A small conv-bn-relu x2 + linear CNN (tests/test_tensorrt_build.py's) is quantized three ways: TensorRT's S8S8
QDQ, ONNX Runtime's U8S8 with 8-bit weights (the VNNI scheme) and U8S8 with 7-bit weights (reduce_range, the
scheme for classes without VNNI). Each is run on 200 inputs with ONNX Runtime's fused integer kernels and with
graph optimizations off (exact fake-quant numerics), natively and under `qemu-x86_64 -cpu <model>` (which makes
MLAS dispatch that CPU's kernels). Printed: top-1 agreement with FP32 and max |fused - exact|. Numerics only:
no timing is taken under emulation.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("trt-s8s8", "u8s8-8bit", "u8s8-reduce-range")


def build(d: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_tensorrt_build import export_tiny_cnn, random_images

    from targets.base import CalibrationSpec
    from targets.onnxruntime import OrtScheme, quantize_u8s8
    from targets.tensorrt_qdq import make_trt_qdq

    fp32 = export_tiny_cnn(d / "fp32.onnx")
    cal = random_images(64, seed=1)
    make_trt_qdq(fp32, d / "trt-s8s8.onnx", cal)
    for name, rr in (("u8s8-8bit", False), ("u8s8-reduce-range", True)):
        quantize_u8s8(fp32, d / f"{name}.onnx", cal, CalibrationSpec("minmax"), scheme=OrtScheme(None, "u8", rr, ""))
    np.save(d / "x.npy", random_images(200, seed=7))


def measure(d: Path) -> dict:
    """Run in the (possibly emulated) child: agreement and max diff for each scheme, fused and exact."""
    from pipeline.numerics import Numerics, logits
    from targets.isa import host_isa

    x = np.load(d / "x.npy")
    native, exact = Numerics("native", "", None, None), Numerics("exact", "", None, None)
    ref = logits(d / "fp32.onnx", x, 1, native).argmax(1)
    out: dict = {"isa": host_isa(), "rows": {}}
    for s in SCHEMES:
        f, e = logits(d / f"{s}.onnx", x, 1, native), logits(d / f"{s}.onnx", x, 1, exact)
        out["rows"][s] = {"fused": float((f.argmax(1) == ref).mean()), "exact": float((e.argmax(1) == ref).mean()),
                          "max_diff": float(np.abs(f - e).max())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", nargs="*", default=["Haswell", "SandyBridge"], help="qemu CPU models to emulate")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child))))
        return 0
    qemu = shutil.which("qemu-x86_64")
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        build(d)
        runs = [("native", [])] + [(f"qemu -cpu {c}", [qemu, "-cpu", c]) for c in args.cpus if qemu]
        print(f"{'host':22} {'isa':12} {'scheme':18} {'fused':>6} {'exact':>6} {'max|fused-exact|':>17}")
        for name, prefix in runs:
            p = subprocess.run([*prefix, sys.executable, __file__, "--child", str(d)], capture_output=True, text=True,
                               cwd=ROOT)
            if p.returncode != 0:
                print(f"{name:22} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            res = json.loads(p.stdout.strip().splitlines()[-1])
            for s, r in res["rows"].items():
                print(f"{name:22} {res['isa']:12} {s:18} {r['fused']:6.3f} {r['exact']:6.3f} {r['max_diff']:17.4f}")
        if not qemu:
            print("qemu-x86_64 not found (apt-get install qemu-user): emulated rows left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
