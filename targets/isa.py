"""Instruction-set classes of CPU targets: which integer kernels a CPU runtime dispatches, and so which INT8
numbers it computes.

ONNX Runtime's MLAS and OpenVINO's oneDNN pick their INT8 kernels from CPUID at run time. Without a VNNI
dot product (x86-64-v2 SSE4.2, x86-64-v3 AVX2, AVX-512 of Skylake-SP) they multiply u8 x s8 pairs with
(v)pmaddubsw and sum each pair in int16, which saturates; with VNNI / AMX (and on ARM) products accumulate
in int32 and the integer result is exact. Measured (docs/ARCHITECTURE.md, "Instruction sets"): a U8S8 QDQ
model with 8-bit weights agrees with its exact fake-quant numerics on 0.96 of inputs under AVX2 and on 1.0
with VNNI; with 7-bit weights (ONNX Runtime's `reduce_range`) it is bit-identical on both.

The host's class is read from NumPy's CPU feature table (`numpy._core._multiarray_umath.__cpu_features__`):
NumPy is already installed, works on every OS, and asks CPUID itself - the same instruction the runtimes'
dispatchers ask - so it is right under emulation too (`qemu-x86_64 -cpu Haswell`, where /proc/cpuinfo
still shows the real CPU). Two flags NumPy's table lacks (AVX-VNNI, AMX-INT8) come from /proc/cpuinfo,
trusted only when its AVX2 / AVX-512 flags agree with NumPy's CPUID (they differ under emulation).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# Detection lives in the standalone runtime (shipped in every bundle, so bench.py on a device records it too).
from targets.standalone.runtime import classify_isa, cpu_features, cpu_isa

__all__ = ["IsaClass", "ISA_CLASSES", "get_isa", "host_isa", "isa_names", "cpu_features", "classify_isa"]


@dataclass(frozen=True)
class IsaClass:
    name: str
    arch: str  # x86_64 | aarch64
    summary: str
    # True: the int8 dot product of ONNX Runtime's / oneDNN's kernels sums u8 x s8 pairs in int16 and can
    # saturate, so weights must use 7 bits (ORT reduce_range, NNCF overflow_fix) for exact integer results.
    saturates: bool
    # qemu-user CPU model that makes a process see this class (TCG emulates up to AVX2, not AVX-512/AMX).
    qemu_cpu: str | None = None
    rank: int = 0  # order within an arch: a higher class runs every lower class's code


ISA_CLASSES: dict[str, IsaClass] = {c.name: c for c in (
    # x86-64-v2 shown by SandyBridge (SSE4.2 + AVX1, no AVX2: the same SSE int8 kernels); qemu's Nehalem and
    # Westmere models lack an instruction NumPy 2's wheels need (Illegal instruction).
    IsaClass("x86-64-v2", "x86_64", "SSE4.2 (+AVX1), no AVX2 (Atom/Celeron/Pentium N-series, pre-2013 Core/Xeon)",
             True, "SandyBridge", 1),
    IsaClass("x86-64-v3", "x86_64", "AVX2 + FMA, no VNNI (most laptops and cloud VMs before 2021, AMD Zen 1-3)",
             True, "Haswell", 2),
    IsaClass("avx512", "x86_64", "AVX-512 without VNNI (Skylake-SP Xeons)", True, None, 3),
    IsaClass("avx-vnni", "x86_64", "AVX2 + AVX-VNNI, no AVX-512 (Alder Lake and later client CPUs)", False, None, 4),
    IsaClass("avx512-vnni", "x86_64", "AVX-512 VNNI (Cascade Lake, Ice Lake, AMD Zen 4+)", False, None, 5),
    IsaClass("amx", "x86_64", "AMX-INT8 (Sapphire Rapids and later Xeons)", False, None, 6),
    IsaClass("armv8", "aarch64", "ARMv8-A NEON, no dot product (Cortex-A53/A72: Raspberry Pi 3/4)", False, None, 1),
    IsaClass("armv8.2-dotprod", "aarch64", "ARMv8.2 NEON + SDOT (Cortex-A55/A76/A78: Raspberry Pi 5, Jetson Orin CPU)",
             False, None, 2),
    IsaClass("armv8.6-i8mm", "aarch64", "ARMv8.6 NEON + SDOT + I8MM (Cortex-X2/A710+, Neoverse V1/N2, Apple M2+)",
             False, None, 3),
)}


def isa_names() -> list[str]:
    return list(ISA_CLASSES)


def get_isa(name: str) -> IsaClass:
    try:
        return ISA_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown instruction-set class '{name}'; known: {', '.join(ISA_CLASSES)}") from None


@lru_cache(maxsize=1)
def host_isa() -> str | None:
    """This process's instruction-set class, e.g. 'x86-64-v3' (what its runtimes' kernels dispatch on)."""
    return cpu_isa()
