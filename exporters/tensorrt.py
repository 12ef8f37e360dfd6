"""TensorRT engine (.engine) built from the ONNX artifact with the TensorRT Python API.

Written against TensorRT 10's documented API (`tensorrt` + `cuda-python`):
  - the float32 ONNX comes from exporters.onnx.to_onnx (tf2onnx from_function);
  - `trt.OnnxParser` fills an explicit-batch network; one optimization profile covers batch
    1..max_batch (opt = 1, the edge-device case);
  - fp32 by default, `BuilderFlag.FP16` for float16, `BuilderFlag.INT8` with an
    `IInt8EntropyCalibrator2` over --data (or random inputs, and said so) for int8;
  - loading deserializes the engine, allocates device buffers for max_batch ONCE and binds them
    with `set_tensor_address`; each call copies in, `execute_async_v3`, copies out.

An engine is specific to the GPU and TensorRT version that built it: build it where it will run
(a Jetson builds its own). On a machine without an NVIDIA GPU or without the `tensorrt` package,
`available()` says which, `optkit export --to tensorrt` exits non-zero with that one line, and
`optimize` records the row as skipped.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Sequence

import numpy as np

from exporters import _common
from optkit.errors import Unavailable, UserError
from optkit.runner import Predictor, TensorSpec

NAME = "tensorrt"
SUFFIX = ".engine"
PRECISIONS = ("none", "float16", "int8")

MAX_BATCH = 32
WORKSPACE_BYTES = 1 << 30
OPTIONS = ("max_batch", "workspace_bytes", "calibration_samples", "calibration_batch", "opset")


def _gpu_present() -> bool:
    # The kernel driver exposes one entry per NVIDIA GPU here (desktop/server drivers and
    # Jetson's nvgpu alike expose /dev/nvidia* or /dev/nvhost-*).
    if os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus"):
        return True
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu")


def available():
    """(False, reason) naming what is missing: the tensorrt package, an NVIDIA GPU, or cuda-python."""
    problems = []
    try:
        import tensorrt  # noqa: F401
    except Exception:
        problems.append("tensorrt not installed (it installs only from NVIDIA's package index, "
                        "onto a machine with an NVIDIA GPU)")
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


def export(model, out_path, *, quantize="none", data=None, **options):
    """Write `out_path` (.engine) for THIS machine's GPU. Options: max_batch (default 32),
    workspace_bytes (default 1 GiB), calibration_samples (default 100), calibration_batch
    (default 8), opset (for the intermediate ONNX)."""
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    from exporters import onnx as onnx_exporter

    details = {"builder": "tensorrt.Builder from ONNX", "quantize": quantize}
    samples = None
    if quantize == "int8":
        samples, details["calibration_source"] = _common.sample_inputs(
            model, data, n=int(options.get("calibration_samples", _common.CALIBRATION_SAMPLES)))
    with _common.atomic_output(out_path) as tmp:
        onnx_path = tmp + ".onnx"
        onnx_exporter.to_onnx(model, onnx_path, opset=int(options.get("opset", onnx_exporter.DEFAULT_OPSET)))
        try:
            details.update(build_engine(
                onnx_path, tmp, precision=quantize, samples=samples,
                max_batch=int(options.get("max_batch", MAX_BATCH)),
                workspace_bytes=int(options.get("workspace_bytes", WORKSPACE_BYTES)),
                calibration_batch=int(options.get("calibration_batch", 8))))
        finally:
            if os.path.exists(onnx_path):
                os.unlink(onnx_path)
    return details


def build_engine(onnx_path, engine_path, *, precision="none", samples=None, max_batch=MAX_BATCH,
                 workspace_bytes=WORKSPACE_BYTES, calibration_batch=8):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; older versions need the flag.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        per_sample = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1,) + per_sample, (1,) + per_sample, (max_batch,) + per_sample)
    config.add_optimization_profile(profile)
    calibrator = None
    if precision == "float16":
        if not builder.platform_has_fast_fp16:
            raise Unavailable("this GPU has no fast float16; build float32 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        if not builder.platform_has_fast_int8:
            raise Unavailable("this GPU has no fast int8; build float16 or float32 instead")
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = make_calibrator(samples, calibration_batch, cache_path=engine_path + ".calib")
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    with open(engine_path, "wb") as fh:
        fh.write(serialized)
    if calibrator is not None:
        calibrator.free()
    return {"tensorrt": trt.__version__, "max_batch": max_batch, "workspace_bytes": workspace_bytes,
            "precision_flags": {"none": "fp32", "float16": "FP16", "int8": "INT8"}[precision]}


def calibration_batches(samples: Sequence[np.ndarray], batch_size: int) -> Iterator[List[np.ndarray]]:
    """Full batches of contiguous float32 arrays (TensorRT's calibrator wants a fixed batch size;
    a short last batch is dropped rather than padded with fake samples)."""
    if batch_size < 1:
        raise UserError("calibration_batch must be >= 1")
    n = len(samples[0])
    if n < batch_size:
        raise UserError(f"int8 calibration needs at least {batch_size} samples, got {n}")
    for i in range(0, n - batch_size + 1, batch_size):
        yield [np.ascontiguousarray(a[i:i + batch_size], dtype=np.float32) for a in samples]


def make_calibrator(samples, batch_size, cache_path=None):
    """An IInt8EntropyCalibrator2 feeding `samples` to the builder, batch by batch, on the GPU."""
    import tensorrt as trt

    cudart = _cudart()
    batches = list(calibration_batches(samples, batch_size))

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._index = 0
            self._device = [_check(cudart.cudaMalloc(b.nbytes)) for b in batches[0]]

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self._index >= len(batches):
                return None
            for ptr, host in zip(self._device, batches[self._index]):
                _check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self._index += 1
            return [int(p) for p in self._device]

        def read_calibration_cache(self):
            if cache_path and os.path.exists(cache_path):
                with open(cache_path, "rb") as fh:
                    return fh.read()
            return None

        def write_calibration_cache(self, cache):
            if cache_path:
                with open(cache_path, "wb") as fh:
                    fh.write(bytes(cache))

        def free(self):
            for ptr in self._device:
                cudart.cudaFree(ptr)
            self._device = []

    return EntropyCalibrator()


class TensorRTPredictor(Predictor):
    """Runs a serialized engine: device buffers sized for max_batch, allocated and bound once."""

    runtime = "tensorrt"
    backend = "tensorrt"

    def __init__(self, path, threads):
        Predictor.__init__(self, path, threads)
        import tensorrt as trt

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
        self._in_names, self._out_names, self._device, self._dtypes = [], [], {}, {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = list(self._engine.get_tensor_shape(name))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input:
                max_shape = list(self._engine.get_tensor_profile_shape(name, 0)[2])
                self._in_names.append(name)
                self.inputs.append(TensorSpec(name, [None if d < 0 else d for d in shape], dtype))
            else:
                max_shape = [self._max_batch() if d < 0 else d for d in shape]
                self._out_names.append(name)
                self.outputs.append(TensorSpec(name, [None if d < 0 else d for d in shape], dtype))
            nbytes = int(np.prod(max_shape)) * dtype.itemsize
            self._device[name] = _check(cudart.cudaMalloc(nbytes))
            self._dtypes[name] = dtype
            # Bound once: every call reuses the same device addresses.
            self._context.set_tensor_address(name, int(self._device[name]))

    def _max_batch(self):
        name = next(self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)
                    if self._engine.get_tensor_mode(self._engine.get_tensor_name(i)) == self._trt.TensorIOMode.INPUT)
        return int(self._engine.get_tensor_profile_shape(name, 0)[2][0])

    def __call__(self, *arrays):
        self._check_arity(arrays)
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, a in zip(self._in_names, arrays):
            host = np.ascontiguousarray(a, dtype=self._dtypes[name])
            self._context.set_input_shape(name, host.shape)
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
