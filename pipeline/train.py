"""Supervised training and evaluation loops shared by the teacher, distill and prune stages."""
from __future__ import annotations

import copy
import os
import sys
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet() -> bool:
    return os.environ.get("PIPELINE_QUIET") == "1"


def batches(n: int, batch: int, shuffle: bool, gen: Optional[torch.Generator]) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch):
        if shuffle and n - i == 1 and n > 1:
            # A 1-sample training batch breaks BatchNorm (BatchNorm1d heads raise on it): drop it. Shuffled,
            # so a different sample sits out each epoch.
            break
        yield order[i:i + batch]


def progress_line(what: str, every_s: float = 10.0) -> Callable[[str], None]:
    """A progress printer for long loops: one line to stderr at most every `every_s` (silent when quiet)."""
    import sys
    import time

    last = [0.0]

    def show(text: str) -> None:
        now = time.monotonic()
        if quiet() or now - last[0] < every_s:
            return
        last[0] = now
        print(f"  {text}", file=sys.stderr, flush=True)

    return show


def epoch_order(n: int, batch: int, gen: torch.Generator) -> list[np.ndarray]:
    """A shuffled epoch in index batches; a trailing 1-image batch is dropped (BatchNorm cannot train on it)."""
    order = torch.randperm(n, generator=gen).numpy()
    out = [order[i:i + batch] for i in range(0, n, batch)]
    if len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


class _Rows(torch.utils.data.Dataset):
    """Index batch -> (raw rows, labels, indices): the part a DataLoader worker does (memmap gather)."""

    def __init__(self, split, labels: np.ndarray):
        self.split, self.labels = split, np.asarray(labels)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: np.ndarray):
        return torch.from_numpy(self.split.rows(idx)), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)


