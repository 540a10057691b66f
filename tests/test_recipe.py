"""Recipe: defaults for every field, --set overrides, and errors that name field, value and what is allowed."""
from __future__ import annotations

import pytest
import yaml

from conftest import run_cli
from pipeline.errors import ConfigError
from pipeline.recipe import Recipe, apply_set, load_recipe


def test_default_recipe_needs_no_file():
    r = load_recipe()
    assert r.name == "default" and r.targets == ["jetson"]
    assert r.distill.epochs > 0 and r.data.source == "auto" and r.data.path is None  # auto: digits


def test_set_overrides_typed_values():
    r = load_recipe(sets=["distill.epochs=7", "distill.lr=0.01", "data.augment=true", "targets=[x86, rpi]"])
    assert r.distill.epochs == 7 and r.distill.lr == 0.01 and r.data.augment is True
    assert r.targets == ["x86", "rpi"]


def test_set_of_a_list_of_loss_terms():
    r = load_recipe(sets=["distill.losses=[{name: ce, weight: 1.0}, {name: dkd, weight: 1.0, beta: 2}]"])
    assert [t.name for t in r.distill.losses] == ["ce", "dkd"]


@pytest.mark.parametrize("assignment, field, fragment", [
    ("distill.epochs=-1", "distill.epochs", "greater than or equal to 0"),
    ("distill.epochs=abc", "distill.epochs", "valid integer"),
    ("prune.ratio=1.5", "prune.ratio", "less than 1"),
    ("calibration.samples=0", "calibration.samples", "greater than or equal to 1"),
    ("calibration.method=best", "calibration.method", "'minmax', 'percentile' or 'entropy'"),
    ("distill.epoch=3", "distill.epoch", "unknown field"),
])
def test_validation_error_names_path_value_and_allowed(assignment, field, fragment):
    with pytest.raises(ConfigError) as e:
        load_recipe(sets=[assignment])
    msg = str(e.value)
    assert field in msg and fragment in msg
    value = assignment.split("=", 1)[1]
    if "unknown" not in fragment:
        assert value in msg


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_set({}, "distill.epochs")


def test_yaml_file_with_error_position(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("distill:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(p)


def test_yaml_file_round_trip(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "mine", "distill": {"epochs": 3}}))
    r = load_recipe(p, sets=["distill.epochs=4"])
    assert r.name == "mine" and r.distill.epochs == 4  # --set wins over the file


def test_cli_print_config_and_error_exit_codes(tmp_path):
    p = run_cli("run", "--print-config", "--set", "distill.epochs=3")
    assert p.returncode == 0
    assert yaml.safe_load(p.stdout)["distill"]["epochs"] == 3
    bad = run_cli("run", "--set", "distill.epochs=-2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert "distill.epochs" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_every_field_has_a_default():
    # Building the model with no arguments is what "the default run needs no file" means.
    assert Recipe().model_dump()


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    import pytest as _pytest

    from pipeline.errors import ConfigError
    from pipeline.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("distill:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\nteacher:\n  train:\n    epochs: 2\n")
    with _pytest.raises(ConfigError, match=r"key 'epochs' is given twice in one section \(lines 2 and 4\)"):
        load_recipe(f)
    f.write_text("distill:\n  epochs: 3\nteacher:\n  train:\n    epochs: 2\n")  # one key per section: fine
    r = load_recipe(f)
    assert r.distill.epochs == 3 and r.teacher.train.epochs == 2
