"""Property-based tests (hypothesis): parsers of user input either succeed or raise their own error.

- recipe: random dicts, YAML text and --set strings -> load_recipe / validate_recipe / apply_set return a
  Recipe (or None for apply_set) or raise ConfigError - never another exception;
- bundle manifest: random bytes, JSON values and mutations of a valid manifest -> bundle_io.load_manifest
  returns a dict or raises BundleError - never another exception.
Examples are bounded (max_examples 200, no deadline) so the file runs in seconds.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.recipe import Recipe, apply_set, load_recipe, validate_recipe

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

DEFAULT = Recipe().model_dump(mode="json")


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


FIELD_PATHS = _paths(DEFAULT)
FIELD_NAMES = sorted({p[-1] for p in FIELD_PATHS})

keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["builtin:digits", "builtin:resnet8", "jetson", "all", "minmax", "structured", "rgb", "skip",
                     "npz", "imagefolder", "kd", "dkd", "1e400", "-0", "0x10", "yes", "~"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(keys, inner, max_size=4)),
                           max_leaves=12)


def mutate(draw, base: dict, paths: list, values, new_keys, max_edits: int) -> dict:
    """`base` with 1..max_edits fields at `paths` set to a drawn value, removed, or given a new sibling."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(paths))
        node = data
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["set", "del", "add"]))
        if action == "set":
            node[path[-1]] = draw(values)
        elif action == "del":
            node.pop(path[-1], None)
        else:
            node[draw(new_keys)] = draw(values)
    return data


@st.composite
def mutated_recipes(draw) -> dict:
    """The default recipe with a few fields replaced, removed or added (mostly valid-looking shapes)."""
    return mutate(draw, DEFAULT, FIELD_PATHS, json_values, keys, 4)


