"""Teacher logits cached over K pre-drawn augmented views per training image (`distill.teacher_views`).

With augmentation the teacher's forward pass costs as much as a large share of a KD step, every epoch.
Here K augmentation parameter sets per image are drawn once from a seeded generator, the teacher runs
once per view (batched, inference_mode, the run's autocast; on an fp32 CPU run the frozen copy of
pipeline/distill/fast_teacher.py), and its logits are stored in a float16
memory map. Each epoch every image uses one of its K views, picked at random: the student's input is
regenerated from the stored parameters (pipeline/data/augment.py `apply` is deterministic), so it is
exactly the view the teacher saw. K = 0 keeps the teacher online.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.data.augment import PARAMS, Augmenter


def default_views(epochs: int) -> int:
    """distill.teacher_views when unset: min(8, epochs // 4), so from 4 epochs on.

    Cost: each view is one teacher pass per training image, once; the online teacher is one pass per image
    per epoch, so K views save (epochs - K) passes and one view would pay from 2 epochs on. But fewer views
    than epochs also means less augmentation diversity: one view at 3 epochs measured 0.729 [0.701, 0.756]
    test accuracy against 0.758 [0.731, 0.784] with the teacher online (benchmarks/train_throughput.py, fp32,
    one seed, a loaded host; docs/ARCHITECTURE.md "teacher views"), so short runs keep the teacher online
    (made cheaper by the frozen teacher of pipeline/distill/fast_teacher.py) until more seeds settle it."""
    return min(8, epochs // 4)


class TeacherViews:
    def __init__(self, teacher: torch.nn.Module, split, augmenter: Augmenter, k: int, seed: int, compute,
                 batch: int = 256, folder: Path | None = None, progress=None):
        self.augmenter, self.k = augmenter, k
        n = len(split)
        gen = torch.Generator().manual_seed(seed + 7919)
        self.params = augmenter.draw(n * k, gen).view(n, k, PARAMS)  # small: 5 floats per view
        self._tmp = tempfile.TemporaryDirectory(prefix="pipeline-views-", dir=folder)
        path = Path(self._tmp.name) / "teacher_views.npy"
        self.logits: np.ndarray | None = None
        teacher.eval()
        with torch.inference_mode():
            for i in range(0, n, batch):
                idx = np.arange(i, min(i + batch, n))
                x = split.to_model(torch.from_numpy(split.rows(idx)).to(compute.device))
                for v in range(k):
                    xa = compute.input(augmenter.apply(x, self.params[idx, v]))
                    with compute.autocast():
                        out = teacher(xa).float().cpu().numpy()
                    if self.logits is None:
                        self.logits = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                                                shape=(n, k, out.shape[1]))
                    self.logits[idx, v] = out
                if progress:
                    progress(f"teacher views: {min(i + batch, n)}/{n} images x {k} views")
        if isinstance(self.logits, np.memmap):
            self.logits.flush()
        self.logits = np.load(path, mmap_mode="r")  # drop the dirty pages of the writable map
        self.current: torch.Tensor | None = None

    def select(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Pick one stored view per image of the batch; returns its augmentation parameters and keeps
        the teacher's logits for it in `current`."""
        assert self.logits is not None, "views are built before use"
        ii = idx.numpy()
        v = torch.randint(0, self.k, (len(ii),), generator=gen).numpy()
        self.current = torch.from_numpy(np.asarray(self.logits[ii, v], dtype=np.float32))
        return self.params[ii, v]

    def close(self) -> None:
        self.logits = None
        self._tmp.cleanup()