def train_batches(split, labels, order: list[np.ndarray], workers: int = 0, pin: bool = False):
    """Batches of raw rows for one epoch (DataLoader over the store; workers read ahead)."""
    return torch.utils.data.DataLoader(_Rows(split, labels), batch_size=None, sampler=order, num_workers=workers,
                                       pin_memory=pin, persistent_workers=False)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4, hflip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and (optionally) horizontal flip: vectorised (pipeline/data/augment.py)."""
    from pipeline.data.augment import Augmenter

    a = Augmenter("padcrop", x.shape[-1], hflip)
    return a.apply(x, a.draw(len(x), gen)).contiguous()


@torch.no_grad()
def predict(model: nn.Module, x, batch: int = 256, compute=None) -> np.ndarray:
    """fp32 logits of a split (an array or a memory-mapped ImageSplit), batch by batch."""
    model.eval()
    outs = []
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i:i + batch])
        if compute is not None:
            xb = compute.input(xb)
        outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy()
def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())


EXPLODED = 1e6  # a loss above this is taken for divergence, whatever the first epoch's
GROWTH = 1000.0  # ... and so is one this many times the first epoch's mean


def _loss_again(model, loss_fn, xb, yb, idx, epoch, compute):
    with compute.autocast():
        if loss_fn is None:
            return F.cross_entropy(model(xb).float(), yb)
        return loss_fn(model, xb, yb, idx, epoch)[0]


def user_frame(e: BaseException, model: nn.Module) -> str | None:
    """`file:line` of the innermost traceback frame in a source file of the user's model classes (None when the
    error did not come from the model's own code: then it is ours, or torch's)."""
    import traceback

    files = set()
    for mod in model.modules():
        code = getattr(type(mod).forward, "__code__", None)  # the file that defines the module's forward
        f = code.co_filename if code is not None else None
        if f and "site-packages" not in f and not f.startswith(str(Path(__file__).resolve().parent)):
            files.add(os.path.realpath(f))
    hits = [fr for fr in traceback.extract_tb(e.__traceback__) if os.path.realpath(fr.filename) in files]
    return f"{hits[-1].filename}:{hits[-1].lineno}" if hits else None


def inplace_error(desc: str, model: nn.Module, loss_again) -> Exception:
    """The user's model modified in place a tensor autograd saved for backward: rerun the failing batch under
    anomaly detection (torch records the forward call of every autograd node) and name the user's source line
    and the module whose forward it is, instead of an internal error."""
    import warnings

    from pipeline.errors import ModelError

    site = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly(check_nan=False):
                loss_again().backward()
        except RuntimeError:
            pass
    for w in caught:
        text = str(w.message)
        if "Traceback of forward call" not in text:
            continue
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', text)
        mine = [f for f in frames if "site-packages" not in f[0] and f"{os.sep}torch{os.sep}" not in f[0]
                and not f[0].startswith(str(Path(__file__).resolve().parent))]
        if mine:
            site = mine[-1]
    where, module = "", None
    if site is not None:
        file, line, func, code = site[0], int(site[1]), site[2], site[3].strip()
        for name, mod in model.named_modules():
            fwd = getattr(type(mod).forward, "__code__", None)
            if fwd is not None and fwd.co_filename == file and \
                    fwd.co_firstlineno <= line <= max((ln for _, _, ln in fwd.co_lines() if ln), default=0):
                module = name or "the model itself"
        where = f" the tensor made at {file}:{line} (`{code}`, in {func}{f' of module {module}' if module else ''})"
    return ModelError(f"{desc}: the model's forward modifies in place{where or ' a tensor'} that autograd needs for "
                      "the backward pass", hint="use out-of-place ops there (y = y * 2, not y.mul_(2); "
                                                "nn.ReLU(inplace=False)) or .clone() the tensor before changing it")


class DivergenceGuard:
    """Stops training whose loss is non-finite or explodes (> EXPLODED, or > GROWTH x the first epoch's mean)
    with one line naming the loss term that carries it (GateError, exit 1): such a model would otherwise
    only fail later (an export parity gate, an INT8 accuracy budget) with a cause that points elsewhere.
    `terms`: {loss part name: what it measures} for the message, e.g. {"fitnet": "fitnet on Mixed_6e"}."""

    def __init__(self, desc: str, lr: float, terms: dict[str, str] | None = None):
        self.desc, self.lr, self.terms = desc, lr, terms or {}
        self.first: float | None = None

    def check(self, value: float, parts: dict, epoch: int, step: int) -> None:
        import math

        limit = EXPLODED if self.first is None else min(EXPLODED, max(GROWTH * self.first, 10.0))
        if math.isfinite(value) and value <= limit:
            return
        from pipeline.errors import GateError

        finite = {k: float(v) for k, v in parts.items() if isinstance(v, (int, float))}
        worst = max(finite, key=lambda k: abs(finite[k]) if math.isfinite(finite[k]) else math.inf) if finite else None
        what = "non-finite" if not math.isfinite(value) else f"{value:.3g}"
        base = f" (first epoch's mean {self.first:.3g})" if self.first is not None else ""
        term = ""
        fix = f"lower the learning rate of {self.desc} (now {self.lr:g})"
        if worst is not None and len(finite) > 1:
            term = f"; the term {self.terms.get(worst, worst)} carries {finite[worst]:.3g}"
            fix += f", or the weight of {worst} in distill.losses"
            if worst in ("fitnet", "at"):
                fix += (" (features of large magnitude: a weight like 1e-3 for fitnet, or the at term, which "
                        "normalises the features)")
        raise GateError(f"{self.desc} diverged at epoch {epoch + 1}, step {step}: loss {what}{base}{term}",
                        hint=fix)

    def end_epoch(self, epoch: int, mean: float) -> None:
        if self.first is None:
            self.first = mean


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = -1.0


def fit(model: nn.Module, x_train, y_train: np.ndarray, x_val, y_val: np.ndarray, *,
        epochs: int, lr: float, batch_size: int, momentum: float, weight_decay: float, seed: int,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]] | None = None,
        extra_params: list[nn.Parameter] | None = None, do_augment: bool = False, hflip: bool = False,
        desc: str = "train", on_step: Callable[[int, torch.Tensor], None] | None = None,
        augmenter=None, compute=None, views=None, workers: int = 0,
        head_modules: list[str] | None = None, backbone_lr_scale: float = 1.0,
        loss_terms: dict[str, str] | None = None, notes: list[str] | None = None) -> History:
    """SGD + cosine schedule; keeps the weights of the epoch with the best validation accuracy.

    `x_train`/`x_val`: memory-mapped ImageSplits (the stages) or float32 NCHW arrays. Batches are read
    from the store, moved to `compute.device`, normalised and augmented there (`augmenter`, or the
    pad-crop of `do_augment`); `views` (TeacherViews) replaces random draws by one of its stored views.
    Training runs under `compute`'s autocast and memory format; the model comes back fp32 on the CPU.
    `loss_fn(model, xb, yb, idx, epoch) -> (loss, parts)`; default cross-entropy. The test split is
    never seen here: selection uses the validation split only.
    """
    import time

    from pipeline.data.augment import Augmenter
    from pipeline.data.store import as_split
    from pipeline.device import resolve

    compute = compute or resolve("cpu", "fp32", channels_last=False)
    if augmenter is None and do_augment:
        augmenter = Augmenter("padcrop", int(x_train.shape[-1]), hflip)
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = as_split(x_train)
    if notes is not None and batch_size > len(split):  # said once, kept in run.json: what was really used
        notes.append(f"{desc}: batch_size {batch_size} is more than the {len(split)} training images: each epoch is "
                     f"one batch of {len(split)}")
    compute.prepare(model)
    max_lr: float | list[float] = lr
    if head_modules and backbone_lr_scale != 1.0:
        # A new head on a pretrained backbone: the head learns at lr, the backbone at lr * backbone_lr_scale.
        heads = tuple(f"{h}." for h in head_modules)
        head_p = [p for n, p in model.named_parameters() if n.startswith(heads)]
        body_p = [p for n, p in model.named_parameters() if not n.startswith(heads)]
        groups = [{"params": body_p + list(extra_params or []), "lr": lr * backbone_lr_scale},
                  {"params": head_p, "lr": lr}]
        max_lr = [lr * backbone_lr_scale, lr]
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    else:
        params = list(model.parameters()) + list(extra_params or [])
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    per_epoch = len(epoch_order(len(split), batch_size, torch.Generator().manual_seed(0)))
    steps = max(1, epochs * per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.15,
                                                anneal_strategy="cos") if epochs else None
    guard = DivergenceGuard(desc, lr, loss_terms)
    scaler = torch.amp.GradScaler("cuda") if compute.needs_scaler else None
    hist = History()
    best_state = copy.deepcopy(model.state_dict())
    try:
        if epochs == 0:
            hist.best_val_accuracy = accuracy(predict(model, x_val, compute=compute), y_val)
            return hist
        step = 0
        bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=quiet() or None)
        for epoch in bar:
            model.train()
            total, count = 0.0, 0
            t0 = time.perf_counter()
            for rows, yb, idx in train_batches(split, y_train, epoch_order(len(split), batch_size, gen), workers,
                                               compute.cuda):
                xb = split.to_model(rows.to(compute.device, non_blocking=compute.cuda))
                yb = yb.to(compute.device, non_blocking=compute.cuda)
                if views is not None:
                    xb = views.augmenter.apply(xb, views.select(idx, gen))
                elif augmenter is not None:
                    xb = augmenter.apply(xb, augmenter.draw(len(idx), gen))
                xb = compute.input(xb)
                with compute.odd_batch_guard(len(idx)):  # see pipeline/device.py
                    try:
                        with compute.autocast():
                            if loss_fn is None:
                                loss, parts = F.cross_entropy(model(xb).float(), yb), dict[str, float]()
                            else:
                                loss, parts = loss_fn(model, xb, yb, idx, epoch)
                    except ValueError as e:
                        if "Expected more than 1 value per channel" not in str(e):
                            raise
                        from pipeline.errors import ConfigError

                        raise ConfigError(f"{desc}: a training batch of {len(idx)} sample(s) reaches a BatchNorm layer, "
                                          "which needs at least 2 per batch",
                                          hint="raise the batch size (batch_size >= 2)") from None
                    if on_step is not None:
                        on_step(step, loss)
                    opt.zero_grad(set_to_none=True)
                    try:
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    except RuntimeError as e:
                        if "modified by an inplace operation" in str(e):
                            raise inplace_error(desc, model, lambda: _loss_again(model, loss_fn, xb, yb, idx, epoch,
                                                                                   compute)) from None
                        blame = user_frame(e, model)
                        if blame is None:
                            raise
                        from pipeline.errors import ModelError

                        raise ModelError(f"{desc}: the model's backward pass raised {type(e).__name__}: "
                                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''} (at {blame})",
                                         hint="fix the model's custom backward (autograd.Function) there") from None
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                value = loss.item()
                guard.check(value, parts, epoch, step)
                total += value * len(idx)
                count += len(idx)
            seconds = time.perf_counter() - t0
            guard.end_epoch(epoch, total / max(count, 1))
            val_acc = accuracy(predict(model, x_val, compute=compute), y_val)
            hist.epochs.append({"epoch": epoch, "loss": total / max(count, 1), "val_accuracy": val_acc,
                                "train_seconds": round(seconds, 3), "images_per_s": round(count / max(seconds, 1e-9), 1)})
            if val_acc > hist.best_val_accuracy:
                hist.best_val_accuracy, hist.best_epoch = val_acc, epoch
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}", val=f"{val_acc:.3f}")
            if not quiet() and not sys.stderr.isatty():  # no bar in a log file or a pipe: one line per epoch
                done_s = sum(e["train_seconds"] for e in hist.epochs)
                eta = done_s / len(hist.epochs) * (epochs - len(hist.epochs))
                print(f"  {desc}: epoch {epoch + 1}/{epochs} loss {total / max(count, 1):.4g} val {val_acc:.3f} "
                      f"{count / max(seconds, 1e-9):.0f} images/s ETA {eta:.0f} s", file=sys.stderr, flush=True)
        model.load_state_dict(best_state)
        return hist
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch accepts it
