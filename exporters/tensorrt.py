"""TensorRT engine (.engine) built from an ONNX artifact with the TensorRT Python API.

Written against TensorRT 10 and 11 (`tensorrt` + `cuda-python`; other majors are refused with
one line). TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8), the implicit int8
calibrator (`int8_calibrator`, `set_calibration_profile`, IInt8EntropyCalibrator2) and the
platform_has_fast_* queries; TensorRT 10 deprecated them. So, on both:
  - the precision lives in the ONNX, and the network is strongly typed
    (NetworkDefinitionCreationFlag.STRONGLY_TYPED on 10; always on in 11):
      none     float32 ONNX (exporters.onnx.to_onnx: frozen, inlined graph)
      float16  optkit's float16 ONNX (float16 weights and math, float32 I/O)
      int8     explicit quantization: optkit's static QDQ int8 ONNX, calibrated on --data, with
               symmetric scales (zero points 0, as TensorRT requires) and per-channel weights;
  - `trt.OnnxParser` fills the network; one optimization profile: batch 1..max_batch (opt
    `opt_batch`, default 1: the edge-device case) and, for inputs whose height/width are dynamic,
    the `hw_range` the user gives (MIN:OPT:MAX); -1 never reaches the profile;
  - loading deserializes the engine, sizes device buffers for the profile's largest shapes ONCE
    and binds them with `set_tensor_address`; each call checks the input shapes against the
    profile (and `set_input_shape`'s answer), copies in, `execute_async_v3`, copies out.

An engine is specific to the GPU and TensorRT version that built it: build it where it will run
(a Jetson builds its own). On a machine without an NVIDIA GPU or without the `tensorrt` package,
`available()` says which, `optkit export --to tensorrt` exits non-zero with that one line, and
`optimize` records the row as skipped. The parts that need no GPU (the ONNX handed to the
parser, the profile, version gating, shape checks) are plain Python and tested everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from exporters import _common
from optkit.errors import Unavailable, UserError
from optkit.options import option
from optkit.runner import Predictor, TensorSpec
from optkit.runtimes import Runtime

NAME = "tensorrt"
SUFFIX = ".engine"
PRECISIONS = ("none", "float16", "int8")

# The TensorRT majors this module is written for (pyproject's `tensorrt` extra pins the same).
SUPPORTED_MAJORS = (10, 11)
MAX_BATCH = 32
WORKSPACE_BYTES = 1 << 30
@dataclass(frozen=True)
class Options:
    max_batch: int = option(MAX_BATCH, "largest batch of the optimisation profile", min=1)
    opt_batch: Optional[int] = option(None, "batch the engine is tuned for (default: max_batch)", min=1)
    hw_range: str = option("", "MIN:OPT:MAX input height/width for a dynamic-size profile")
    workspace_bytes: int = option(WORKSPACE_BYTES, "builder workspace", min=1)
    calibration_samples: int = option(_common.CALIBRATION_SAMPLES, "representative samples for int8", min=1)
    opset: Optional[int] = option(None, "opset of the ONNX handed to the parser (default: the onnx exporter's)",
                                  min=7)


OPTIONS = Options


def _gpu_present() -> bool:
    # The kernel driver exposes one entry per NVIDIA GPU here (desktop/server drivers and
    # Jetson's nvgpu alike expose /dev/nvidia* or /dev/nvhost-*).
    if os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus"):
        return True
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu")


def version_supported(version: str) -> Tuple[bool, str]:
    """(ok, reason) for a TensorRT version string such as "10.13.0.35"."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return False, f"cannot read the TensorRT version '{version}'"
    if major not in SUPPORTED_MAJORS:
        wanted = " or ".join(f"{m}.x" for m in SUPPORTED_MAJORS)
        return False, f"TensorRT {version} is not supported (optkit builds engines with TensorRT {wanted})"
    return True, ""


def available():
    """(False, reason) naming what is missing: the tensorrt package (or a supported version of it),
    an NVIDIA GPU, or cuda-python."""
    problems = []
    try:
        import tensorrt
    except Exception:
        problems.append("tensorrt not installed (it installs only from NVIDIA's package index, "
                        "onto a machine with an NVIDIA GPU)")
    else:
        ok, why = version_supported(getattr(tensorrt, "__version__", "?"))
        if not ok:
            problems.append(why)
    if not _gpu_present():
        problems.append("no NVIDIA GPU on this machine")
    if not problems:
        try:
            _cudart()
        except Unavailable as exc:
            problems.append(str(exc))
    if problems:
        return False, "; ".join(problems)
    return True, ""


def _cudart():
    """cuda-python's runtime bindings (new and old module paths)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise Unavailable("cuda-python not installed (pip install cuda-python)") from None
    return cudart


def _check(result):
    """cuda-python returns (error, value...) tuples; raise on any error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (values or None)


# -- options, profile and shapes (pure Python) ------------------------------------------------------

def _positive_int(options, key, default):
    value = options.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise UserError(f"tensorrt: {key} must be a positive integer, got {value!r}")
    return number


