"""Load an exported model with its own runtime and run it on float32 arrays.

STANDALONE: this file is copied into deployment bundles, where this project is not installed.
It may import only the standard library, numpy and the runtime package of the model it loads
(onnxruntime, openvino, ai_edge_litert, tensorrt + cuda-python). PIL is optional
(``preprocess_image`` on image files only; ``.npy`` inputs always work).

    model = load_model("model.xml", threads=2)          # OpenVINO, f32 precision hint by default
    logits = model.run(x)                               # x: float32, model.layout, batch first
    runtime_precisions(model)   # {"Convolution": Counter({"u8": 20}), "FullyConnected": ...}

The runtime is chosen by the file suffix:
    .onnx           onnxruntime, CPUExecutionProvider
    .xml (+ .bin)   openvino, CPU device
    .tflite         ai_edge_litert Interpreter (quantized int8/uint8 inputs/outputs handled here)
    .plan/.engine   tensorrt (needs an NVIDIA GPU, the tensorrt package and cuda-python)
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterable

import numpy as np

__all__ = [
    "RuntimeLoadError",
    "MissingRuntime",
    "Model",
    "load_model",
    "runtime_for_path",
    "runtime_precisions",
    "preprocess_image",
    "SUFFIX_RUNTIME",
    "cpu_isa",
]

SUFFIX_RUNTIME = {
    ".onnx": "onnxruntime",
    ".xml": "openvino",
    ".tflite": "litert",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
}

# Package a runtime needs, for error messages and requirements.txt.
RUNTIME_PACKAGE = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "litert": "ai-edge-litert",
    "tensorrt": "tensorrt (with cuda-python)",
}

_SHORT_DTYPE = {
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float64": "f64",
    "int8": "i8",
    "uint8": "u8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "bool": "boolean",
}


class RuntimeLoadError(RuntimeError):
    """The model cannot be loaded or run by its runtime (bad file, unsupported shape...)."""

    exit_code = 2


class MissingRuntime(RuntimeLoadError):
    """The runtime package for this model is not installed (or has no device to run on)."""

    exit_code = 3


def runtime_for_path(path: str | os.PathLike) -> str:
    """Name of the runtime that ``load_model`` uses for ``path`` (by suffix)."""
    suffix = os.path.splitext(str(path))[1].lower()
    try:
        return SUFFIX_RUNTIME[suffix]
    except KeyError:
        raise RuntimeLoadError(
            f"{path}: unknown model suffix {suffix!r}; expected one of {', '.join(sorted(SUFFIX_RUNTIME))}"
        ) from None


def _guess_layout(shape: tuple[int, ...]) -> str | None:
    """nchw / nhwc from a 4D shape (channel dim 1 or 3 or 4), None for other ranks."""
    if len(shape) != 4:
        return None
    c1, c3 = shape[1], shape[3]
    small = (1, 2, 3, 4)
    if c1 in small and c3 not in small:
        return "nchw"
    if c3 in small and c1 not in small:
        return "nhwc"
    return "nchw"


def _dim(d: Any) -> int:
    """A concrete dimension or -1 for a dynamic/symbolic one."""
    try:
        v = int(d)
    except (TypeError, ValueError):
        return -1
    return v if v >= 0 else -1


class Model:
    """A loaded model. Subclasses implement ``_run``; ``run`` checks the input and returns float32."""

    runtime: str = "?"
    runtime_version: str = "?"

    def __init__(self, path: str, *, threads: int | None, precision_hint: str | None):
        self.path = str(path)
        self.threads = threads
        self.precision_hint = precision_hint
        self.input_name: str = ""
        self.input_shape: tuple[int, ...] = ()  # batch first; -1 for a dynamic dimension
        self.input_dtype: str = "float32"  # dtype callers pass to run()
        self.layout: str | None = None  # "nchw" / "nhwc" / None (not an image tensor)
        self.output_name: str = ""
        self.info: dict[str, Any] = {}

    # -- public ---------------------------------------------------------------------------
    @property
    def dynamic_batch(self) -> bool:
        return bool(self.input_shape) and self.input_shape[0] == -1

    def concrete_input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The input shape for ``batch``; raises when a non-batch dimension is dynamic."""
        if not self.input_shape:
            raise RuntimeLoadError(f"{self.path}: input {self.input_name!r} has no known shape")
        rest = self.input_shape[1:]
        if any(d < 0 for d in rest):
            raise RuntimeLoadError(
                f"{self.path}: input {self.input_name!r} has dynamic dimensions {list(self.input_shape)}; "
                "pass an input array (e.g. --input-npy) with the shape to use"
            )
        return (int(batch),) + tuple(rest)

    def example_input(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A deterministic random input of the right shape and dtype."""
        shape = self.concrete_input_shape(batch)
        rng = np.random.default_rng(seed)
        return rng.standard_normal(shape).astype(self.input_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output as float32."""
        x = np.asarray(x)
        if self.input_shape and x.ndim != len(self.input_shape):
            raise ValueError(
                f"input has rank {x.ndim} (shape {list(x.shape)}), model {self.path} expects rank "
                f"{len(self.input_shape)} {list(self.input_shape)} ({self.layout or 'no layout'})"
            )
        if self.input_shape:
            for i, (got, want) in enumerate(zip(x.shape, self.input_shape)):
                if i > 0 and want >= 0 and got != want:
                    raise ValueError(
                        f"input shape {list(x.shape)} does not match the model's {list(self.input_shape)}"
                        f" (layout {self.layout}); dimension {i} should be {want}"
                    )
        if x.dtype != np.dtype(self.input_dtype):
            x = x.astype(self.input_dtype)
        x = np.ascontiguousarray(x)
        out = self._run(x)
        return np.asarray(out, dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary of the loaded model."""
        return {
            "path": self.path,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "input_name": self.input_name,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "layout": self.layout,
            "output_name": self.output_name,
            "info": self.info,
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {os.path.basename(self.path)} runtime={self.runtime} {self.runtime_version} "
            f"input={self.input_name}{list(self.input_shape)} {self.input_dtype} {self.layout}>"
        )


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


class OnnxRuntimeModel(Model):
    runtime = "onnxruntime"

    def __init__(self, path: str, *, threads: int | None, precision_hint: str | None, optimize: bool = True):
        super().__init__(path, threads=threads, precision_hint=precision_hint)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingRuntime(f"{path}: onnxruntime is not installed ({e}); pip install onnxruntime") from None
        self.runtime_version = ort.__version__
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if not optimize:
            # No graph fusions: a QDQ model runs as DequantizeLinear then float ops, the exact fake-quant
            # numerics, whatever integer kernels (AVX2, VNNI, ...) this CPU has.
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise RuntimeLoadError(f"{path}: onnxruntime cannot load the model: {e}") from None
        providers = self.session.get_providers()
        if "CPUExecutionProvider" not in providers:
            raise RuntimeLoadError(f"{path}: onnxruntime did not enable CPUExecutionProvider (got {providers})")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RuntimeLoadError(f"{path}: {len(inputs)} inputs; only single-input models are supported")
        inp = inputs[0]
        self.input_name = inp.name
        self.input_shape = tuple(_dim(d) for d in inp.shape)
        self.input_dtype = _ORT_TYPES.get(inp.type, "float32")
        self.layout = _guess_layout(self.input_shape)
        outs = self.session.get_outputs()
        self.output_name = outs[0].name
        self.info = {
            "providers": providers,
            "intra_op_num_threads": int(threads) if threads else None,
            "graph_optimizations": "enabled" if optimize else "disabled (exact fake-quant numerics)",
            "precision_hint": None,
            "precision_hint_note": "onnxruntime runs the precisions stored in the graph" if precision_hint else None,
            "outputs": [o.name for o in outs],
            "native_input_dtype": self.input_dtype,
        }

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


# ---------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------
_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8", "i32": "int32", "i64": "int64"}


def _ov_str(v: Any) -> str:
    """String value of an OVAny / property."""
    if hasattr(v, "astype"):
        try:
            return str(v.astype(str))
        except Exception:  # pragma: no cover - depends on OpenVINO version
            pass
    if hasattr(v, "value"):
        return str(v.value)
    return str(v)


class OpenVINOModel(Model):
    runtime = "openvino"

    def __init__(self, path: str, *, threads: int | None, precision_hint: str | None):
        super().__init__(path, threads=threads, precision_hint=precision_hint)
        try:
            import openvino as ov
        except ImportError as e:
            raise MissingRuntime(f"{path}: openvino is not installed ({e}); pip install openvino") from None
        full = ov.get_version()
        self.runtime_version = full.split("-")[0]
        bin_path = os.path.splitext(path)[0] + ".bin"
        if not os.path.exists(bin_path):
            raise RuntimeLoadError(f"{path}: the weights file {os.path.basename(bin_path)} is missing beside it")
        core = ov.Core()
        # On CPUs with bf16 support OpenVINO (2026.4) silently runs bf16; f32 is the honest default.
        hint = (precision_hint or "f32").lower()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if hint not in ("default", "auto", "none"):
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            ov_model = core.read_model(path)
            self.compiled = core.compile_model(ov_model, "CPU", config)
        except Exception as e:
            raise RuntimeLoadError(f"{path}: openvino cannot compile the model on CPU: {e}") from None
        if len(self.compiled.inputs) != 1:
            raise RuntimeLoadError(
                f"{path}: {len(self.compiled.inputs)} inputs; only single-input models are supported"
            )
        port = self.compiled.inputs[0]
        self.input_name = port.get_any_name()
        pshape = port.get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in pshape)
        et = port.get_element_type().get_type_name()
        self.input_dtype = _OV_TYPES.get(et, "float32")
        self.layout = _guess_layout(self.input_shape)
        self.output_name = self.compiled.outputs[0].get_any_name()
        self.request = self.compiled.create_infer_request()

        def prop(name: str) -> str | None:
            try:
                return _ov_str(self.compiled.get_property(name))
            except Exception:  # best effort: a property this OpenVINO build does not report is recorded as None
                return None

        effective_hint = prop("INFERENCE_PRECISION_HINT")
        self.info = {
            "device": "CPU",
            "build": full,
            "precision_hint": config.get("INFERENCE_PRECISION_HINT", "default"),
            "inference_precision": _SHORT_DTYPE.get(_ov_precision_name(effective_hint), effective_hint),
            "threads_effective": _int_or_none(prop("INFERENCE_NUM_THREADS")),
            "num_streams": prop("NUM_STREAMS"),
            "performance_hint": prop("PERFORMANCE_HINT"),
            "outputs": [o.get_any_name() for o in self.compiled.outputs],
        }
        try:
            self.info["device_name"] = _ov_str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        except Exception:  # pragma: no cover
            pass

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


def _ov_precision_name(s: str | None) -> str:
    """'<Type: 'float32'>' / 'f32' / 'float32' -> 'float32'."""
    if not s:
        return ""
    s = s.strip()
    if "'" in s:
        s = s.split("'")[1]
    return {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(s, s)


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# LiteRT (TFLite)
# ---------------------------------------------------------------------------------------------
def _quant_params(detail: dict) -> tuple[np.ndarray, np.ndarray, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float32)
    zps = np.asarray(qp.get("zero_points", []), dtype=np.int64)
    axis = int(qp.get("quantized_dimension", 0))
    if scales.size == 0:
        scale, zp = detail.get("quantization", (0.0, 0))
        if scale:
            scales = np.asarray([scale], dtype=np.float32)
            zps = np.asarray([zp], dtype=np.int64)
    return scales, zps, axis


def _bcast(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


class LiteRTModel(Model):
    runtime = "litert"

    def __init__(self, path: str, *, threads: int | None, precision_hint: str | None):
        super().__init__(path, threads=threads, precision_hint=precision_hint)
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise MissingRuntime(f"{path}: ai-edge-litert is not installed ({e}); pip install ai-edge-litert") from None
        self._Interpreter = Interpreter
        self.runtime_version = getattr(ai_edge_litert, "__version__", "unknown")
        self._make_interpreter()
        d = self._in
        self.input_name = d["name"]
        sig = d.get("shape_signature")
        sig = d["shape"] if sig is None or len(sig) == 0 else sig
        self.input_shape = tuple(int(v) if int(v) >= 0 else -1 for v in sig)
        self._native_in_dtype = np.dtype(d["dtype"])
        self._native_out_dtype = np.dtype(self._out["dtype"])
        self._in_q = _quant_params(d) if self._native_in_dtype in (np.int8, np.uint8, np.int16) else None
        self._out_q = _quant_params(self._out) if self._native_out_dtype in (np.int8, np.uint8, np.int16) else None
        if self._in_q is not None and self._in_q[0].size == 0:
            self._in_q = None
        if self._out_q is not None and self._out_q[0].size == 0:
            self._out_q = None
        # Callers always pass float32 when the input is quantized; other dtypes are passed through.
        self.input_dtype = "float32" if (self._in_q is not None or self._native_in_dtype == np.float32) else str(
            self._native_in_dtype
        )
        self.layout = _guess_layout(self.input_shape)
        self.output_name = self._out["name"]

        def qinfo(q: tuple | None, dtype: np.dtype) -> dict | None:
            if q is None:
                return None
            scales, zps, axis = q
            return {
                "dtype": str(dtype),
                "scale": float(scales[0]) if scales.size == 1 else [float(s) for s in scales],
                "zero_point": int(zps[0]) if zps.size == 1 else [int(z) for z in zps],
                "axis": axis if scales.size > 1 else None,
            }

        self.info = {
            "num_threads": int(threads) if threads else None,
            "precision_hint": None,
            "native_input_dtype": str(self._native_in_dtype),
            "native_output_dtype": str(self._native_out_dtype),
            "input_quantization": qinfo(self._in_q, self._native_in_dtype),
            "output_quantization": qinfo(self._out_q, self._native_out_dtype),
            "delegated": self._delegated(),
        }

    def _make_interpreter(self) -> None:
        try:
            kwargs: dict[str, Any] = {"model_path": self.path}
            if self.threads:
                kwargs["num_threads"] = int(self.threads)
            self.interpreter = self._Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except Exception as e:
            raise RuntimeLoadError(f"{self.path}: LiteRT cannot load the model: {e}") from None
        ins = self.interpreter.get_input_details()
        if len(ins) != 1:
            raise RuntimeLoadError(f"{self.path}: {len(ins)} inputs; only single-input models are supported")
        self._in = ins[0]
        self._out = self.interpreter.get_output_details()[0]
        self._current_shape = tuple(int(v) for v in self._in["shape"])

    def _delegated(self) -> bool | None:
        try:
            return any(op.get("op_name") == "DELEGATE" for op in self.interpreter._get_ops_details())
        except Exception:  # private API; absent in some versions
            return None

    def _resize(self, shape: tuple[int, ...]) -> None:
        try:
            self.interpreter.resize_tensor_input(self._in["index"], list(shape))
            self.interpreter.allocate_tensors()
        except Exception as e:  # a failed resize: the interpreter is rebuilt and the error re-raised below
            # A failed resize leaves the interpreter unusable: rebuild it at its original shape.
            self._make_interpreter()
            hint = ""
            if self.input_shape and self.input_shape[0] != -1:
                hint = (
                    f"; the model has a fixed batch of {self.input_shape[0]}: convert it with a dynamic batch "
                    "(litert_torch.convert(..., dynamic_shapes=...) with a sample batch > 1) or use batch "
                    f"{self.input_shape[0]}"
                )
            raise RuntimeLoadError(f"{self.path}: cannot resize the LiteRT input to {list(shape)}: {e}{hint}") from None
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._current_shape = tuple(shape)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != self._current_shape:
            self._resize(tuple(x.shape))
        if self._in_q is not None:
            scales, zps, axis = self._in_q
            info = np.iinfo(self._native_in_dtype)
            q = np.round(x / _bcast(scales, axis, x.ndim)) + _bcast(zps, axis, x.ndim)
            x = np.clip(q, info.min, info.max).astype(self._native_in_dtype)
        elif x.dtype != self._native_in_dtype:
            x = x.astype(self._native_in_dtype)
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if self._out_q is not None:
            scales, zps, axis = self._out_q
            y = (y.astype(np.float32) - _bcast(zps, axis, y.ndim).astype(np.float32)) * _bcast(scales, axis, y.ndim)
        return y


# ---------------------------------------------------------------------------------------------
# TensorRT (device only)
# ---------------------------------------------------------------------------------------------
def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        return None


class TensorRTModel(Model):
    """A serialized TensorRT engine run through the TensorRT 10 tensor-address API and cuda-python.

    Engines are tied to a GPU model and TensorRT version: build them on the device that runs them.
    ``run`` copies the input to the GPU, enqueues, copies the first output back and synchronizes,
    so the latency it measures includes the transfers (trtexec --noDataTransfers does not).
    """

    runtime = "tensorrt"

    def __init__(self, path: str, *, threads: int | None, precision_hint: str | None):
        super().__init__(path, threads=threads, precision_hint=precision_hint)
        try:
            import tensorrt as trt
        except ImportError as e:
            raise MissingRuntime(
                f"{path}: TensorRT engines run only on an NVIDIA GPU with the tensorrt package ({e}); "
                "on Jetson it comes with JetPack (python3-libnvinfer)"
            ) from None
        cudart = _import_cudart()
        if cudart is None:
            raise MissingRuntime(f"{path}: running a TensorRT engine needs cuda-python (pip install cuda-python)")
        self._trt, self._cudart = trt, cudart
        self.runtime_version = trt.__version__
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        with open(path, "rb") as f:
            engine = runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise RuntimeLoadError(
                f"{path}: TensorRT could not deserialize the engine (built for another GPU or TensorRT version?)"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise RuntimeLoadError(f"{path}: {len(inputs)} inputs; only single-input engines are supported")
        self.input_name, self.output_name, self._outputs = inputs[0], outputs[0], outputs
        self.input_shape = tuple(_dim(d) for d in engine.get_tensor_shape(self.input_name))
        self._np_dtype = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        in_dt = self._np_dtype[self.input_name]
        self.input_dtype = "float32" if in_dt.kind == "f" else str(in_dt)
        self.layout = _guess_layout(self.input_shape)
        err, self._stream = cudart.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, nbytes)
        self._current_shape: tuple[int, ...] | None = None
        self.info = {
            "precision_hint": None,
            "io_dtypes": {n: str(d) for n, d in self._np_dtype.items()},
            "outputs": outputs,
        }
        try:
            err, props = cudart.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = props.name
                self.info["gpu"] = name.decode(errors="replace").strip("\x00") if isinstance(name, bytes) else str(name)
        except Exception:  # pragma: no cover - informational only
            pass

    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            raise RuntimeLoadError(f"{self.path}: CUDA call {what} failed: {err}")

    def _ensure(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cudart.cudaFree(ptr)
            err, ptr = self._cudart.cudaMalloc(nbytes)
            self._check(err, "cudaMalloc")
            self._buffers[name] = (int(ptr), nbytes)
            self.context.set_tensor_address(name, int(ptr))
        return self._buffers[name][0]

    def _run(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        x = np.ascontiguousarray(x.astype(self._np_dtype[self.input_name], copy=False))
        if tuple(x.shape) != self._current_shape:
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise RuntimeLoadError(f"{self.path}: the engine does not accept input shape {list(x.shape)}")
            self._current_shape = tuple(x.shape)
        dptr = self._ensure(self.input_name, x.nbytes)
        self.context.set_tensor_address(self.input_name, dptr)
        outs = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=self._np_dtype[name])
            optr = self._ensure(name, max(host.nbytes, 1))
            self.context.set_tensor_address(name, optr)
            outs[name] = (host, optr)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        (err,) = cudart.cudaMemcpyAsync(dptr, x.ctypes.data, x.nbytes, h2d, self._stream)
        self._check(err, "cudaMemcpyAsync(H2D)")
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeLoadError(f"{self.path}: TensorRT execute_async_v3 failed")
        host, optr = outs[self.output_name]
        (err,) = cudart.cudaMemcpyAsync(host.ctypes.data, optr, host.nbytes, d2h, self._stream)
        self._check(err, "cudaMemcpyAsync(D2H)")
        (err,) = cudart.cudaStreamSynchronize(self._stream)
        self._check(err, "cudaStreamSynchronize")
        return host

    def __del__(self):  # pragma: no cover - device only
        try:
            for ptr, _ in getattr(self, "_buffers", {}).values():
                self._cudart.cudaFree(ptr)
        except Exception:  # best effort: freeing device buffers at interpreter exit
            pass


_LOADERS = {
    "onnxruntime": OnnxRuntimeModel,
    "openvino": OpenVINOModel,
    "litert": LiteRTModel,
    "tensorrt": TensorRTModel,
}


def load_model(path: str | os.PathLike, *, threads: int | None = None, precision_hint: str | None = None,
               exact: bool = False) -> Model:
    """Load ``path`` with the runtime its suffix names (see ``SUFFIX_RUNTIME``).

    threads: intra-op threads (onnxruntime), INFERENCE_NUM_THREADS (openvino), num_threads (LiteRT);
        None keeps the runtime's default.
    precision_hint: OpenVINO INFERENCE_PRECISION_HINT ("f32" by default, "bf16", "f16", or "default" to
        keep the plugin's own choice, which is bf16 on CPUs with AMX/avx512_bf16). Other runtimes run the
        precisions stored in the model and record the hint as ignored.
    exact: ONNX models only: run without graph optimizations, so a QDQ model computes its exact fake-quant
        numerics (DequantizeLinear then float ops) rather than this CPU's fused integer kernels.
    Raises RuntimeLoadError (bad file) or MissingRuntime (runtime package absent).
    """
    path = os.fspath(path)
    runtime = runtime_for_path(path)
    if not os.path.isfile(path):
        raise RuntimeLoadError(f"{path}: no such model file")
    if threads is not None and int(threads) < 1:
        raise RuntimeLoadError(f"threads must be >= 1 (got {threads})")
    if exact:
        if runtime != "onnxruntime":
            raise RuntimeLoadError(f"{path}: exact fake-quant numerics are available for ONNX models only")
        return OnnxRuntimeModel(path, threads=threads, precision_hint=precision_hint, optimize=False)
    return _LOADERS[runtime](path, threads=threads, precision_hint=precision_hint)


# ---------------------------------------------------------------------------------------------
# Instruction-set class of this CPU (decides which INT8 kernels run)
# ---------------------------------------------------------------------------------------------
def cpu_features() -> dict[str, bool]:
    """NumPy's CPUID-based feature table ({'AVX2': True, ...}); empty when this NumPy has none."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f  # NumPy 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as f  # type: ignore[no-redef]
        except ImportError:
            return {}
    return {str(k): bool(v) for k, v in f.items()}


def _proc_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def classify_isa(machine: str, feats: dict[str, bool], proc: set[str]) -> str | None:
    """The instruction-set class of a CPU (the names of pipeline's targets/isa.py) from NumPy's CPUID features
    and /proc/cpuinfo flags; None for an unknown architecture."""
    if machine in ("x86_64", "AMD64", "amd64"):
        avx2, avx512 = feats.get("AVX2", False), feats.get("AVX512F", False)
        vnni512 = feats.get("AVX512VNNI", False)
        # /proc/cpuinfo describes this process's CPU only when it agrees with CPUID on the basic flags.
        trusted = proc and ("avx2" in proc) == avx2 and ("avx512f" in proc) == avx512 and \
            ("avx512_vnni" in proc) == vnni512
        if trusted and "amx_int8" in proc:
            return "amx"
        if vnni512:
            return "avx512-vnni"
        if avx512:
            return "avx512"
        if avx2 and trusted and "avx_vnni" in proc:
            return "avx-vnni"
        if avx2 and feats.get("FMA3", True):
            return "x86-64-v3"
        return "x86-64-v2"
    if machine in ("aarch64", "arm64"):
        if "i8mm" in proc or feats.get("I8MM", False):
            return "armv8.6-i8mm"
        if "asimddp" in proc or feats.get("ASIMDDP", False):
            return "armv8.2-dotprod"
        return "armv8"
    return None


def cpu_isa() -> str | None:
    """This process's instruction-set class, e.g. 'x86-64-v3': what the runtimes' INT8 kernels dispatch on.
    NumPy's feature table asks CPUID, as MLAS and oneDNN do, so it is right under qemu-user emulation too."""
    import platform

    return classify_isa(platform.machine(), cpu_features(), _proc_flags())


# ---------------------------------------------------------------------------------------------
# Execution precisions
# ---------------------------------------------------------------------------------------------
DEFAULT_LAYER_TYPES = {
    "openvino": ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"),
    "litert": ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL"),
}


def runtime_precisions(model: Model, layer_types: Iterable[str] | None = None) -> dict[str, Counter]:
    """Precisions the runtime really executes, per layer type: {layer_type: Counter({precision: n})}.

    openvino: from ``compiled.get_runtime_model()``, rt_info "layerType" and "runtimePrecision"
        (e.g. {"Convolution": Counter({"u8": 20}), "FullyConnected": Counter({"u8": 1})} for INT8,
        "bf16" when the bf16 default was kept).
    litert: from the interpreter's op list; precision is the input dtype, or "input/weight" when they
        differ (e.g. "f32/i8" for dynamic-range quantization).
    onnxruntime / tensorrt: not exposed by the runtime: returns {}.
    layer_types: None for the runtime's compute layers (DEFAULT_LAYER_TYPES), ["*"] for all layers.
    """
    wanted = None if layer_types is not None and "*" in list(layer_types) else set(
        layer_types if layer_types is not None else DEFAULT_LAYER_TYPES.get(model.runtime, ())
    )
    out: dict[str, Counter] = {}
    if isinstance(model, OpenVINOModel):
        for op in model.compiled.get_runtime_model().get_ordered_ops():
            ri = op.get_rt_info()
            try:
                lt = _ov_str(ri["layerType"])
                prec = _ov_str(ri["runtimePrecision"])
            except Exception:  # best effort: ops without precision info are skipped in the report
                continue
            if wanted is None or lt in wanted:
                out.setdefault(lt, Counter())[prec] += 1
    elif isinstance(model, LiteRTModel):
        try:
            ops = model.interpreter._get_ops_details()
        except Exception:  # best effort: a private interpreter helper, absent in some versions
            return {}
        for op in ops:
            name = op.get("op_name", "?")
            if name == "DELEGATE" or (wanted is not None and name not in wanted):
                continue
            types = op.get("operand_types") or []
            if not types:
                continue
            a = _SHORT_DTYPE.get(np.dtype(types[0]).name, np.dtype(types[0]).name)
            prec = a
            if len(types) > 1:
                w = _SHORT_DTYPE.get(np.dtype(types[1]).name, np.dtype(types[1]).name)
                if w != a:
                    prec = f"{a}/{w}"
            out.setdefault(name, Counter())[prec] += 1
    return out


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def high_bit_full(spec: dict, arr: np.ndarray) -> float:
    """The value that maps to 255 for a high bit-depth image: the training set's (spec["high_bit_full"], e.g.
    4095 for 12-bit data in 16-bit files), else the smallest even bit depth holding this image's brightest
    pixel (the rule of pipeline/data/images.to_uint8), else 255 for data whose values are 8-bit already."""
    full = spec.get("high_bit_full")
    if full:
        return float(full)
    hi = float(arr.max()) if arr.size else 0.0
    if hi <= 255:
        return 255.0 if hi > 1.0 else 1.0
    bits = next((b for b in range(8, 33, 2) if hi <= 2 ** b - 1), None)
    return float(2 ** bits - 1) if bits else hi


def preprocess_image(path: str | os.PathLike, spec: dict) -> np.ndarray:
    """Load an image (or a .npy array) into a float32 batch of one, as the model wants it.

    spec: {"size": [H, W], "channels": 1|3, "mean": [...], "std": [...], "channel_order": "rgb"|"bgr",
           "layout": "nchw"|"nhwc", "scale": 255, "resize": "bilinear"|"nearest",
           "resize_size": [H', W'] (optional: resize to it first, then centre-crop "size"),
           "high_bit_full": F (optional: 16-bit/32-bit images are scaled by 255 / F to 8 bits first)}
    Pixel values become ((pixel / scale) - mean) / std, per channel. A ``.npy`` file is taken as already
    preprocessed: it is cast to float32 and given a batch dimension when it has none (rank 3).
    Image files need Pillow (pip install pillow); .npy files do not.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        return arr[None] if arr.ndim == 3 else arr
    try:
        from PIL import Image
    except ImportError:
        raise MissingRuntime(
            f"{path}: reading images needs Pillow (pip install pillow); or pass a preprocessed .npy array"
        ) from None
    channels = int(spec.get("channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"spec channels must be 1 or 3 (got {channels})")
    layout = str(spec.get("layout", "nchw")).lower()
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"spec layout must be nchw or nhwc (got {layout!r})")
    order = str(spec.get("channel_order", "rgb")).lower()
    if order not in ("rgb", "bgr"):
        raise ValueError(f"spec channel_order must be rgb or bgr (got {order!r})")
    filters = getattr(Image, "Resampling", Image)  # Pillow >= 9.1 names them Image.Resampling.*
    resample = {"bilinear": filters.BILINEAR, "nearest": filters.NEAREST, "bicubic": filters.BICUBIC}[
        str(spec.get("resize", "bilinear")).lower()
    ]
    with Image.open(path) as src:
        # As training read it (pipeline/data/images.py): upright per EXIF, transparency composited on white.
        from PIL import ImageOps

        img: Image.Image = ImageOps.exif_transpose(src)
        if img.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img.alpha_composite(rgba)
        size = spec.get("size")
        # Large inputs: resize to resize_size, then centre-crop `size` (the training side's evaluation transform).
        first = spec.get("resize_size") or size
        if img.mode in HIGH_BIT_MODES:
            # 16-bit PNG/TIFF, 32-bit: as training read them (pipeline/data/images.py + store.py), never with
            # convert("L") (it clips at 255): float resize, then the dataset's one linear map to 8 bits, rounded.
            f = Image.fromarray(np.asarray(img).astype(np.float32))
            if first and f.size != (int(first[1]), int(first[0])):
                f = f.resize((int(first[1]), int(first[0])), resample)
            arr = np.asarray(f, dtype=np.float32)
            arr = np.clip(np.round(arr * np.float32(255.0 / high_bit_full(spec, arr))), 0, 255)
            if channels == 3:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
        else:
            if img.mode not in ("L", "1", "RGB"):
                img = img.convert("RGB")
            img = img.convert("L" if channels == 1 else "RGB")
            if first:
                h, w = int(first[0]), int(first[1])
                if img.size != (w, h):
                    img = img.resize((w, h), resample)
            arr = np.asarray(img, dtype=np.float32)
        if size and spec.get("resize_size"):
            ch, cw = int(size[0]), int(size[1])
            top, left = (arr.shape[0] - ch) // 2, (arr.shape[1] - cw) // 2
            arr = arr[top:top + ch, left:left + cw]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 3 and order == "bgr":
        arr = arr[:, :, ::-1]
    scale = float(spec.get("scale", 255.0) or 1.0)
    arr = arr / scale
    mean = np.asarray(spec.get("mean", [0.0] * channels), dtype=np.float32).reshape(-1)
    std = np.asarray(spec.get("std", [1.0] * channels), dtype=np.float32).reshape(-1)
    if mean.size not in (1, channels) or std.size not in (1, channels):
        raise ValueError(f"spec mean/std need 1 or {channels} values (got {mean.size}/{std.size})")
    if np.any(std == 0):
        raise ValueError("spec std must not contain 0")
    arr = (arr - mean) / std
    if layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None], dtype=np.float32)