set_keys = st.one_of(
    st.sampled_from([".".join(p) for p in FIELD_PATHS]),
    st.lists(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), max_size=4).map(".".join),
)
set_values = st.one_of(st.text(max_size=30),
                       json_values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
set_strings = st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", set_keys, set_values))


def _only_config_error(fn, *args):
    try:
        return fn(*args)
    except ConfigError as e:
        assert e.exit_code == 2 and isinstance(e.message, str) and e.message.strip()
        return None


# --------------------------------------------------------------------------- recipe


@SETTINGS
@given(json_values)
@example({"distill": {"epochs": -1}})
@example({"prune": {"ratio": 1.5}})
@example({"calibration": {"samples": 0}})
@example({"targets": []})
@example({"data": {"mean": [0.5, 0.5, 0.5], "channels": 1}})
@example({"seed": float("nan")})
@example({1: 2, None: [3]})
def test_validate_recipe_random_values(data) -> None:
    if not isinstance(data, dict):
        data = {"distill": data}
    r = _only_config_error(validate_recipe, data)
    assert r is None or isinstance(r, Recipe)


@SETTINGS
@given(mutated_recipes())
def test_validate_recipe_mutated_default(data) -> None:
    r = _only_config_error(validate_recipe, data)
    if r is not None:  # a valid recipe survives a round trip through its own YAML
        assert validate_recipe(yaml.safe_load(yaml.safe_dump(r.model_dump(mode="json")))) == r


@SETTINGS
@given(st.dictionaries(keys, json_values, max_size=4), st.lists(set_strings, max_size=4))
def test_apply_set_random(data, assignments) -> None:
    for a in assignments:
        try:
            assert apply_set(data, a) is None
        except ConfigError:
            pass


@SETTINGS
@given(st.lists(set_strings, max_size=5), st.one_of(st.none(), st.lists(st.text(max_size=10), max_size=3)))
@example(["distill.epochs=-1"], None)
@example(["data=3", "data.path=x"], None)
@example(["a.b.c.d=1"], None)
@example(["=1"], None)
@example(["seed=!!python/object/apply:os.system ['true']"], None)
@example(["targets=[]"], [])
@example(["seed=" + "[" * 3000 + "]" * 3000], None)
def test_load_recipe_random_sets(assignments, targets) -> None:
    r = _only_config_error(load_recipe, None, assignments, targets)
    assert r is None or isinstance(r, Recipe)


_yaml_texts = st.one_of(
    st.text(max_size=200),
    json_values.map(lambda v: yaml.safe_dump(v, sort_keys=False)),
    mutated_recipes().map(lambda v: yaml.safe_dump(v, sort_keys=False)),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@SETTINGS
@given(_yaml_texts)
@example("distill:\n  epochs: 3\n  lr: [1, 2\n")
@example("a: &x [*x]\n")  # a recursive alias
@example("distill: &d {epochs: *d}\n")
@example("seed: " + "[" * 3000 + "]" * 3000 + "\n")  # deeper than Python's recursion limit
@example("seed: &s [*s]\n")  # a list that contains itself, in the error message
@example("targets: &t [*t]\n")
@example("!!python/object/apply:os.system ['true']\n")
@example("? [a, b]\n: 1\n")
@example("\t- bad indent\n")
@example("data:\n  split: {val: .nan}\n")
@example("seed: 2001-12-14\n")
def test_load_recipe_random_yaml(text) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_bytes(text.encode("utf-8"))
        r = _only_config_error(load_recipe, path, [], None)
        assert r is None or isinstance(r, Recipe)


@SETTINGS
@given(st.binary(max_size=200))
@example(b"\xff\xfe\x00")
def test_load_recipe_random_bytes(blob) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_bytes(blob)
        r = _only_config_error(load_recipe, path, [], None)
        assert r is None or isinstance(r, Recipe)


# --------------------------------------------------------------------------- bundle manifest

try:
    from pipeline import bundle_io
    from pipeline.errors import BundleError
    HAVE_BUNDLE_IO = hasattr(bundle_io, "load_manifest")
except ImportError:  # being written by another part of the project
    HAVE_BUNDLE_IO = False

needs_bundle_io = pytest.mark.skipif(not HAVE_BUNDLE_IO, reason="bundle_io not available")

SHA = "0" * 64
VALID_MANIFEST = {
    "schema_version": "1",
    "name": "default-onnxruntime",
    "created": "2025-01-01T00:00:00Z",
    "profile": {"name": "onnxruntime", "backend": "onnxruntime", "description": "ORT on a CPU",
                "cpu_arch": "x86_64", "threads": 4},
    "model": {"file": "model_int8.onnx", "files": ["model_int8.onnx"], "precision": "int8",
              "runtime": "onnxruntime", "precision_hint": None, "kept_in_float": []},
    "device_model_files": [],
    "input": {"name": "input", "shape": [1, 1, 16, 16], "dtype": "float32", "layout": "nchw"},
    "preprocessing": {"size": [16, 16], "mean": [0.5], "std": [0.5]},
    "labels": [str(i) for i in range(10)],
    "toolchain": {"onnxruntime": "1.20"},
    "metrics": {"accuracy": {"value": 0.9, "source": "measured"},
                "estimated_latency_p50_ms": {"value": 0.01, "source": "estimated"}},
    "checks": {},
    "files": {"model_int8.onnx": SHA, "run.py": SHA},
}
MANIFEST_PATHS = _paths(VALID_MANIFEST)
manifest_values = st.one_of(json_values, st.sampled_from(["../../etc/passwd", "/abs/path", "a\x00b", "C:\\x",
                                                          "model_int8.onnx", SHA, "G" * 64, "nchw", "measured"]))


@st.composite
def mutated_manifests(draw) -> dict:
    return mutate(draw, VALID_MANIFEST, MANIFEST_PATHS, manifest_values, st.text(max_size=12), 3)


def _load_manifest_bytes(blob: bytes):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "manifest.json").write_bytes(blob)
        try:
            m = bundle_io.load_manifest(d)
        except BundleError as e:
            assert e.exit_code == 2 and e.message
            return None
        assert isinstance(m, dict)
        return m


@needs_bundle_io
def test_valid_manifest_loads() -> None:
    assert _load_manifest_bytes(json.dumps(VALID_MANIFEST).encode()) == VALID_MANIFEST


@needs_bundle_io
@SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xef\xbb\xbf{}")
@example(b"[" * 5000 + b"]" * 5000)
@example(b'{"a": NaN}')
def test_load_manifest_random_bytes(blob) -> None:
    _load_manifest_bytes(blob)


@needs_bundle_io
@SETTINGS
@given(json_values)
def test_load_manifest_random_json(value) -> None:
    _load_manifest_bytes(json.dumps(value).encode())


@needs_bundle_io
@SETTINGS
@given(mutated_manifests())
def test_load_manifest_mutated(value) -> None:
    m = _load_manifest_bytes(json.dumps(value, allow_nan=True).encode())
    if m is not None:  # what loads keeps its promises: safe names, hex digests, listed model files
        for name in [*m["files"], m["model"]["file"], *m["model"]["files"]]:
            assert isinstance(name, str) and not name.startswith("/") and ".." not in Path(name).parts
        assert all(isinstance(v, str) and len(v) == 64 for v in m["files"].values())
        assert m["model"]["file"] in m["files"]
        for metric in m["metrics"].values():
            v = metric["value"]
            assert v is None or (isinstance(v, (int, float)) and math.isfinite(v))
