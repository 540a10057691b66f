"""Bundles you can trust: safe extraction, checksums, manifest validation and `python -m pipeline verify`.

Unit tests build small archives and folders by hand (fast). CLI tests use the `fast_run` fixture's bundles;
the first `verify` builds a clean venv holding only the bundle's requirements.txt (onnxruntime + numpy, about
20 s with pip's local mirror) and caches it under ~/.cache/edge-pipeline/venvs.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, artifact, fast_args, read_run, run_cli
from pipeline.artifacts import sha256_file
from pipeline.bundle_io import (load_manifest, open_bundle, opened_bundle, read_checksums, safe_extract,
                                validate_manifest, verify_checksums)
from pipeline.errors import BundleError
from pipeline.stages.bundle import make_tarball, write_checksums


# --------------------------------------------------------------------------------------------------------
# helpers


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    tar.addfile(ti)


def make_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


def refused(fn, *args, exit_code: int = 2, **kw) -> BundleError:
    with pytest.raises(BundleError) as ei:
        fn(*args, **kw)
    assert ei.value.exit_code == exit_code, ei.value.message
    return ei.value


def bundle_dir(run: Path, target: str) -> Path:
    a = artifact(read_run(run), f"{target}:int8")
    assert a["bundle"], a
    return Path(a["bundle"])


def copy_bundle(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def reseal(folder: Path) -> None:
    """Rewrite manifest.json's file hashes and SHA256SUMS after an edit (a self-consistent but altered bundle)."""
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        manifest["files"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
                             if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")}
        mpath.write_text(json.dumps(manifest, indent=2))
    write_checksums(folder)


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr, p.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------
# safe_extract


def test_safe_extract_good_archive(tmp_path):
    def build(tar):
        add_special(tar, "b", tarfile.DIRTYPE)
        add_file(tar, "b/a.txt", b"hello")
        add_special(tar, "b/link", tarfile.SYMTYPE, "a.txt")  # a link inside the folder is fine
    tar = make_tar(tmp_path / "ok.tar.gz", build)
    root = safe_extract(tar, tmp_path / "out")
    assert root == tmp_path / "out" / "b"
    assert (root / "a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("bad, needle", [
    (lambda t: add_file(t, "../evil.txt"), "'..'"),
    (lambda t: add_file(t, "b/../../evil.txt"), "'..'"),
    (lambda t: add_file(t, "/tmp/h6b-absolute-evil.txt"), "absolute path"),
    (lambda t: add_special(t, "b/link", tarfile.SYMTYPE, "../../etc/passwd"), "outside the bundle"),
    (lambda t: add_special(t, "b/link", tarfile.SYMTYPE, "/etc/passwd"), "absolute path"),
    (lambda t: add_special(t, "b/hard", tarfile.LNKTYPE, "../outside"), "hard link"),
    (lambda t: add_special(t, "b/hard", tarfile.LNKTYPE, "etc/passwd"), "not an earlier member"),
    (lambda t: add_special(t, "b/dev", tarfile.CHRTYPE), "device file"),
    (lambda t: add_special(t, "b/blk", tarfile.BLKTYPE), "device file"),
    (lambda t: add_special(t, "b/fifo", tarfile.FIFOTYPE), "FIFO"),
    (lambda t: add_file(t, "b/a.txt", b"second copy"), "twice"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out", "hardlink-unknown",
        "chardev", "blockdev", "fifo", "duplicate"])
def test_safe_extract_refuses(tmp_path, bad, needle):
    def build(tar):
        add_file(tar, "b/a.txt", b"hello")
        bad(tar)
    tar = make_tar(tmp_path / "bad.tar.gz", build)
    err = refused(safe_extract, tar, tmp_path / "out")
    assert needle in err.message
    assert "member" in err.message
    assert not (tmp_path / "out").exists(), "a refused archive must leave nothing behind"
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar.gz"]


def test_safe_extract_limits(tmp_path):
    tar = make_tar(tmp_path / "many.tar.gz", lambda t: [add_file(t, f"b/{i}.txt") for i in range(5)])
    assert "more than 4 members" in refused(safe_extract, tar, tmp_path / "o1", max_members=4).message
    tar = make_tar(tmp_path / "big.tar.gz", lambda t: add_file(t, "b/big.bin", b"0" * 5000))
    assert "more than 4096 bytes" in refused(safe_extract, tar, tmp_path / "o2", max_bytes=4096).message
    (tmp_path / "junk.tar.gz").write_bytes(os.urandom(300))
    assert "not a readable bundle archive" in refused(safe_extract, tmp_path / "junk.tar.gz", tmp_path / "o3").message


# --------------------------------------------------------------------------------------------------------
# checksums


@pytest.fixture()
def sealed(tmp_path) -> Path:
    d = tmp_path / "bundle"
    (d / "samples").mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"\x08\x01model-bytes")
    (d / "samples" / "s.npy").write_bytes(b"sample")
    write_checksums(d)
    return d


