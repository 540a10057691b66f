"""A teacher that does not know the data: the min_accuracy gate, teacher.finetune, and the KD-may-hurt note."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT, artifact, fast_args, read_run, run_cli

sys.path.insert(0, str(ROOT))

# A small teacher keeps the finetune stage quick; the checkpoint is its untrained weights (val ~0.1).
WEAK = ["teacher.kwargs.width=8", "benchmark.enabled=false", "distill.epochs=2", "quantize.max_accuracy_drop=0.05"]


@pytest.fixture(scope="module")
def weak_ckpt(tmp_path_factory) -> Path:
    import torch

    from pipeline.models.spec import build_model

    torch.manual_seed(123)
    model = build_model("builtin:resnet8", {"width": 8}, 1, 10)
    path = tmp_path_factory.mktemp("weak") / "weak_teacher.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gate") / "run"


def _stage(out: Path, summary: dict, stage: str) -> tuple[dict, dict]:
    rec = next(s for s in summary["stages"] if s["stage"] == stage)
    return rec, json.loads((out / rec["dir"] / "meta.json").read_text())


def _args(out: Path, ckpt: Path, *sets: str) -> list[str]:
    return ["run", "--target", "onnxruntime", "--out", str(out),
            *fast_args([f"teacher.checkpoint={ckpt}", *WEAK, "teacher.min_accuracy=0.5", *sets])]


def test_weak_teacher_stops_the_run_with_a_suggestion(run_dir, weak_ckpt):
    p = run_cli(*_args(run_dir, weak_ckpt))
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    err = p.stderr
    assert "Traceback" not in err
    assert "teacher.min_accuracy=0.5" in err and "validation split" in err
    assert "fix: adapt it first with --set teacher.finetune.epochs" in err
    assert not (run_dir / "run.json").exists()
    assert not (run_dir / "stages" / "distill").exists()  # stopped before distilling


def test_finetune_lifts_the_teacher_over_the_gate_and_is_cached(run_dir, weak_ckpt):
    sets = ("teacher.finetune.epochs=3", "teacher.finetune.lr=0.05")
    p = run_cli(*_args(run_dir, weak_ckpt, *sets))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = read_run(run_dir)
    t_rec, _ = _stage(run_dir, summary, "teacher")
    assert t_rec["cached"] is True  # the loaded checkpoint's stage is reused from the gated run
    ft_rec, ft = _stage(run_dir, summary, "teacher_finetune")
    assert ft_rec["cached"] is False
    before, after = ft["metrics"]["val_accuracy_before_finetune"], ft["metrics"]["val_accuracy"]
    assert before < 0.3 and after >= 0.5 and after > before + 0.2, (before, after)
    # run.json shows the (adapted) teacher's validation accuracy beside the student's
    teacher, student = artifact(summary, "teacher"), artifact(summary, "student")
    assert teacher["val_accuracy"] == after
    assert student["val_accuracy"] is not None
    assert any("teacher adapted for 3 epochs" in n for n in summary["notes"])

    again = run_cli(*_args(run_dir, weak_ckpt, *sets))
    assert again.returncode == 0, again.stderr[-2000:]
    summary2 = read_run(run_dir)
    ft_rec2, _ = _stage(run_dir, summary2, "teacher_finetune")
    assert ft_rec2["cached"] is True and ft_rec2["key"] == ft_rec["key"]
    assert all(s["cached"] for s in summary2["stages"])


def test_gate_after_finetune_says_so(tmp_path, weak_ckpt):
    """Still too weak after adapting: the message says it was adapted and suggests adapting longer."""
    p = run_cli(*_args(tmp_path / "run", weak_ckpt, "teacher.finetune.epochs=1", "teacher.finetune.lr=0.0001"))
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "after adapting it for 1 epochs" in p.stderr
    assert "raise teacher.finetune.epochs" in p.stderr
    assert "Traceback" not in p.stderr


def test_note_when_teacher_scores_below_the_student():
    from pipeline.stages.teacher import teacher_below_student_note

    note = teacher_below_student_note(0.42, 0.9)
    assert note and note.startswith("teacher scores below the student on this data: KD may hurt; "
                                    "consider teacher.finetune")
    assert "0.4200" in note and "0.9000" in note
    assert teacher_below_student_note(0.95, 0.9) is None
    assert teacher_below_student_note(0.9, 0.9) is None
    assert teacher_below_student_note(None, 0.9) is None


def test_distill_stage_notes_a_teacher_below_the_student(tmp_path, weak_ckpt):
    """The untrained teacher (val ~0.1) under a student trained mostly on labels: the stage warns."""
    from pipeline.recipe import load_recipe
    from pipeline.runner import Runner
    from pipeline.stages.data import run_data
    from pipeline.stages.distill import run_distill
    from pipeline.stages.teacher import run_teacher

    # A chance-level teacher: the default teacher.min_accuracy=chance would stop the run before distilling.
    recipe = load_recipe(None, [f"teacher.checkpoint={weak_ckpt}", "teacher.kwargs.width=8", "data.input_size=8",
                                "data.limit=400", "distill.epochs=3", "teacher.min_accuracy=0",
                                "distill.losses=[{name: ce, weight: 1.0}, {name: kd, weight: 0.1}]"])
    runner = Runner(tmp_path / "run")
    data = run_data(runner, recipe)
    teacher = run_teacher(runner, recipe, data)
    student = run_distill(runner, recipe, data, teacher)
    assert teacher.metrics["val_accuracy"] < student.metrics["val_accuracy"]
    notes = [n for n in student.meta["notes"] if n.startswith("teacher scores below the student on this data")]
    assert len(notes) == 1