def parse_hw_range(value) -> Optional[Tuple[int, int, int]]:
    """"128:224:512" -> (128, 224, 512); "224" -> (224, 224, 224); None -> None."""
    if value is None or value == "":
        return None
    parts = str(value).replace(",", ":").split(":")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 3
    if len(sizes) != 3 or min(sizes) < 1 or not sizes[0] <= sizes[1] <= sizes[2]:
        raise UserError(f"tensorrt: hw_range must be MIN:OPT:MAX sizes with MIN <= OPT <= MAX, got {value!r}")
    return tuple(sizes)


def profile_shapes(name: str, shape: Sequence[int], *, max_batch: int, opt_batch: int = 1,
                   hw_range: Optional[Tuple[int, int, int]] = None):
    """(min, opt, max) shapes of one network input for the optimization profile.

    `shape` is the parser's input shape, -1 where dynamic. Batch (dim 0): 1..max_batch with
    `opt_batch`, or the fixed batch. Other dynamic dims are the image's height/width (NHWC, as
    tf2onnx writes): they take `hw_range`; without it, or for a dynamic channel count, the user
    is told what to pass. No -1 ever reaches TensorRT.
    """
    shape = [int(d) for d in shape]
    if not shape:
        return (), (), ()
    if not 1 <= opt_batch <= max_batch:
        raise UserError(f"tensorrt: opt_batch must be between 1 and max_batch ({max_batch}), got {opt_batch}")
    lo, opt, hi = list(shape), list(shape), list(shape)
    if shape[0] < 0:
        lo[0], opt[0], hi[0] = 1, opt_batch, max_batch
    dynamic = [i for i, d in enumerate(shape) if d < 0 and i > 0]
    if dynamic:
        if len(shape) == 4 and (len(shape) - 1) in dynamic:
            raise UserError(f"tensorrt: input '{name}' has a dynamic channel count {tuple(shape)}; "
                            "export a model with a fixed number of channels")
        if hw_range is None:
            raise UserError(f"tensorrt: input '{name}' has dynamic height/width {tuple(shape)}; pass the sizes "
                            "the engine must accept, e.g. --option tensorrt:hw_range=128:224:512")
        for i in dynamic:
            lo[i], opt[i], hi[i] = hw_range
    return tuple(lo), tuple(opt), tuple(hi)