def test_verify_checksums_pass(sealed):
    assert sorted(verify_checksums(sealed)) == ["model.onnx", "samples/s.npy"]


def test_verify_checksums_one_byte_changed(sealed):
    b = bytearray((sealed / "model.onnx").read_bytes())
    b[3] ^= 0x01
    (sealed / "model.onnx").write_bytes(bytes(b))
    err = refused(verify_checksums, sealed, exit_code=1)
    assert "model.onnx" in err.message and "mismatch" in err.message


def test_verify_checksums_missing_and_extra(sealed):
    (sealed / "samples" / "extra.npy").write_bytes(b"new")
    err = refused(verify_checksums, sealed, exit_code=1)
    assert "samples/extra.npy" in err.message and "not listed" in err.message
    (sealed / "samples" / "extra.npy").unlink()
    (sealed / "samples" / "s.npy").unlink()
    err = refused(verify_checksums, sealed, exit_code=1)
    assert "samples/s.npy" in err.message and "missing" in err.message


def test_verify_checksums_pycache_hint(sealed):
    (sealed / "__pycache__").mkdir()
    (sealed / "__pycache__" / "runtime.cpython-311.pyc").write_bytes(b"bytecode")
    err = refused(verify_checksums, sealed, exit_code=1)
    assert "__pycache__" in err.hint


@pytest.mark.parametrize("line, needle", [
    ("0" * 64 + "  ../outside.txt", "'..'"),
    ("0" * 64 + "  /etc/passwd", "absolute path"),
    ("not-a-digest  model.onnx", "malformed"),
])
def test_checksums_file_unsafe_or_malformed(sealed, line, needle):
    with open(sealed / "SHA256SUMS", "a") as f:
        f.write(line + "\n")
    assert needle in refused(verify_checksums, sealed, exit_code=2).message


def test_checksums_file_missing(sealed):
    (sealed / "SHA256SUMS").unlink()
    assert "SHA256SUMS is missing" in refused(verify_checksums, sealed, exit_code=2).message


# --------------------------------------------------------------------------------------------------------
# manifest


def good_manifest() -> dict:
    return {
        "schema_version": "1", "name": "m-x86", "created": "2026-01-01T00:00:00Z",
        "profile": {"name": "x86-cpu", "backend": "openvino", "description": "x86", "cpu_arch": "x86_64", "threads": 2},
        "model": {"file": "model.xml", "files": ["model.xml", "model.bin"], "precision": "int8",
                  "runtime": "openvino", "precision_hint": "f32", "kept_in_float": []},
        "device_model_files": [],
        "input": {"name": "input", "shape": [1, 1, 16, 16], "dtype": "float32", "layout": "nchw"},
        "preprocessing": {"mean": [0.5]}, "labels": ["0", "1"], "toolchain": {"openvino": "2026.4.1"},
        "metrics": {"accuracy": {"value": 0.9, "source": "measured", "split": "test"},
                    "estimated_latency_p50_ms": {"value": 0.1, "source": "estimated"}},
        "checks": {}, "files": {"model.xml": "a" * 64, "model.bin": "b" * 64},
    }


def test_validate_manifest_accepts_good():
    assert validate_manifest(good_manifest())["name"] == "m-x86"


def _set(d: dict, path: str, value) -> dict:
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur[k]
    if value is KeyError:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return d


