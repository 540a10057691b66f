#!/usr/bin/env bash
# Build and time this bundle's TensorRT engine ON THE JETSON with trtexec (TensorRT 10.x, strongly typed).
#
#   ./build_engine.sh [model.onnx] [model.plan]
#
# Input name/shape and the expected TensorRT major.minor come from manifest.json (keys input.name, input.shape or
# inputs[0].name/shape, toolchain.tensorrt_expected), looked up next to the ONNX, next to this script or one folder
# up. Environment overrides: ONNX, PLAN, MANIFEST, INPUT_NAME, INPUT_SHAPE (e.g. 1x3x32x32), BATCH (default 1),
# EXPECT_TRT, TRTEXEC, TIMES (default times.json), ALLOW_VERSION_MISMATCH=1.
# Exit codes: 0 built, 1 trtexec failed, 2 bad input or TensorRT version mismatch, 3 trtexec/TensorRT missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ONNX="${1:-${ONNX:-$HERE/model.onnx}}"
PLAN="${2:-${PLAN:-$(dirname "$ONNX")/model.plan}}"
TIMES="${TIMES:-$(dirname "$PLAN")/times.json}"
# Per-layer timings and layer information (with the ONNX node names of fused layers) for
# `python -m pipeline import-results RUN_DIR trt_profile.json` on the host.
PROFILE_JSON="$(dirname "$PLAN")/profile.json"
LAYERS_JSON="$(dirname "$PLAN")/layers.json"
SIDECAR="$(dirname "$PLAN")/trt_profile.json"
BATCH="${BATCH:-1}"

die() { echo "error: $2" >&2; exit "$1"; }

[ -f "$ONNX" ] || die 2 "$ONNX: no such ONNX file"

if [ -z "${MANIFEST:-}" ]; then
  for cand in "$(dirname "$ONNX")/manifest.json" "$HERE/manifest.json" "$HERE/../manifest.json"; do
    if [ -f "$cand" ]; then MANIFEST="$cand"; break; fi
  done
fi

# Read "name<TAB>shape<TAB>expected" from the manifest (python3 is on every JetPack image).
if [ -n "${MANIFEST:-}" ]; then
  command -v python3 >/dev/null || die 3 "python3 is needed to read $MANIFEST (or set INPUT_NAME/INPUT_SHAPE/EXPECT_TRT)"
  MANIFEST_INFO="$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
batch = int(sys.argv[2])
inp = m.get("input") or (m.get("inputs") or [{}])[0]
if isinstance(inp, str):
    inp = {"name": inp, "shape": m.get("input_shape")}
name = inp.get("name") or m.get("input_name") or ""
shape = inp.get("shape") or m.get("input_shape") or []
dims = []
for i, d in enumerate(shape):
    dims.append(str(batch) if (i == 0 and not isinstance(d, int)) or (isinstance(d, int) and d < 0) else str(d))
exp = (m.get("toolchain") or {}).get("tensorrt_expected") or ""
print("\t".join([name, "x".join(dims), ".".join(str(exp).split(".")[:2])]))
' "$MANIFEST" "$BATCH")" || die 2 "cannot read $MANIFEST"
  IFS=$'\t' read -r M_NAME M_SHAPE M_EXPECT <<<"$MANIFEST_INFO" || true
fi
INPUT_NAME="${INPUT_NAME:-${M_NAME:-}}"
INPUT_SHAPE="${INPUT_SHAPE:-${M_SHAPE:-}}"
EXPECT_TRT="${EXPECT_TRT:-${M_EXPECT:-}}"
[ -n "$INPUT_NAME" ] || die 2 "input name unknown: no manifest.json (input.name) and INPUT_NAME is not set"
[ -n "$INPUT_SHAPE" ] || die 2 "input shape unknown: no manifest.json (input.shape) and INPUT_SHAPE is not set"

# trtexec is not on PATH on JetPack: it lives in /usr/src/tensorrt/bin.
if [ -z "${TRTEXEC:-}" ]; then
  TRTEXEC="$(command -v trtexec || true)"
  [ -n "$TRTEXEC" ] || TRTEXEC=/usr/src/tensorrt/bin/trtexec
