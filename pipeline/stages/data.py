"""data: load, preprocess and split the dataset once; later stages key on its hash."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.data.datasets import Splits, check_finite, load_splits
from pipeline.runner import Runner, StageContext, StageResult


def source_fingerprint(cfg) -> str | None:
    """Users' data may change on disk: fold its content hash into the key."""
    if cfg.source.startswith("builtin:") or not cfg.path:
        return None
    from pipeline.data.layout import fingerprint  # tolerates unreadable files (data.bad_images handles them)

    p = Path(cfg.path).expanduser()
    return fingerprint(p) if p.exists() else None


def run_data(runner: Runner, recipe) -> StageResult:
    cfg = recipe.data

    def fn(ctx: StageContext) -> None:
        s = load_splits(cfg, recipe.seed)
        for name in ("x_train", "x_val", "x_test"):
            check_finite(getattr(s, name), f"the {name[2:]} split of {cfg.source}")
        np.savez(ctx.dir / "data.npz", x_train=s.x_train, y_train=s.y_train, x_val=s.x_val, y_val=s.y_val,
                 x_test=s.x_test, y_test=s.y_test)
        (ctx.dir / "data.json").write_text(json.dumps(
            {"class_names": s.class_names, "preprocessing": s.preprocessing, "source": cfg.source,
             "fixed_splits": s.fixed_splits}, indent=2))
        ctx.notes.extend(s.notes)
        ctx.metrics.update(train=len(s.y_train), val=len(s.y_val), test=len(s.y_test),
                           classes=s.num_classes, input_shape=list(s.input_shape))

    return runner.stage("data", fn, config={"data": cfg.model_dump(mode="json"), "seed": recipe.seed},
                        tools=["scikit-learn", "mlxtend", "numpy", "torch"], extra_key=source_fingerprint(cfg))


def read_splits(res: StageResult) -> Splits:
    info = json.loads(res.path("data.json").read_text())
    with np.load(res.path("data.npz")) as f:
        arrays = {k: f[k] for k in f.files}
    return Splits(class_names=info["class_names"], preprocessing=info["preprocessing"],
                  fixed_splits=info.get("fixed_splits", []), **arrays)