@pytest.mark.parametrize("path, value, needle", [
    ("schema_version", "2", "schema_version"),
    ("model.file", KeyError, "model.file"),
    ("model.file", "../model.xml", "'..'"),
    ("model.file", "other.xml", "not listed"),
    ("metrics.accuracy.source", "guessed", "metrics.accuracy.source"),
    ("metrics.accuracy", {"value": 0.9}, "source"),
    ("files", {"model.xml": "nothex", "model.bin": "b" * 64}, "sha256"),
    ("input.shape", "1x1x16x16", "input.shape"),
    ("input.layout", "chw", "input.layout"),
    ("profile", None, "profile"),
    ("profile.threads", True, "profile.threads"),
])
def test_validate_manifest_refuses(path, value, needle):
    err = refused(validate_manifest, _set(good_manifest(), path, value))
    assert "manifest.json is malformed" in err.message
    assert needle in err.message, err.message


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null", "3", "\"x\"", "[" * 100000 + "]" * 100000,
                                  "{\"schema_version\": " + "9" * 5000 + "}", "\udcff"])
def test_load_manifest_malformed_files(tmp_path, text):
    (tmp_path / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    err = refused(load_manifest, tmp_path)
    assert "malformed" in err.message


def test_load_manifest_random_json():
    """Any JSON value, or a valid manifest with one field replaced by any JSON: a dict or BundleError(2)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                               lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                          max_size=4), max_leaves=12)
    fields = ["schema_version", "name", "profile", "profile.name", "model", "model.file", "model.files", "input",
              "input.shape", "input.layout", "metrics", "metrics.accuracy", "metrics.accuracy.value", "files",
              "labels", "device_model_files", "preprocessing"]

    def check(obj):
        try:
            assert isinstance(validate_manifest(obj), dict)
        except BundleError as e:
            assert e.exit_code == 2 and "malformed" in e.message

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(json_values)
    def anything(obj):
        check(obj)

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(st.sampled_from(fields), json_values)
    def mutated(field, value):
        check(_set(good_manifest(), field, value))

    anything()
    mutated()


# --------------------------------------------------------------------------------------------------------
# open_bundle on the real bundles (no venv)


def test_open_bundle_real_folder_and_tarball(fast_run, tmp_path):
    for target in ("onnxruntime", "jetson-orin-nano"):
        src = copy_bundle(bundle_dir(fast_run, target), tmp_path / target)
        assert open_bundle(src) == src
        manifest = load_manifest(src)
        assert manifest["model"]["file"] in read_checksums(src)
        tar = make_tar_of(src, tmp_path / f"{target}.tar.gz")
        with opened_bundle(tar) as root:
            assert root.name == src.name and (root / "manifest.json").is_file()
            extracted = root
        assert not extracted.exists(), "opened_bundle removes what it extracted"


def make_tar_of(folder: Path, tar_path: Path) -> Path:
    make_tarball(folder, tar_path)
    return tar_path


# --------------------------------------------------------------------------------------------------------
# python -m pipeline verify


def verify(*args: str, tmp_path: Path, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / f"verify-{len(list(tmp_path.glob('verify-*.json')))}.json"
    p = run_cli("verify", *args, "--json", str(out), timeout=timeout)
    return p, (json.loads(out.read_text()) if out.exists() else None)


def test_verify_ort_tarball_passes_in_clean_venv(fast_run, tmp_path):
    bundle = bundle_dir(fast_run, "onnxruntime")
    tar = bundle.parent / f"{bundle.name}.tar.gz"
    p, rep = verify(str(tar), tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "PASS" in p.stdout
    names = [c["name"] for c in rep["checks"]]
    # "readme": the README's own `python run.py <image>` on a raw sample (a PNG of a test image), in the venv
    assert names == ["safe extraction", "checksums", "manifest", "venv", "isolation", "samples", "readme"]
    assert all(c["ok"] for c in rep["checks"])
    assert rep["samples"]["result"]["raw_samples"] >= 1, rep["samples"]
    assert rep["venv"]["packages"]["onnxruntime"], rep["venv"]  # runtime version in the venv, reported
    assert "onnxruntime" in p.stdout and rep["venv"]["packages"]["onnxruntime"] in p.stdout
    assert rep["samples"]["result"]["samples"] == 8 and rep["samples"]["result"]["failures"] == []
    # The venv holds only the requirements: neither this project nor torch can be imported there,
    # even from the project's root folder with PYTHONPATH pointing at it.
    py = Path(rep["venv"]["path"]) / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for mod in ("pipeline", "torch"):
        r = subprocess.run([str(py), "-I", "-c", f"import {mod}"], cwd=ROOT, capture_output=True, text=True, env=env)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (mod, r.stderr)
    r = subprocess.run([str(py), "-I", "-c", "import onnxruntime, numpy; print(onnxruntime.__version__)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == rep["venv"]["packages"]["onnxruntime"]
    # the cache is reused the second time
    p2, rep2 = verify(str(tar), tmp_path=tmp_path)
    assert p2.returncode == 0 and rep2["venv"]["reused"] is True and rep2["venv"]["path"] == rep["venv"]["path"]


def test_verify_jetson_folder_passes_and_ignores_pycache(fast_run, tmp_path):
    src = copy_bundle(bundle_dir(fast_run, "jetson-orin-nano"), tmp_path)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "runtime.cpython-311.pyc").write_bytes(b"not bytecode: must never run")
    p, rep = verify(str(src), tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "left out __pycache__" in p.stdout
    assert rep["manifest"]["profile"] == "jetson-orin-nano"
    assert all(c["ok"] for c in rep["checks"])


def test_verify_one_byte_changed_fails_naming_the_file(fast_run, tmp_path):
    src = copy_bundle(bundle_dir(fast_run, "onnxruntime"), tmp_path)
    model = src / load_manifest(src)["model"]["file"]
    b = bytearray(model.read_bytes())
    b[len(b) // 2] ^= 0x01
    model.write_bytes(bytes(b))
    p, rep = verify(str(src), tmp_path=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"checksum mismatch for {model.name}" in p.stderr
    no_traceback(p)
    assert rep["status"] == "fail" and rep["checks"][-1]["name"] == "checksums"
    # the same through an archive
    tar = make_tar_of(src, tmp_path / "changed.tar.gz")
    p, _ = verify(str(tar), tmp_path=tmp_path)
    assert p.returncode == 1 and model.name in p.stderr, p.stderr


def test_verify_sample_mismatch_fails_naming_the_sample(fast_run, tmp_path):
    src = copy_bundle(bundle_dir(fast_run, "onnxruntime"), tmp_path)
    exp_path = src / "samples" / "expected.json"
    expected = json.loads(exp_path.read_text())
    target = expected["samples"][3]
    target["logits"] = [v + 1.0 for v in target["logits"]]  # same top-1, logits off by 1 > atol
    exp_path.write_text(json.dumps(expected))
    reseal(src)
    p, rep = verify(str(src), tmp_path=tmp_path)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "sample check failed" in p.stderr and target["file"] in p.stderr
    assert [c["ok"] for c in rep["checks"]] == [True] * 4 + [False]
    no_traceback(p)


def _bundle_tar_plus(fast_run, tmp_path, extra) -> Path:
    src = bundle_dir(fast_run, "onnxruntime")
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=f"{src.name}/{p.relative_to(src).as_posix()}", recursive=False)
        extra(tar, src.name)
    return tar_path


@pytest.mark.parametrize("extra, needle", [
    (lambda t, top: add_file(t, "../h6b-evil.txt", b"pwned"), "'..'"),
    (lambda t, top: add_special(t, f"{top}/samples/link", tarfile.SYMTYPE, "../../../../etc/passwd"),
     "outside the bundle"),
    (lambda t, top: add_file(t, "/tmp/h6b-evil-abs.txt", b"pwned"), "absolute path"),
], ids=["dotdot", "symlink-out", "absolute"])
def test_verify_refuses_unsafe_archives(fast_run, tmp_path, extra, needle):
    tar = _bundle_tar_plus(fast_run, tmp_path, extra)
    p, rep = verify(str(tar), tmp_path=tmp_path, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "unsafe bundle archive" in p.stderr and needle in p.stderr
    no_traceback(p)
    assert not (tmp_path.parent / "h6b-evil.txt").exists() and not Path("/tmp/h6b-evil-abs.txt").exists()
    assert [c["name"] for c in rep["checks"]] == ["safe extraction"] and rep["exit_code"] == 2


def test_verify_malformed_manifest_and_requirements(fast_run, tmp_path):
    src = copy_bundle(bundle_dir(fast_run, "onnxruntime"), tmp_path / "m")
    (src / "manifest.json").write_text(json.dumps({"schema_version": "1", "name": "x"}))
    reseal(src)
    p, _ = verify(str(src), tmp_path=tmp_path, timeout=120)
    assert p.returncode == 2 and "manifest.json is malformed" in p.stderr, p.stderr
    no_traceback(p)
    src = copy_bundle(bundle_dir(fast_run, "onnxruntime"), tmp_path / "r")
    (src / "requirements.txt").write_text("--index-url http://example.invalid/simple\nonnxruntime\n")
    reseal(src)
    p, _ = verify(str(src), tmp_path=tmp_path, timeout=120)
    assert p.returncode == 2 and "pip option" in p.stderr, p.stderr
    no_traceback(p)


def test_verify_missing_bundle(tmp_path):
    p = run_cli("verify", str(tmp_path / "nope.tar.gz"), timeout=120)
    assert p.returncode == 2 and "no such bundle" in p.stderr
    no_traceback(p)


# --------------------------------------------------------------------------------------------------------
# other targets: OpenVINO (x86) and LiteRT (rpi) bundles, built by reusing fast_run's cached stages


@pytest.fixture(scope="module")
def target_runs(fast_run, tmp_path_factory):
    cache: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def get(target: str) -> Path:
        if target not in cache:
            out = tmp_path_factory.mktemp(f"run-{target}") / "run"
            shutil.copytree(fast_run, out)  # the upstream stages are reused from the cache
            p = run_cli("run", "--target", target, "--out", str(out), *fast_args())
            cache[target] = (out, p)
        out, p = cache[target]
        assert p.returncode == 0, f"`run --target {target}` failed:\n" + p.stdout[-2500:] + p.stderr[-2500:]
        return out
    return get


@pytest.mark.parametrize("target, profile, runtime", [("x86", "x86-cpu", "openvino"),
                                                      ("rpi", "raspberry-pi-5", "ai-edge-litert")])
def test_verify_other_target_bundles(target_runs, tmp_path, target, profile, runtime):
    from targets.base import get_backend
    from targets.profiles import resolve_profile

    ok, why = get_backend(resolve_profile(target).backend).availability()
    if not ok:
        pytest.skip(f"{target} backend not available here: {why}")
    run = target_runs(target)
    bundle = bundle_dir(run, profile)
    p, rep = verify(str(bundle.parent / f"{bundle.name}.tar.gz"), tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert runtime in rep["venv"]["packages"] and rep["venv"]["packages"][runtime]
    assert all(c["ok"] for c in rep["checks"])


def test_import_openvino_result_matches_xml_plus_bin(target_runs, tmp_path):
    """bench.py hashes OpenVINO IR as .xml + .bin; import-results recomputes that digest from the bundle."""
    run = target_runs("x86")
    work = tmp_path / "run"
    work.mkdir()
    shutil.copyfile(run / "run.json", work / "run.json")
    bundle = copy_bundle(bundle_dir(run, "x86-cpu"), tmp_path / "b")
    result = tmp_path / "device.json"
    b = subprocess.run([sys.executable, "-B", "bench.py", load_manifest(bundle)["model"]["file"], "--source",
                        "device-measured", "--warmup", "2", "--min-iters", "20", "--min-time", "0.05", "--quiet",
                        "--json", str(result)], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr
    assert json.loads(result.read_text())["model"]["sha256"] != artifact(read_run(run), "x86-cpu:int8")["sha256"]
    p = run_cli("import-results", str(work), str(result), "--device", "test host (not a device)", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    a = artifact(read_run(work), "x86-cpu:int8")
    assert a["device_latency_ms"]["source"] == "device-measured" and a["device_latency_ms"]["runtime"] == "openvino"
