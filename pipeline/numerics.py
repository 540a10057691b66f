"""Which kernels compute a target's INT8 accuracy on this host, and running them.

The INT8 numbers of a CPU runtime depend on the instruction set (targets/isa.py). For each target the
pipeline evaluates with the numerics the device computes:
- `exact`: ONNX Runtime with graph optimizations off runs a QDQ model as DequantizeLinear then float ops, the
  exact fake-quant numerics, identical on every host. TensorRT on a GPU computes these (its reference here),
  and so does any CPU whose int8 kernels cannot saturate (VNNI/AMX, or 7-bit weights): used for ONNX models
  when this host's kernels would saturate where the target's do not.
- `native`: the target's runtime with its fused kernels on this host; the figure names this host's class.
- `emulated`: the same runtime under `qemu-x86_64 -cpu <model>` (Debian's qemu-user), which makes CPUID - and
  so MLAS's and oneDNN's kernel dispatch - that of the target's class (TCG emulates up to AVX2). Opt-in
  (`quantize.emulate`): several times slower than native. Latency is never measured under emulation.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import MissingDependency
from targets.isa import ISA_CLASSES, host_isa

QEMU = "qemu-x86_64"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Numerics:
    mode: str  # native | exact | emulated
    label: str  # what produced the figures, for run.json and the report
    target_isa: str | None
    host_isa: str | None
    qemu_cpu: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def numerics_for(profile: Any, backend: Any, model_file: Path | None = None, emulate: bool = False) -> Numerics:
    """The numerics a target's INT8 accuracy is computed with here (see the module docstring)."""
    target, host = getattr(profile, "isa", None), host_isa()
    onnx = model_file is None or Path(model_file).suffix == ".onnx"
    if getattr(backend, "exact_reference", False):
        return Numerics("exact", "exact fake-quant reference numerics (onnxruntime, graph optimizations off; "
                                 "what TensorRT computes, on any host)", target, host)
    if not target or target == host:
        return Numerics("native", f"native {host or 'unknown ISA'}" + (" (the target's class)" if target else ""),
                        target, host)
    t, h = ISA_CLASSES[target], ISA_CLASSES.get(host or "")
    if emulate and t.qemu_cpu and h is not None and h.arch == t.arch:
        return Numerics("emulated", f"emulated {target} (qemu-x86_64 -cpu {t.qemu_cpu}), exact numerics of its kernels",
                        target, host, t.qemu_cpu)
    if onnx and not t.saturates and h is not None and h.saturates:
        return Numerics("exact", f"exact fake-quant numerics: what {target}'s non-saturating int8 kernels compute "
                                 f"(this host, {host}, would saturate)", target, host)
    why = ""
    if emulate:
        why = f"; {target} cannot be emulated here (qemu's TCG emulates x86 up to AVX2)" if h and h.arch == t.arch \
            else f"; a {t.arch} CPU is not emulated on this {h.arch if h else 'unknown'} host"
    return Numerics("native", f"host-measured on {host or 'unknown ISA'} (target {target}){why}", target, host)


def logits(model_file: Path, x: np.ndarray, threads: int | None, numerics: Numerics, batch: int = 64) -> np.ndarray:
    """Logits of `model_file` on `x` (NCHW float32, read one batch at a time) with `numerics`."""
    if numerics.mode == "emulated":
        return _emulated_logits(Path(model_file), x, threads, numerics, batch)
    from targets.standalone.runtime import load_model

    m = load_model(model_file, threads=threads, exact=numerics.mode == "exact")
    return run_batches(m, x, batch)


def run_batches(m: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    nhwc = m.layout == "nhwc" and x.ndim == 4  # the splits are NCHW; a LiteRT NHWC-input model wants them transposed
    step = batch if m.dynamic_batch else 1
    outs: list[np.ndarray] = []
    for i in range(0, len(x), batch):  # the split (memory-mapped) is read one batch at a time
        xb = np.asarray(x[i:i + batch])
        if nhwc:
            xb = np.ascontiguousarray(xb.transpose(0, 2, 3, 1))
        outs.extend(m.run(xb[j:j + step]) for j in range(0, len(xb), step))
    return np.concatenate(outs)


def qemu_path() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise MissingDependency(f"quantize.emulate needs {QEMU} to run the target's kernels",
                                hint="apt-get install qemu-user (Debian/Ubuntu), or --set quantize.emulate=false")
    return path


def _emulated_logits(model_file: Path, x: np.ndarray, threads: int | None, numerics: Numerics,
                     batch: int) -> np.ndarray:
    """Run `pipeline/isa_child.py` under qemu-user with the target's CPU model; it reports the class it saw."""
    qemu = qemu_path()
    with tempfile.TemporaryDirectory(prefix="emulate-") as d:
        xin, out = Path(d) / "x.npy", Path(d) / "logits.npy"
        arr = np.lib.format.open_memmap(xin, mode="w+", dtype=np.float32, shape=tuple(x.shape))
        for i in range(0, len(x), 256):
            arr[i:i + 256] = np.asarray(x[i:i + 256], dtype=np.float32)
        arr.flush()
        del arr
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [qemu, "-cpu", str(numerics.qemu_cpu), sys.executable, "-m", "pipeline.isa_child", str(model_file),
               str(xin), str(out), str(threads or 0), str(batch)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"emulated evaluation ({QEMU} -cpu {numerics.qemu_cpu}) failed: {tail}")
        seen = json.loads(p.stdout.strip().splitlines()[-1])["isa"]
        if seen != numerics.target_isa:  # the emulation must really show the target's class
            raise RuntimeError(f"{QEMU} -cpu {numerics.qemu_cpu} showed {seen}, not {numerics.target_isa}")
        return np.load(out)
