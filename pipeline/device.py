"""Where training runs: the recipe's `device`, `threads` and `precision`, resolved once per stage.

auto picks CUDA when torch sees a GPU, else the CPU. On CUDA: autocast in bf16 where the GPU supports
it, else fp16 with a GradScaler; pinned host memory and non-blocking copies. On the CPU: an explicit
thread count (default: this host's cores), and bf16 autocast where the CPU has native bf16 (avx512_bf16
or AMX in /proc/cpuinfo). Measured on a 2-core avx512_bf16 host (KD step, ResNet-56 -> ResNet-20, batch
128, 32x32): fp32 NCHW 241 img/s, bf16 NCHW 467, fp32 channels_last 321, bf16 channels_last 542 img/s;
without the teacher's forward 386 / 789 / 570 / 919 img/s - hence bf16 by default where supported
(benchmarks/train_throughput.py compares the student accuracy). channels_last is the default on CUDA only:
on the CPU, torch 2.13 corrupts the heap ("double free or corruption", then SIGSEGV) in the backward of a
1x1 stride-2 convolution with few channels (3->8, 8->16: resnet8 width 8's shortcut) in channels_last,
at 64 px and above; it is opt-in there (`channels_last: true`). Evaluation stays fp32.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch

from pipeline.errors import MissingDependency


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (avx512_bf16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()


@dataclass(frozen=True)
class Compute:
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None: fp32
    channels_last: bool
    threads: int | None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def needs_scaler(self) -> bool:
        return self.cuda and self.amp == torch.float16

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.cuda)
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        # The store's NHWC rows arrive as an NCHW view with channels_last strides: make them contiguous NCHW, or
        # the convolutions pick channels_last kernels anyway (torch 2.13 CPU corrupts the heap in the backward
        # of some of them with 2 threads: measured with resnet8 width 8 in the teacher finetune).
        return x.contiguous()

    @contextlib.contextmanager
    def odd_batch_guard(self, n: int) -> Iterator[None]:
        """A training step on an odd-sized batch runs without oneDNN on a multi-threaded CPU: torch 2.13's
        oneDNN conv path corrupts the heap there (measured: resnet8 width 8, 1x16x16 inputs, 2 threads,
        batches of 33/37/127 abort with 'double free or corruption'; even sizes and 1 thread do not). Usually
        only the last, partial batch of an epoch is odd, so the slower native kernels cost little."""
        if self.device.type != "cpu" or n % 2 == 0 or torch.get_num_threads() < 2:
            yield
            return
        with torch.backends.mkldnn.flags(enabled=False, deterministic=torch.backends.mkldnn.deterministic):
            yield

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model  # type: ignore[call-overload]

    def apply_threads(self) -> None:
        if self.threads and not self.cuda and self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)

    def describe(self) -> dict:
        return {"device": self.device.type, "precision": {None: "fp32", torch.bfloat16: "bf16",
                                                          torch.float16: "fp16"}[self.amp],
                "channels_last": self.channels_last, "threads": self.threads}


def resolve(device: str = "auto", precision: str = "auto", threads: int | None = None,
            channels_last: bool | None = None) -> Compute:
    """The recipe's choice -> a Compute; device=cuda without a GPU stops with exit 3."""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise MissingDependency("device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False: "
                                f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})",
                                hint="use --set device=auto (or cpu), or install a CUDA build of torch on a GPU host")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
    amp: torch.dtype | None
    if precision == "auto":
        if dev.type == "cuda":
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            amp = torch.bfloat16 if cpu_has_bf16() else None
    else:
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if amp is torch.float16 and dev.type == "cpu":
            amp = torch.bfloat16  # fp16 autocast on the CPU is slow and needs a scaler: bf16 is the CPU's half type
    # Default: torch's own count (the cores, or OMP_NUM_THREADS when set). Never above OMP_NUM_THREADS:
    # raising torch's thread count past it corrupts the heap in torch 2.13 ("free(): invalid next size").
    n = threads if threads else (None if dev.type == "cuda" else torch.get_num_threads())
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if n and omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    if channels_last is None:
        channels_last = dev.type == "cuda"  # see the module docstring for the CPU crash
    return Compute(dev, amp, channels_last, n)


def from_recipe(recipe) -> Compute:
    return resolve(recipe.device, recipe.precision, recipe.threads, recipe.channels_last)


def recipe_key(recipe) -> dict:
    """What belongs in a training stage's cache key: the resolved choice changes the numerics (the
    thread count does not: it is left out so a cache moves between hosts)."""
    d = from_recipe(recipe).describe()
    d.pop("threads")
    return d
