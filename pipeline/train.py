"""Supervised training and evaluation loops shared by the teacher, distill and prune stages."""
from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
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


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4, hflip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and (optionally) horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    xt = torch.as_tensor(x)
    outs = [model(xt[i:i + batch]).float() for i in range(0, len(xt), batch)]
    return torch.cat(outs).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = -1.0


def fit(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
        epochs: int, lr: float, batch_size: int, momentum: float, weight_decay: float, seed: int,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict]] | None = None,
        extra_params: list[nn.Parameter] | None = None, do_augment: bool = False, hflip: bool = False,
        desc: str = "train", on_step: Callable[[int, torch.Tensor], None] | None = None) -> History:
    """SGD + cosine schedule; keeps the weights of the epoch with the best validation accuracy.

    `loss_fn(model, xb, yb, idx, epoch) -> (loss, parts)`; default cross-entropy. The test split is
    never seen here: selection uses the validation split only.
    """
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    params = list(model.parameters()) + list(extra_params or [])
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    steps = max(1, epochs * ((len(xt) + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                anneal_strategy="cos") if epochs else None
    hist = History()
    best_state = copy.deepcopy(model.state_dict())
    if epochs == 0:
        hist.best_val_accuracy = accuracy(predict(model, x_val), y_val)
        return hist
    step = 0
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=quiet() or None)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for idx in batches(len(xt), batch_size, True, gen):
            xb, yb = xt[idx], yt[idx]
            if do_augment:
                xb = augment(xb, gen, hflip=hflip)
            try:
                if loss_fn is None:
                    loss, _ = F.cross_entropy(model(xb), yb), {}
                else:
                    loss, _ = loss_fn(model, xb, yb, idx, epoch)
            except ValueError as e:
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                from pipeline.errors import ConfigError

                raise ConfigError(f"{desc}: a training batch of {len(idx)} sample(s) reaches a BatchNorm layer, which "
                                  "needs at least 2 per batch", hint="raise the batch size (batch_size >= 2)") from None
            if on_step is not None:
                on_step(step, loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            total += loss.item() * len(idx)
            count += len(idx)
        val_acc = accuracy(predict(model, x_val), y_val)
        hist.epochs.append({"epoch": epoch, "loss": total / max(count, 1), "val_accuracy": val_acc})
        if val_acc > hist.best_val_accuracy:
            hist.best_val_accuracy, hist.best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", val=f"{val_acc:.3f}")
    model.load_state_dict(best_state)
    return hist
