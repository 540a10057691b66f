"""Child of pipeline/numerics.py's emulated evaluation, run under `qemu-x86_64 -cpu <model>`:
`python -m pipeline.isa_child MODEL X.npy OUT.npy THREADS BATCH`. Imports only NumPy, the model's runtime and
pipeline/numerics.py (no torch: everything it runs is emulated), writes the logits (temp file, then rename) and prints one JSON line
with the instruction-set class this process saw, so the caller can check the emulation took effect."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from pipeline.numerics import run_batches
from targets.standalone.runtime import cpu_isa, load_model


def main(argv: list[str]) -> int:
    model, xin, out, threads, batch = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    m = load_model(model, threads=threads or None)
    y = run_batches(m, np.load(xin, mmap_mode="r"), batch)
    tmp = out + ".tmp.npy"
    np.save(tmp, y)
    os.replace(tmp, out)
    print(json.dumps({"isa": cpu_isa(), "runtime": m.runtime, "runtime_version": m.runtime_version}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