def check_input_shape(name: str, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> None:
    """A ValueError naming the input, its shape and the engine's range when `shape` is outside it."""
    shape, lo, hi = tuple(int(d) for d in shape), tuple(int(d) for d in lo), tuple(int(d) for d in hi)
    if len(shape) != len(lo):
        raise ValueError(f"input '{name}' has shape {shape}; the engine expects rank {len(lo)} ({lo} to {hi})")
    if shape and not lo[0] <= shape[0] <= hi[0]:
        raise ValueError(f"input '{name}' has batch {shape[0]}; this engine takes batches {lo[0]} to {hi[0]} "
                         f"(rebuild with --option tensorrt:max_batch=N)")
    for i, (d, a, b) in enumerate(zip(shape, lo, hi)):
        if i and not a <= d <= b:
            raise ValueError(f"input '{name}' has shape {shape}; this engine accepts {lo} to {hi}")


# -- export -----------------------------------------------------------------------------------------

def export(model, out_path, *, quantize="none", data=None, **options):
    """Write `out_path` (.engine) for THIS machine's GPU. Options: max_batch (default 32),
    opt_batch (default 1), hw_range (MIN:OPT:MAX, for models with dynamic height/width),
    workspace_bytes (default 1 GiB), calibration_samples (int8, default 100), opset (of the ONNX)."""
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    max_batch = _positive_int(options, "max_batch", MAX_BATCH)
    opt_batch = _positive_int(options, "opt_batch", 1)
    workspace = _positive_int(options, "workspace_bytes", WORKSPACE_BYTES)
    hw_range = parse_hw_range(options.get("hw_range"))
    if opt_batch > max_batch:
        raise UserError(f"tensorrt: opt_batch ({opt_batch}) is larger than max_batch ({max_batch})")
    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    details = {"builder": "tensorrt.Builder from ONNX (strongly typed)", "quantize": quantize}
    with _common.atomic_output(out_path) as tmp:
        onnx_path = tmp + ".onnx"
        try:
            details.update(onnx_for_engine(model, onnx_path, quantize=quantize, data=data, options=options))
            details.update(build_engine(onnx_path, tmp, max_batch=max_batch, opt_batch=opt_batch,
                                        hw_range=hw_range, workspace_bytes=workspace))
        finally:
            for leftover in (onnx_path, onnx_path + ".float.onnx"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    return details


def onnx_for_engine(model, path, *, quantize="none", data=None, options=None) -> dict:
    """The ONNX TensorRT builds from, with the precision in the graph (no builder flags):
    float32; float16 weights/math with float32 I/O; or symmetric per-channel QDQ int8."""
    from exporters import onnx as onnx_exporter

    options = options or {}
    opset = int(options.get("opset", onnx_exporter.DEFAULT_OPSET))
    details = {"onnx_opset": opset}
    if quantize == "none":
        onnx_exporter.to_onnx(model, path, opset=opset)
        return details
    float_path = path + ".float.onnx"
    onnx_exporter.to_onnx(model, float_path, opset=opset)
    try:
        if quantize == "float16":
            onnx_exporter.to_float16(float_path, path, details)
        elif quantize == "int8":
            qopts = {"per_channel": True, "reduce_range": False,
                     "calibration_samples": options.get("calibration_samples", _common.CALIBRATION_SAMPLES)}
            onnx_exporter.quantize_static(model, float_path, path, data, qopts, details, symmetric=True)
            details["int8"] = "explicit quantization (QDQ, symmetric, per-channel weights)"
        else:
            raise UserError(f"tensorrt cannot build '{quantize}' (supported: {', '.join(PRECISIONS)})")
    finally:
        if os.path.exists(float_path):
            os.unlink(float_path)
    return details


def build_engine(onnx_path, engine_path, *, max_batch=MAX_BATCH, opt_batch=1, hw_range=None,
                 workspace_bytes=WORKSPACE_BYTES):
    import tensorrt as trt

    ok, reason = version_supported(trt.__version__)
    if not ok:
        raise Unavailable(reason)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: each tensor's type follows the ONNX (float16 weights, Q/DQ int8). TensorRT
    # 10 needs the flag; 11 is always strongly typed (the flag is kept there and ignored).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = profile_shapes(tensor.name, tuple(tensor.shape), max_batch=max_batch,
                                     opt_batch=opt_batch, hw_range=hw_range)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    with open(engine_path, "wb") as fh:
        fh.write(serialized)
    return {"tensorrt": trt.__version__, "max_batch": max_batch, "opt_batch": opt_batch,
            "workspace_bytes": workspace_bytes, "profile": shapes, "strongly_typed": True}


class TensorRTPredictor(Predictor):
    """Runs a serialized engine: device buffers sized for the profile's largest shapes, allocated
    and bound once; every call's input shapes are checked against the profile first."""

    runtime = "tensorrt"
    backend = "tensorrt"

    def __init__(self, path, threads):
        Predictor.__init__(self, path, threads)
        import tensorrt as trt

        ok, reason = version_supported(trt.__version__)
        if not ok:
            raise Unavailable(reason)
        self._trt = trt
        self._cudart = cudart = _cudart()
        self.backend_version = trt.__version__
        logger = trt.Logger(trt.Logger.WARNING)
        with open(os.fspath(path), "rb") as fh:
            self._engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
        if self._engine is None:
            raise UserError(f"{path}: not a TensorRT engine for this GPU/TensorRT version (rebuild it here)")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._in_names, self._out_names, self._device, self._dtypes, self._range = [], [], {}, {}, {}
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        for name in names:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
            shape = [None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name)]
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
                self._range[name] = (tuple(lo), tuple(hi))
                self._in_names.append(name)
                self.inputs.append(TensorSpec(name, shape, dtype))
                # Largest shapes first, so the outputs' largest shapes can be read back below.
                self._set_shape(name, tuple(hi))
            else:
                self._out_names.append(name)
                self.outputs.append(TensorSpec(name, shape, dtype))
        for name in names:
            largest = self._range[name][1] if name in self._range else tuple(self._context.get_tensor_shape(name))
            nbytes = int(np.prod(largest)) * self._dtypes[name].itemsize
            self._device[name] = _check(cudart.cudaMalloc(max(nbytes, 1)))
            # Bound once: every call reuses the same device addresses.
            self._context.set_tensor_address(name, int(self._device[name]))

    def _set_shape(self, name, shape):
        # set_input_shape answers False (TensorRT 10 and 11) for a shape outside the profile.
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, hi = self._range[name]
            raise ValueError(f"TensorRT refused shape {tuple(shape)} for input '{name}' (profile {lo} to {hi})")

    def __call__(self, *arrays):
        self._check_arity(arrays)
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []
        for name, a in zip(self._in_names, arrays):
            host = np.ascontiguousarray(a, dtype=self._dtypes[name])
            check_input_shape(name, host.shape, *self._range[name])
            hosts.append(host)
        for name, host in zip(self._in_names, hosts):
            self._set_shape(name, host.shape)
            _check(cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, host.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        outs = []
        for name in self._out_names:
            host = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes, d2h, self._stream))
            outs.append(host)
        _check(cudart.cudaStreamSynchronize(self._stream))
        return [o.astype(np.float32) for o in outs]

    def close(self):
        for ptr in self._device.values():
            self._cudart.cudaFree(ptr)
        self._device = {}


def load(path, *, threads=None, **options):
    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    return TensorRTPredictor(path, threads)


# Its engines run only here: the runtime `optkit bench --runtime tensorrt` (optkit.runtimes).
RUNTIME = Runtime("tensorrt", ("engine", "plan", "trt"), load, "TensorRT engines (needs an NVIDIA GPU)",
                  aliases=("trt",), default_for=("engine", "plan", "trt"))
