"""DDP distillation (`--nproc 2`, torchrun + gloo on CPU): one artifact, a student that learns, a cached stage."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, artifact, fast_args, read_run, run_cli

sys.path.insert(0, str(ROOT))

from pipeline.errors import PipelineError  # noqa: E402


def _stage_meta(out: Path, summary: dict, stage: str) -> dict:
    rec = next(s for s in summary["stages"] if s["stage"] == stage)
    return json.loads((out / rec["dir"] / "meta.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), "--nproc", "2",
                *fast_args(["benchmark.enabled=false"]))
    return out, p


def test_nproc2_distills_once_and_learns(ddp_run):
    out, p = ddp_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    summary = read_run(out)
    assert summary["recipe"]["distill"]["nproc"] == 2

    # exactly one distill stage folder, one model written (rank 0 only), no leftovers of the ranks
    folders = [d for d in (out / "stages" / "distill").iterdir()]
    assert len(folders) == 1, folders
    assert sorted(p.name for p in folders[0].rglob("*")) == ["meta.json", "model.json", "model.pt"]
    assert not (out / "distill-ddp.log").exists()

    meta = _stage_meta(out, summary, "distill")
    m = meta["metrics"]
    assert m["nproc"] == 2
    assert m["ddp"]["world_size"] == 2 and m["ddp"]["backend"] == "gloo"
    assert m["ddp"]["global_batch"] == 64 and m["ddp"]["per_rank_batch"] == 32
    assert meta["key_parts"]["config"]["distill"]["nproc"] == 2
    # one history entry per epoch, chosen epoch consistent with the history
    assert len(m["history"]) == 4
    assert m["val_accuracy"] == max(e["val_accuracy"] for e in m["history"])
    # the student learns (10 classes: chance is 0.1)
    assert m["val_accuracy"] > 0.5
    student = artifact(summary, "student")
    assert student["val_accuracy"] == m["val_accuracy"]
    assert student["accuracy"] > 0.5
    assert any("DDP on 2 processes" in n for n in summary["notes"])


def test_nproc2_stage_is_cached_on_rerun(ddp_run):
    out, first = ddp_run
    assert first.returncode == 0
    p = run_cli("run", "--target", "onnxruntime", "--out", str(out), "--nproc", "2",
                *fast_args(["benchmark.enabled=false"]))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = read_run(out)
    rec = next(s for s in summary["stages"] if s["stage"] == "distill")
    assert rec["cached"] is True
    assert len(list((out / "stages" / "distill").iterdir())) == 1


def test_a_failing_rank_is_one_clear_error(tmp_path):
    """A rank that fails (here: its data folder is missing) ends torchrun; the parent raises one error."""
    from pipeline.ddp import launch
    from pipeline.recipe import Recipe

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = {"recipe": Recipe().model_dump(mode="json"), "data_dir": str(tmp_path / "missing"),
           "teacher_dir": str(tmp_path / "missing"), "out_dir": str(tmp_path / "out"), "job_dir": str(job_dir),
           "threads": 1, "timeout_s": 120}
    (job_dir / "job.json").write_text(json.dumps(job))
    with pytest.raises(PipelineError) as e:
        launch(job_dir, 2, 1)
    assert "rank" in e.value.message and "No such file" in e.value.message
    assert e.value.hint
    assert not (tmp_path / "out").exists()


def test_threads_are_split_between_ranks(monkeypatch):
    from pipeline.ddp import threads_per_rank

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert threads_per_rank(2) == 4
    assert threads_per_rank(16) == 1
