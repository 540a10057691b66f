"""Device profiles: built-ins validate, names and aliases resolve, user files override, errors are clear."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from targets.profiles import (BUILTIN_DIR, PEAK_FIELD, Profile, load_profile_file, load_profiles,
                              resolve_profile)

EXPECTED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-agx-xavier", "x86-cpu",
            "raspberry-pi-5", "raspberry-pi-4", "onnxruntime"}


@pytest.fixture(scope="module")
def builtins() -> dict[str, Profile]:
    return load_profiles()


def _builtin_data(name: str) -> dict:
    return yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())


def test_all_builtins_load_and_validate(builtins):
    assert set(builtins) == EXPECTED
    for name, prof in builtins.items():
        assert prof.name == name
        assert (BUILTIN_DIR / f"{name}.yaml").is_file(), "one file per profile, named after it"
        # every figure says where it comes from; the estimator's peak is a positive number
        figs = [prof.peaks.int8_tops, prof.peaks.fp16_tflops, prof.peaks.memory_bandwidth_gbs,
                prof.peaks.memory_gb, prof.efficiency, prof.memory_efficiency, prof.layer_overhead_us]
        if prof.peaks.fp32_tflops is not None:
            figs.append(prof.peaks.fp32_tflops)
        for fig in figs:
            assert len(fig.source) > 10, (name, fig)
        assert prof.peak_figure(prof.estimate_precision).value > 0
        assert 0 < prof.efficiency.value <= 1


def test_backends_and_arch(builtins):
    assert {p.backend for n, p in builtins.items() if n.startswith("jetson")} == {"tensorrt"}
    assert builtins["x86-cpu"].backend == "openvino"
    assert builtins["raspberry-pi-5"].backend == "litert"
    assert builtins["raspberry-pi-5"].threads == 4
    assert builtins["onnxruntime"].backend == "onnxruntime"
    assert builtins["x86-cpu"].cpu_arch == "x86_64"
    assert builtins["jetson-orin-nano"].runtime.tensorrt == "10.3"
    assert builtins["jetson-orin-nano"].runtime.jetpack == "6.2"


def test_jetson_peaks_are_dense_gpu_figures(builtins):
    """docs/PUBLISHED_FIGURES.md publishes sparse GPU+DLA TOPS; the estimator must use dense GPU figures."""
    published_sparse = {"jetson-orin-nano": 40, "jetson-orin-nx": 100, "jetson-agx-orin": 275}
    for name, sparse in published_sparse.items():
        fig = builtins[name].peaks.int8_tops
        assert fig.value <= sparse / 2 + 1e-9
        assert "sparse" in fig.source and "dense" in fig.source
        assert str(sparse) in fig.source
    # Raspberry Pi peaks are derived from cores x clock x SIMD width
    for name in ("raspberry-pi-5", "raspberry-pi-4"):
        assert builtins[name].peaks.int8_tops.source.startswith("derived")


def test_host_measured_peaks_are_labelled(builtins):
    for name in ("x86-cpu", "onnxruntime"):
        fig = builtins[name].peaks.int8_tops
        assert "measured on the dev host" in fig.source and "docs/TOOLCHAIN.md" in fig.source
        assert fig.value == pytest.approx(0.652 * 2)


@pytest.mark.parametrize("alias,name", [
    ("jetson", "jetson-orin-nano"), ("orin-nano", "jetson-orin-nano"), ("x86", "x86-cpu"), ("cpu", "x86-cpu"),
    ("rpi", "raspberry-pi-5"), ("arm", "raspberry-pi-5"), ("rpi5", "raspberry-pi-5"), ("rpi4", "raspberry-pi-4"),
    ("ort", "onnxruntime"), ("onnxruntime-cpu", "onnxruntime"), ("jetson-agx-orin", "jetson-agx-orin"),
    ("  Jetson ", "jetson-orin-nano"),
])
def test_aliases_resolve(builtins, alias, name):
    assert resolve_profile(alias, builtins).name == name


def test_unknown_name_lists_choices_and_suggests(builtins):
    with pytest.raises(ConfigError) as ei:
        resolve_profile("jetson-orin-nanp", builtins)
    msg = str(ei.value)
    for n in EXPECTED | {"jetson", "x86", "cpu", "rpi", "arm"}:
        assert n in msg
    assert "Did you mean 'jetson-orin-nano'" in msg
    with pytest.raises(ConfigError, match="unknown target 'quantum-toaster'"):
        resolve_profile("quantum-toaster", builtins)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_user_dir_overrides_and_extends(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    over = _builtin_data("jetson-orin-nano")
    over["peaks"]["memory_bandwidth_gbs"] = {"value": 102.0, "source": "Super mode, measured by me"}
    _write(d / "nano-super.yaml", over)
    new = _builtin_data("raspberry-pi-5")
    new.update(name="my-board", aliases=["board"], description="a custom ARM board")
    _write(d / "my-board.yml", new)

    profiles = load_profiles([d])
    assert set(profiles) == EXPECTED | {"my-board"}
    assert resolve_profile("jetson", profiles).peaks.memory_bandwidth_gbs.value == 102.0
    assert resolve_profile("board", profiles).name == "my-board"
    # single file form, and built-ins untouched without extras
    assert "my-board" in load_profiles([d / "my-board.yml"])
    assert load_profiles()["jetson-orin-nano"].peaks.memory_bandwidth_gbs.value == 68


def test_duplicate_alias_is_an_error(tmp_path):
    data = _builtin_data("raspberry-pi-4")
    data.update(name="other-board", aliases=["jetson"])
    f = _write(tmp_path / "other.yaml", data)
    with pytest.raises(ConfigError, match="'jetson' names two profiles"):
        load_profiles([f])


def test_same_name_in_two_user_files_is_an_error(tmp_path):
    data = _builtin_data("raspberry-pi-4")
    data.update(name="twin", aliases=[])
    _write(tmp_path / "a.yaml", data)
    _write(tmp_path / "b.yaml", data)
    with pytest.raises(ConfigError, match="defined twice"):
        load_profiles([tmp_path])


def test_invalid_yaml_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\naliases: [a, b\n  peaks: {\n")
    with pytest.raises(ConfigError) as ei:
        load_profiles([f])
    assert str(f) in str(ei.value) and "invalid YAML" in str(ei.value)
    assert re.search(r"line \d+", str(ei.value))


def test_unknown_field_names_file_and_field_path(tmp_path):
    data = _builtin_data("x86-cpu")
    data["peaks"]["int8_tops"]["sourse"] = "typo"
    data["colour"] = "blue"
    f = _write(tmp_path / "typo.yaml", data)
    with pytest.raises(ConfigError) as ei:
        load_profile_file(f)
    msg = str(ei.value)
    assert str(f) in msg
    assert "field 'peaks.int8_tops.sourse': unknown field" in msg
    assert "field 'colour': unknown field" in msg


def test_wrong_and_missing_fields_name_the_path(tmp_path):
    data = _builtin_data("raspberry-pi-5")
    data["backend"] = "tflite"
    data["batch_sizes"] = [1, "many"]
    del data["peaks"]["memory_gb"]["source"]
    f = _write(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as ei:
        load_profile_file(f)
    msg = str(ei.value)
    assert "field 'backend'" in msg
    assert "field 'batch_sizes[1]'" in msg
    assert "field 'peaks.memory_gb.source': Field required" in msg


def test_estimate_precision_needs_a_peak(tmp_path):
    data = _builtin_data("raspberry-pi-4")  # has no fp16 peak
    data["estimate_precision"] = "fp16"
    f = _write(tmp_path / "p.yaml", data)
    with pytest.raises(ConfigError, match="fp16_tflops has no positive value"):
        load_profile_file(f)


def test_not_a_mapping_and_missing_path(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_profile_file(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles([tmp_path / "nowhere"])


def test_unquoted_runtime_version_is_text(tmp_path):
    data = _builtin_data("jetson-orin-nx")
    text = yaml.safe_dump(data, sort_keys=False).replace("jetpack: '6.2'", "jetpack: 6.2")
    assert "jetpack: 6.2" in text
    f = tmp_path / "nx.yaml"
    f.write_text(text)
    assert load_profile_file(f).runtime.jetpack == "6.2"


def test_peak_field_mapping_and_unknown_precision(builtins):
    assert set(PEAK_FIELD) == {"int8", "fp16", "fp32"}
    with pytest.raises(ConfigError):
        builtins["x86-cpu"].peak_figure("int4")


def test_targets_do_not_import_the_cli():
    root = Path(__file__).resolve().parents[1] / "targets"
    for f in (root / "profiles.py", root / "estimate.py"):
        for line in f.read_text().splitlines():
            m = re.match(r"\s*(?:from|import)\s+(pipeline[\w.]*)", line)
            if m:
                assert m.group(1) == "pipeline.errors", (f, line)
