"""Run the bundled model on an image or a .npy array and print the top-k classes as JSON.

STANDALONE: ships inside a deployment bundle; needs only numpy and the model's runtime
(plus Pillow for image files). Checksums in SHA256SUMS are verified before any model is loaded.

    python run.py image.png            # top-5 as JSON
    python run.py sample.npy --top-k 3
    python run.py --check-samples      # run samples/*.npy and the raw files samples/raw/* (decoded and
                                       # preprocessed here) and compare with samples/expected.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from runtime import MissingRuntime, load_model, preprocess_image  # noqa: E402


def verify_checksums(root: str) -> None:
    sums = os.path.join(root, "SHA256SUMS")
    if not os.path.isfile(sums):
        raise SystemExit("error: SHA256SUMS is missing: this bundle cannot be verified")
    for line in open(sums, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        digest, name = line.split(None, 1)
        name = name.lstrip("*")
        path = os.path.normpath(os.path.join(root, name))
        if not path.startswith(os.path.abspath(root) + os.sep):
            raise SystemExit(f"error: SHA256SUMS names a path outside the bundle: {name}")
        if not os.path.isfile(path):
            raise SystemExit(f"error: {name} is missing from the bundle")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise SystemExit(f"error: checksum mismatch for {name}: the file was changed or corrupted")


def pick_model(manifest: dict) -> str:
    """On a device the built engine wins; otherwise the portable model file."""
    for name in manifest.get("device_model_files", []):
        if os.path.isfile(os.path.join(HERE, name)):
            return os.path.join(HERE, name)
    return os.path.join(HERE, manifest["model"]["file"])


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhwc" and x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[dict]:
    p = softmax(logits.astype(np.float64))
    order = np.argsort(-p)[:k]
    return [{"index": int(i), "label": labels[i] if i < len(labels) else str(i), "score": round(float(p[i]), 6),
             "logit": float(logits[i])} for i in order]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?", help="an image file or a preprocessed .npy array")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--check-samples", action="store_true", help="compare samples/ with samples/expected.json")
    ap.add_argument("--atol", type=float, default=None, help="logit tolerance (default: the manifest's)")
    ap.add_argument("--skip-checksums", action="store_true", help="do not verify SHA256SUMS (not recommended)")
    args = ap.parse_args(argv)
    if not args.skip_checksums:
        verify_checksums(HERE)
    manifest = json.load(open(os.path.join(HERE, "manifest.json"), encoding="utf-8"))
    model = load_model(pick_model(manifest), threads=args.threads,
                       precision_hint=manifest["model"].get("precision_hint"))
    labels = manifest.get("labels", [])
    layout = manifest["input"].get("layout", "nchw")
    if args.check_samples:
        expected = json.load(open(os.path.join(HERE, "samples", "expected.json"), encoding="utf-8"))
        atol = args.atol if args.atol is not None else expected.get("atol", 1e-3)
        failures = []
        for item in expected["samples"]:
            x = np.load(os.path.join(HERE, "samples", item["file"]))
            logits = model.run(to_layout(x, layout))[0]
            diff = float(np.abs(logits - np.asarray(item["logits"], dtype=np.float32)).max())
            ok = int(logits.argmax()) == item["top1"] and diff <= atol
            if not ok:
                failures.append({"file": item["file"], "top1": int(logits.argmax()), "expected_top1": item["top1"],
                                 "max_abs_diff": diff})
        # raw test files (8-bit, 16-bit, palette...: one per kind the dataset had): preprocessed here as on the
        # device, they must give the outputs of the training side's preprocessing of the same files
        raw = expected.get("raw") or []
        for item in raw:
            try:
                x = preprocess_image(os.path.join(HERE, "samples", item["file"]), manifest["preprocessing"])
            except Exception as e:  # Pillow missing, or a file it cannot read: a failed sample, said
                failures.append({"file": item["file"], "kind": item.get("kind"), "error": f"{type(e).__name__}: {e}"})
                continue
            logits = model.run(to_layout(x, layout))[0]
            diff = float(np.abs(logits - np.asarray(item["logits"], dtype=np.float32)).max())
            if int(logits.argmax()) != item["top1"] or diff > atol:
                failures.append({"file": item["file"], "kind": item.get("kind"), "top1": int(logits.argmax()),
                                 "expected_top1": item["top1"], "max_abs_diff": diff})
        print(json.dumps({"samples": len(expected["samples"]), "raw_samples": len(raw), "failures": failures,
                          "atol": atol}))
        return 1 if failures else 0
    if not args.input:
        ap.error("give an image or .npy file, or --check-samples")
    try:
        x = preprocess_image(args.input, manifest["preprocessing"])
    except MissingRuntime as e:  # one line, not a traceback: what to install
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, ValueError) as e:
        print(f"error: {args.input}: cannot be read as an image or .npy array ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 2
    logits = model.run(to_layout(x, layout))
    print(json.dumps({"input": os.path.basename(args.input), "model": os.path.basename(model.path),
                      "runtime": model.runtime, "top_k": top_k(logits[0], labels, args.top_k)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
