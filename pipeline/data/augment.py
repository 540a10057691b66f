"""Training augmentation, per batch and vectorised in torch (no per-image Python loop), on any device.

Chosen by resolution: up to 64 px pad-crop (zero padding of the normalised image, 4 px) + optional
flip; above 64 px RandomResizedCrop (scale 0.25-1, aspect 3/4-4/3, bilinear) + optional flip, drawn from
the train split stored whole at input_size (pipeline/data/store.py). Evaluation uses no augmentation:
the store holds val/test already resized (and centre-cropped above 64 px), as the bundle's run.py does.

Augmentation is split into `draw` (random parameters, one row per image, from a seeded CPU generator)
and `apply` (deterministic): the teacher-view cache stores the parameters and regenerates a view.
Hand-written rather than torchvision.transforms.v2 because v2 draws one parameter set per call (per
batch), and a per-image loop is what this replaces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAD = 4
RRC_SCALE = (0.25, 1.0)  # of the image area; ImageNet recipes use 0.08, small edge models train better on less
RRC_RATIO = (3 / 4, 4 / 3)
PARAMS = 5  # per image: pad-crop (dx, dy, flip, 0, 0) / resized crop (x0, y0, w, h, flip)


@dataclass(frozen=True)
class Augmenter:
    kind: str  # "padcrop" | "rrc"
    size: int
    hflip: bool

    def describe(self) -> dict:
        if self.kind == "padcrop":
            return {"train": f"pad {PAD} + random crop {self.size}" + (" + hflip" if self.hflip else "")}
        return {"train": f"RandomResizedCrop {self.size} scale {RRC_SCALE} ratio (3/4, 4/3)"
                + (" + hflip" if self.hflip else "")}

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 5) float32 parameters on the CPU."""
        flip = (torch.rand(n, generator=gen) < 0.5).float() if self.hflip else torch.zeros(n)
        if self.kind == "padcrop":
            d = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen).float()
            return torch.stack([d[:, 0], d[:, 1], flip, torch.zeros(n), torch.zeros(n)], 1)
        return torch.cat([rrc_boxes(n, self.size, gen), flip[:, None]], 1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x: normalised float NCHW (stored size); params from `draw` -> augmented batch at `size`."""
        p = params.to(x.device)
        if self.kind == "padcrop":
            return pad_crop_flip(x, p[:, 0].long(), p[:, 1].long(), p[:, 2] > 0.5)
        return resized_crop_flip(x, p[:, :4], p[:, 4] > 0.5, self.size)


def augmenter_for(cfg) -> Augmenter | None:
    """The data config's augmentation (None when data.augment is off)."""
    if not cfg.augment:
        return None
    return Augmenter("padcrop" if cfg.input_size <= 64 else "rrc", cfg.input_size, bool(cfg.hflip))


def pad_crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad by PAD, crop h x w at (dy, dx) per image, mirror where `flip`: one gather for the batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy.to(x.device)[:, None] + ar_h[None]  # (n, h)
    cols = torch.where(flip.to(x.device)[:, None], (w - 1) - ar_w[None], ar_w[None]) + dx.to(x.device)[:, None]
    nn_ = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[nn_, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)  # channels_last memory: what the training step wants


def rrc_boxes(n: int, size: int, gen: torch.Generator, tries: int = 10) -> torch.Tensor:
    """(n, 4) crop boxes (x0, y0, w, h) in pixels of a size x size image, as torchvision's
    RandomResizedCrop draws them (first of `tries` draws that fits; else the whole image)."""
    area = size * size
    scale = torch.empty(n, tries).uniform_(*RRC_SCALE, generator=gen) * area
    logr = torch.empty(n, tries).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=gen)
    ratio = torch.exp(logr)
    w = torch.sqrt(scale * ratio).round()
    h = torch.sqrt(scale / ratio).round()
    ok = (w >= 1) & (h >= 1) & (w <= size) & (h <= size)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=gen)
    rows = torch.arange(n)
    wf = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.full((n,), float(size)))
    hf = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.full((n,), float(size)))
    x0 = torch.floor(u[:, 0] * (size - wf + 1))
    y0 = torch.floor(u[:, 1] * (size - hf + 1))
    return torch.stack([x0, y0, wf, hf], 1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box and resize it to size x size (bilinear), mirrored where `flip`: one grid_sample."""
    n, _, h, w = x.shape
    x0, y0, bw, bh = boxes.to(x.dtype).unbind(1)
    sx, sy = bw / w, bh / h
    tx = (2 * x0 + bw) / w - 1
    ty = (2 * y0 + bh) / h - 1
    sign = torch.where(flip.to(x.device), -1.0, 1.0).to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx * sign, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
