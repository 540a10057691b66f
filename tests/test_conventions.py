"""Input conventions of torchvision/timm families: used for the data fields the recipe leaves unset, said once."""
from __future__ import annotations

import pytest

from pipeline.models.conventions import apply_conventions, family_conventions
from pipeline.recipe import load_recipe

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _usable(module: str) -> bool:
    try:
        from pipeline.models import vision

        (vision.import_torchvision if module == "torchvision" else vision.import_timm)()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _usable("torchvision"), reason="torchvision does not import here")
def test_torchvision_weights_transforms_give_size_and_normalisation():
    c = family_conventions("torchvision:inception_v3")
    assert c["input_size"] == 299 and (c["mean"], c["std"]) == IMAGENET and "weights transforms" in c["source"]
    assert family_conventions("torchvision:resnet18")["input_size"] == 224
    assert family_conventions("torchvision:no_such_net") is None
    assert family_conventions("builtin:resnet20") is None and family_conventions(None) is None


@pytest.mark.skipif(not _usable("timm"), reason="timm does not import here")
def test_recipe_fields_the_user_set_are_kept():
    r, notes = apply_conventions(load_recipe(None, ["teacher.model=timm:mobilenetv3_small_050", "data.channels=3",
                                                    "data.input_size=64"]))
    assert r.data.input_size == 64 and (r.data.mean, r.data.std) == IMAGENET
    assert len(notes) == 1 and "data.mean=" in notes[0] and "input_size" not in notes[0] and "pretrained_cfg" in notes[0]
    r, notes = apply_conventions(load_recipe(None, ["teacher.model=timm:mobilenetv3_small_050", "data.channels=3",
                                                    "data.mean=[0.5]", "data.std=[0.5]"]))
    assert r.data.mean == [0.5] and r.data.input_size == 224 and notes == [
        "teacher timm:mobilenetv3_small_050: data.input_size=224 (from timm pretrained_cfg of mobilenetv3_small_050; "
        "set them in the recipe to override)"]
    r, notes = apply_conventions(load_recipe(None, []))  # the built-in zoo: nothing changes
    assert notes == [] and r.data.input_size == 32
