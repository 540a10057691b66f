"""Distillation on several processes: DistributedDataParallel under torchrun (gloo on CPU).

`distill.nproc > 1` (or `run --nproc N`) makes the orchestrator call :func:`run_distill_ddp`
instead of :func:`pipeline.stages.distill.run_distill`. It is the same cached ``distill``
stage (same inputs, same config plus ``nproc``), run as::

    python -m torch.distributed.run --standalone --nproc_per_node N -m pipeline.ddp --job JOB.json

- every rank reads the data artifact; a seeded ``DistributedSampler`` (``set_epoch`` each epoch)
  gives each rank its share of the training split;
- ``distill.batch_size`` stays the *global* batch (each rank takes ``ceil(batch / N)``), so the
  learning rate of a recipe means the same with 1 or N processes;
- the student is wrapped in ``DistributedDataParallel``; the frozen teacher is not (it has no
  gradients to synchronise); gradients of trainable loss parts (FitNet connectors) are averaged
  by hand;
- selection is identical on every rank: each rank scores its shard of the validation split with
  rank 0's BatchNorm statistics, the counts are summed (``all_reduce``), so every rank sees the
  same validation accuracy and keeps the same epoch;
- rank 0 alone writes the model (into the stage's temporary folder that the runner renames when
  the stage completes) and reports progress; the parent process records the metrics exactly as
  the single-process stage does.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

PROGRESS = "@@pipeline-ddp-progress "
TOOLS = ["torch", "numpy"]
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- parent side


def threads_per_rank(nproc: int) -> int:
    """Split this host's cores (or an explicit OMP_NUM_THREADS) between the ranks."""
    try:
        total = int(os.environ.get("OMP_NUM_THREADS", "")) or (os.cpu_count() or 1)
    except ValueError:
        total = os.cpu_count() or 1
    return max(1, total // nproc)


def run_distill_ddp(runner, recipe, data, teacher):
    """The ``distill`` stage, trained by ``distill.nproc`` DDP processes launched with torchrun."""
    from pipeline.runner import StageContext
    from pipeline.stages import distill as single
    from pipeline.stages.data import read_splits
    from pipeline.stages.models import load_model
    from pipeline.train import History

    cfg, scfg = recipe.distill, recipe.student
    nproc = cfg.nproc

    def fn(ctx: StageContext) -> None:
        from pipeline.models.spec import build_model
        from pipeline.stages.teacher import check_accepts_input

        splits = read_splits(data)
        c, n = splits.input_shape[0], splits.num_classes
        # Bad model/data combinations stop here with one clear message, before any process starts.
        import torch

        from pipeline.models.onnx_check import check_exportable

        probe = check_accepts_input(build_model(scfg.model, scfg.kwargs, c, n), splits.x_train, n, "student",
                                    scfg.model, scfg.output)
        check_exportable(probe, torch.from_numpy(splits.x_train[:1]), recipe.export.opset, "student", scfg.model)
        with tempfile.TemporaryDirectory(prefix="pipeline-ddp-") as tmp:
            job_dir = Path(tmp)
            job = {"recipe": recipe.model_dump(mode="json"), "data_dir": str(Path(data.dir).resolve()),
                   "teacher_dir": str(Path(teacher.dir).resolve()), "out_dir": str(Path(ctx.dir).resolve()),
                   "job_dir": str(job_dir), "threads": threads_per_rank(nproc), "timeout_s": 1800}
            (job_dir / "job.json").write_text(json.dumps(job))
            launch(job_dir, nproc, job["threads"], runner)
            result = json.loads((job_dir / "result.json").read_text())
        student = load_model(ctx.dir)
        hist = History(epochs=result["history"], best_epoch=result["best_epoch"],
                       best_val_accuracy=result["best_val_accuracy"])
        single.describe_student(ctx, student, splits, hist, result["teacher_outputs_cached"], cfg, scfg, teacher)
        ctx.metrics.update(nproc=nproc, ddp={k: result[k] for k in ("backend", "world_size", "per_rank_batch",
                                                                    "global_batch", "steps_per_epoch")})
        ctx.notes.append(f"distilled with DDP on {nproc} processes ({result['backend']}, global batch "
                         f"{result['global_batch']} = {nproc} x {result['per_rank_batch']})")
        if nproc > (os.cpu_count() or 1):
            ctx.notes.append(f"warning: distill.nproc={nproc} exceeds this host's {os.cpu_count()} cores: "
                             "the processes share cores and run slower than fewer would")

    from pipeline.device import recipe_key

    config = {"distill": cfg.model_dump(mode="json"), "student": scfg.model_dump(mode="json"),
              "seed": recipe.seed, "augment": recipe.data.augment, "hflip": recipe.data.hflip,
              "compute": recipe_key(recipe)}
    # The ranks run distill.py's loss closure, the loss terms and train.py's helpers: the import closure of
    # this module and of `single` (pipeline.code_closure) is in the key.
    from pipeline.models.spec import spec_fingerprint

    return runner.stage("distill", fn, config=config, inputs={"data": data, "teacher": teacher}, tools=TOOLS,
                        extra_key={"ddp": True, "student_code": spec_fingerprint(recipe.student.model)},
                        code=(single,),
                        label=f"distill [ddp x{nproc}]")


def launch(job_dir: Path, nproc: int, threads: int, runner=None) -> None:
    """Run torchrun on the job; forward rank 0's progress; turn a failure into one PipelineError."""
    from pipeline.errors import PipelineError

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--max-restarts=0", "-m", "pipeline.ddp", "--job", str(job_dir / "job.json")]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PIPELINE_FAULT_STAGE", None)  # fault injection targets the parent's stage runner
    log_path = job_dir / "torchrun.log"
    console = getattr(runner, "console", None)
    show = console is not None and os.environ.get("PIPELINE_QUIET") != "1"
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, env=env, bufsize=1)
    except OSError as e:
        raise PipelineError(f"could not start torchrun for distill.nproc={nproc}: {e}",
                            hint="set distill.nproc=1 to distill in one process") from None
    try:
        with open(log_path, "w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                if line.startswith(PROGRESS) and show and console is not None:
                    p = json.loads(line[len(PROGRESS):])
                    console.print(f"[dim]  epoch {p['epoch'] + 1}/{p['epochs']}  loss {p['loss']:.4f}  "
                                  f"val {p['val_accuracy']:.4f}[/dim]")
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if rc == 0 and (job_dir / "result.json").is_file():
        return
    raise _failure(job_dir, nproc, rc, log_path, runner)


def _failure(job_dir: Path, nproc: int, rc: int, log_path: Path, runner):
    """The most specific error: a rank's own PipelineError if one was raised, else torchrun's exit."""
    import shutil

    from pipeline import errors

    kept = None
    if runner is not None:
        kept = Path(runner.out) / "distill-ddp.log"
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, kept)
        except OSError:
            kept = None
    where = f"the ranks' output is in {kept}" if kept else "rerun with distill.nproc=1 to see the error directly"
    reports = [json.loads(p.read_text()) for p in sorted(job_dir.glob("error-rank*.json"))]
    # A rank's own PipelineError first: the other ranks then only see a broken connection.
    reports.sort(key=lambda r: (not isinstance(getattr(errors, r.get("type", ""), None), type), r.get("rank", 0)))
    if reports:
        rep = reports[0]
        cls = getattr(errors, rep.get("type", ""), None)
        if isinstance(cls, type) and issubclass(cls, errors.PipelineError):
            return cls(rep["message"], hint=rep.get("hint"), exit_code=rep.get("exit_code"))
        return errors.PipelineError(f"DDP distillation failed on rank {rep.get('rank')}: {rep['message']}",
                                    hint=where)
    tail = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:] \
        if log_path.is_file() else []
    return errors.PipelineError(
        f"DDP distillation with distill.nproc={nproc} failed (torchrun exit code {rc})"
        + (f": {tail[0][:300]}" if tail else ""),
        hint=f"{where}; set distill.nproc=1 to distill in one process")