fi
[ -x "$TRTEXEC" ] || die 3 "trtexec not found ($TRTEXEC); install JetPack's TensorRT (sudo apt install tensorrt) or set TRTEXEC"

# Installed TensorRT major.minor: trtexec's banner "[TensorRT v100300]", else dpkg, else the python module.
installed=""
banner="$("$TRTEXEC" --help 2>&1 | sed -n 's/.*TensorRT v\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)"
if [ -n "$banner" ]; then
  if [ "$banner" -ge 10000 ]; then
    installed="$((banner / 10000)).$(((banner / 100) % 100))"
  else
    installed="$((banner / 1000)).$(((banner / 100) % 10))"
  fi
fi
if [ -z "$installed" ] && command -v dpkg-query >/dev/null; then
  installed="$(dpkg-query -W -f='${Version}' libnvinfer-bin 2>/dev/null | cut -d. -f1,2 || true)"
fi
if [ -z "$installed" ] && command -v python3 >/dev/null; then
  installed="$(python3 -c 'import tensorrt; print(".".join(tensorrt.__version__.split(".")[:2]))' 2>/dev/null || true)"
fi

jetpack_for() {
  case "$1" in
    10.3) echo "JetPack 6.1 or 6.2 (L4T r36.4)" ;;
    8.6) echo "JetPack 6.0 (L4T r36.3)" ;;
    8.5) echo "JetPack 5.1.x (L4T r35.2-r35.6)" ;;
    8.4) echo "JetPack 5.0.2 (L4T r35.1)" ;;
    8.2) echo "JetPack 4.6.x (L4T r32.6-r32.7)" ;;
    *) echo "the JetPack release that ships TensorRT $1" ;;
  esac
}

if [ -z "$EXPECT_TRT" ]; then
  echo "warning: no expected TensorRT version (manifest toolchain.tensorrt_expected / EXPECT_TRT); not checked" >&2
elif [ "$installed" != "$EXPECT_TRT" ]; then
  msg="TensorRT version mismatch: this bundle expects TensorRT $EXPECT_TRT but trtexec is TensorRT ${installed:-unknown}. Install $(jetpack_for "$EXPECT_TRT"), which ships TensorRT $EXPECT_TRT"
  if [ "${ALLOW_VERSION_MISMATCH:-0}" != "1" ]; then
    die 2 "$msg (or set ALLOW_VERSION_MISMATCH=1)."
  fi
  echo "warning: $msg; continuing (ALLOW_VERSION_MISMATCH=1)." >&2
fi

echo "building $PLAN from $ONNX with $TRTEXEC (TensorRT ${installed:-unknown}), input $INPUT_NAME:$INPUT_SHAPE" >&2
set -x
"$TRTEXEC" --onnx="$ONNX" --stronglyTyped --saveEngine="$PLAN" --shapes="$INPUT_NAME:$INPUT_SHAPE" \
  --avgRuns=100 --percentile=50,90,99 --useCudaGraph --noDataTransfers --exportTimes="$TIMES" \
  --profilingVerbosity=detailed --separateProfileRun --exportProfile="$PROFILE_JSON" --exportLayerInfo="$LAYERS_JSON" \
  || { set +x; die 1 "trtexec failed"; }
{ set +x; } 2>/dev/null
python3 -c '
import hashlib, json, os, sys
onnx, sidecar, trt, dev = sys.argv[1:5]
h = hashlib.sha256(open(onnx, "rb").read()).hexdigest()
json.dump({"kind": "trt-layer-profile", "onnx": os.path.basename(onnx), "onnx_sha256": h, "profile": "profile.json",
           "layers": "layers.json", "times": os.path.basename(sys.argv[5]), "tensorrt_version": trt, "device": dev},
          open(sidecar, "w"), indent=1)
' "$ONNX" "$SIDECAR" "${installed:-unknown}" "$(tr -d '\0' </proc/device-tree/model 2>/dev/null || uname -n)" "$TIMES" \
  || echo "warning: $SIDECAR not written (the layer profile cannot be imported without it)" >&2
echo "engine: $PLAN  per-inference times: $TIMES  layer profile: $PROFILE_JSON, $LAYERS_JSON ($SIDECAR)" >&2
