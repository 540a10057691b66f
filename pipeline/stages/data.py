"""data: decode, resize and split the dataset once into the uint8 store; later stages key on its hash."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.datasets import Splits
from pipeline.runner import Runner, StageContext, StageResult
from pipeline import strict_json


def source_fingerprint(cfg) -> str | None:
    """Users' data may change on disk: fold its content hash into the key."""
    if cfg.source.startswith("builtin:") or not cfg.path:
        return None
    from pipeline.data.layout import fingerprint  # tolerates unreadable files (data.bad_images handles them)

    p = Path(cfg.path).expanduser()
    return fingerprint(p) if p.exists() else None


def run_data(runner: Runner, recipe) -> StageResult:
    from pipeline.data import datasets, sources, store

    cfg = recipe.data

    def fn(ctx: StageContext) -> None:
        from pipeline.data.store import build_store
        from pipeline.train import progress_line

        info = build_store(cfg, recipe.seed, ctx.dir, progress=progress_line("data"))
        (ctx.dir / "data.json").write_text(strict_json.dumps(
            {"class_names": info["class_names"], "preprocessing": info["preprocessing"], "source": cfg.source},
            indent=2))
        ctx.notes.extend(info["notes"])
        n = {k: v["images"] for k, v in info["splits"].items()}
        ctx.metrics.update(train=n["train"], val=n["val"], test=n["test"], classes=len(info["class_names"]),
                           input_shape=[cfg.channels, cfg.input_size, cfg.input_size],
                           split_sha256={k: v["sha256"] for k, v in info["splits"].items()})

    return runner.stage("data", fn, config={"data": cfg.model_dump(mode="json", exclude={"workers"}), "seed": recipe.seed},
                        tools=["scikit-learn", "mlxtend", "numpy", "torch", "pillow"], extra_key=source_fingerprint(cfg),
                        code=(store, sources, datasets))


def read_splits(res: StageResult) -> Splits:
    """The splits memory-mapped: x_* are ImageSplits (float32 NCHW per batch), y_* int64 labels."""
    from pipeline.data.store import open_store

    st = open_store(res.dir)
    info = st.pop("info")
    return Splits(class_names=info["class_names"], preprocessing=info["preprocessing"], notes=info["notes"],
                  fixed_splits=info.get("fixed_splits", []), **st)
