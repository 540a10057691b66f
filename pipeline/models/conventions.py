"""Input conventions of a pretrained model family: the normalisation and input size its weights expect.

torchvision publishes them with each weights enum (`get_model_weights(name).DEFAULT.transforms()`: crop size,
mean, std), timm with each model's `pretrained_cfg` (input_size, mean, std). A run whose teacher (or, failing
that, student) is such a model uses them for every field of `data` the recipe does not set itself, says so once,
and the values reach the bundle manifest through the data stage's preprocessing record.
"""
from __future__ import annotations

from typing import Any


def family_conventions(spec: str | None) -> dict[str, Any] | None:
    """{'mean', 'std', 'input_size', 'source'} for `torchvision:NAME` / `timm:NAME`, None for other specs or
    when the library publishes nothing for the model (or cannot be imported)."""
    if not spec or ":" not in spec:
        return None
    scheme, name = spec.split(":", 1)
    try:
        if scheme == "torchvision":
            from pipeline.models.vision import import_torchvision

            t = import_torchvision().models.get_model_weights(name).DEFAULT.transforms()
            return {"mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std],
                    "input_size": int(t.crop_size[0]), "source": f"torchvision {name} weights transforms"}
        if scheme == "timm":
            from pipeline.models.vision import import_timm

            cfg = import_timm().get_pretrained_cfg(name)
            if cfg is None:
                return None
            return {"mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std],
                    "input_size": int(cfg.input_size[-1]), "source": f"timm pretrained_cfg of {name}"}
    except Exception:  # no published weights for the name, or the library is missing: nothing to apply
        return None
    return None


def apply_conventions(recipe: Any) -> tuple[Any, list[str]]:
    """The recipe with the family's conventions for every `data` field it does not set (teacher first, then
    student), and the one-line notes saying what was chosen. Mean/std apply only to 3-channel data."""
    data = recipe.data
    for who in ("teacher", "student"):
        spec = getattr(getattr(recipe, who), "model", None)
        conv = family_conventions(spec if isinstance(spec, str) else None)
        if conv is None:
            continue
        update: dict[str, Any] = {}
        if "input_size" not in data.model_fields_set and conv["input_size"] != data.input_size:
            update["input_size"] = conv["input_size"]
        if data.channels == 3:
            for key in ("mean", "std"):
                if key not in data.model_fields_set and conv[key] != list(getattr(data, key)):
                    update[key] = conv[key]
        if not update:
            return recipe, []
        new = recipe.model_copy(update={"data": data.model_copy(update=update)})
        said = ", ".join(f"data.{k}={v}" for k, v in update.items())
        return new, [f"{who} {spec}: {said} (from {conv['source']}; set them in the recipe to override)"]
    return recipe, []