# --------------------------------------------------------------------------- rank side


class _Dir:
    """Just enough of a StageResult for read_splits/load_model in a rank."""

    def __init__(self, d: str):
        self.dir = Path(d)

    def path(self, name: str) -> Path:
        return self.dir / name


def _broadcast_buffers(model, src: int = 0) -> None:
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, src)


def _val_correct(model, x, y, rank: int, world: int, compute=None, batch: int = 256) -> tuple[int, int]:
    import numpy as np

    from pipeline.train import predict

    idx = np.arange(rank, len(y), world)  # this rank's shard, read a batch at a time
    correct = 0
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        correct += int((predict(model, x[b], compute=compute).argmax(1) == y[b]).sum())
    return correct, len(idx)


def ddp_fit(ddp_model, student, x_train, y_train, x_val, y_val, *, epochs: int, lr: float, batch_size: int,
            momentum: float, weight_decay: float, seed: int, loss_fn=None, extra_params=(), do_augment: bool = False,
            hflip: bool = False, rank: int = 0, world: int = 1, report=None, augmenter=None, compute=None):
    """`pipeline.train.fit` for DDP: same optimiser, schedule and best-validation selection.

    `batch_size` is the global batch. Returns (History, per-rank batch, steps per epoch).
    """
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.utils.data import DistributedSampler

    from pipeline.data.augment import Augmenter
    from pipeline.data.store import as_split
    from pipeline.device import resolve
    from pipeline.train import History, set_seed, train_batches

    compute = compute or resolve("cpu", "fp32", channels_last=False)
    if augmenter is None and do_augment:
        augmenter = Augmenter("padcrop", int(x_train.shape[-1]), hflip)
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)  # augmentation differs per rank, reproducibly
    split = as_split(x_train)
    sampler: DistributedSampler = DistributedSampler(range(len(split)), num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]  # a range is a valid sized sequence
    local = max(1, math.ceil(batch_size / world))
    per_epoch = max(1, math.ceil(sampler.num_samples / local))
    extra_params = list(extra_params)
    params = list(student.parameters()) + extra_params
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * per_epoch),
                                                pct_start=0.15, anneal_strategy="cos") if epochs else None
    hist = History()

    def val_accuracy() -> float:
        _broadcast_buffers(student)  # BatchNorm statistics of rank 0 on every rank
        c, n = _val_correct(student, x_val, y_val, rank, world, compute)
        t = torch.tensor([c, n], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0]) / max(float(t[1]), 1.0)

    best_state = copy.deepcopy(student.state_dict())
    if epochs == 0:
        hist.best_val_accuracy = val_accuracy()
        return hist, local, per_epoch
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        order = np.asarray(list(iter(sampler)), dtype=np.int64)
        total, count = 0.0, 0
        for rows, yb, idx in train_batches(split, y_train, [order[i:i + local] for i in range(0, len(order), local)]):
            xb = split.to_model(rows.to(compute.device))
            yb = yb.to(compute.device)
            if augmenter is not None:
                xb = augmenter.apply(xb, augmenter.draw(len(idx), gen))
            xb = compute.input(xb)
            with compute.odd_batch_guard(len(idx)):  # see pipeline/device.py
                with compute.autocast():
                    if loss_fn is None:
                        loss = F.cross_entropy(ddp_model(xb).float(), yb)
                    else:
                        loss, _ = loss_fn(ddp_model, xb, yb, idx, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the student's gradients across ranks here
            for p in extra_params:  # trainable loss parts are outside DDP: average them by hand
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        sums = torch.tensor([total, count], dtype=torch.float64)
        dist.all_reduce(sums)
        mean_loss = float(sums[0]) / max(float(sums[1]), 1.0)
        val_acc = val_accuracy()
        hist.epochs.append({"epoch": epoch, "loss": mean_loss, "val_accuracy": val_acc})
        if val_acc > hist.best_val_accuracy:  # identical on every rank: same sums
            hist.best_val_accuracy, hist.best_epoch = val_acc, epoch
            best_state = copy.deepcopy(student.state_dict())
        if report is not None:
            report({"epoch": epoch, "epochs": epochs, "loss": mean_loss, "val_accuracy": val_acc})
    student.load_state_dict(best_state)
    return hist, local, per_epoch


def worker(job: dict) -> None:
    """One rank: rebuild the recipe, distill with DDP, rank 0 writes the model and result.json."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.models.spec import build_model
    from pipeline.recipe import Recipe
    from pipeline.stages.data import read_splits
    from pipeline.stages.distill import make_kd_loss, needs_features
    from pipeline.stages.models import load_model, save_model

    from pipeline.data.augment import augmenter_for
    from pipeline.device import from_recipe

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(job["threads"]))
    recipe = Recipe.model_validate(job["recipe"])
    cfg, scfg = recipe.distill, recipe.student
    compute = from_recipe(recipe).__class__(**{**vars(from_recipe(recipe)), "threads": int(job["threads"])})
    if compute.cuda:  # one GPU per rank
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        compute = compute.__class__(**{**vars(compute), "device": torch.device("cuda", torch.cuda.current_device())})
    # nccl between GPUs, gloo between CPU processes
    dist.init_process_group("nccl" if compute.cuda else "gloo", timeout=timedelta(seconds=int(job["timeout_s"])))
    try:
        splits = read_splits(_Dir(job["data_dir"]))  # type: ignore[arg-type]  # duck-typed: only .path() is used
        c, n = splits.input_shape[0], splits.num_classes
        torch.manual_seed(recipe.seed)  # same initial student on every rank (DDP also broadcasts rank 0's)
        student = build_model(scfg.model, scfg.kwargs, c, n)
        if scfg.checkpoint:  # a pretrained student: the same weights (and head replacement) on every rank
            from pipeline.models.checkpoints import load_into

            student = load_into(student, scfg.checkpoint, allow_pickle=scfg.allow_pickle, kwargs=scfg.kwargs,
                                field="student", head=scfg.head)
        from pipeline.stages.teacher import check_accepts_input

        student = check_accepts_input(student, splits.x_train, n, "student", scfg.model, scfg.output)
        t_model = load_model(Path(job["teacher_dir"]))
        t_model.eval()
        for p in t_model.parameters():
            p.requires_grad_(False)
        compute.prepare(t_model)
        compute.prepare(student)
        cache = cfg.cache_teacher_outputs and not recipe.data.augment and not needs_features(cfg.losses)
        loss_fn, criterion = make_kd_loss(student, t_model, cfg.losses, splits.x_train, cache, compute)
        for p in criterion.parameters():  # trainable loss parts (FitNet connectors) start equal on every rank
            dist.broadcast(p.data, 0)
        from pipeline.models.outputs import logits_path

        # broadcasts rank 0's weights and buffers; outputs other than the selected logits (an aux head) get no
        # gradient, which DDP only tolerates when told to look for unused parameters
        ddp_model = DistributedDataParallel(student, device_ids=[compute.device.index] if compute.cuda else None,
                                            find_unused_parameters=bool(logits_path(student)))

        def report(p: dict) -> None:
            print(PROGRESS + json.dumps(p), flush=True)

        try:
            hist, local, per_epoch = ddp_fit(
                ddp_model, student, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=cfg.epochs,
                lr=cfg.lr, batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                seed=recipe.seed, loss_fn=loss_fn, extra_params=list(criterion.parameters()),
                rank=rank, world=world, report=report if rank == 0 else None,
                augmenter=augmenter_for(recipe.data), compute=compute)
        finally:
            criterion.close()
        student.to("cpu", memory_format=torch.contiguous_format)
        if rank == 0:
            student.eval()
            save_model(student, Path(job["out_dir"]), scfg.model, scfg.kwargs, c, n)
            result = {"history": hist.epochs, "best_epoch": hist.best_epoch,
                      "best_val_accuracy": hist.best_val_accuracy, "teacher_outputs_cached": cache,
                      "backend": dist.get_backend(), "world_size": world, "per_rank_batch": local,
                      "global_batch": local * world, "steps_per_epoch": per_epoch}
            tmp = Path(job["job_dir"]) / "result.json.tmp"
            tmp.write_text(json.dumps(result))
            os.replace(tmp, Path(job["job_dir"]) / "result.json")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ddp",
                                 description="one DDP rank of the distill stage (started by torchrun)")
    ap.add_argument("--job", required=True, help="job.json written by run_distill_ddp")
    args = ap.parse_args(argv)
    os.environ["PIPELINE_QUIET"] = "1"  # progress goes through rank 0's report lines, not tqdm
    job = json.loads(Path(args.job).read_text())
    rank = int(os.environ.get("RANK", "0"))
    try:
        worker(job)
        return 0
    except Exception as e:  # one report per rank; the parent turns it into one clear line
        from pipeline.errors import PipelineError

        rep = {"rank": rank, "type": type(e).__name__, "message": getattr(e, "message", None) or f"{type(e).__name__}: {e}"}
        if isinstance(e, PipelineError):
            rep.update(hint=e.hint, exit_code=e.exit_code)
        else:
            traceback.print_exc()  # into the torchrun log the parent keeps on failure
        (Path(job["job_dir"]) / f"error-rank{rank}.json").write_text(json.dumps(rep))
        return 1


if __name__ == "__main__":
    sys.exit(main())
