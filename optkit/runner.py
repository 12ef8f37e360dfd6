"""Load a .tflite or .onnx model, run it and time it — with nothing but numpy and one runtime.

This file is copied on its own to phones, Raspberry Pis and Jetsons, so it must stay:
- one file that imports no other optkit module;
- TensorFlow-free (tf.lite is only the last-resort interpreter, when nothing lighter is installed);
- Python 3.8 compatible (no `match`, no `list[int]` evaluated at runtime, no f"{x=}").

    python runner.py MODEL [--threads N] [--batch N] [--warmup N] [--min-time S] [--min-runs N] --json

prints one bench result (the `results[i]` shape of `optkit bench --json`). The same timing loop
(`measure`) is what optkit.bench uses for every other runtime, so numbers are comparable.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "RunnerError", "RuntimeMissing", "TensorSpec", "Predictor", "load_predictor", "measure", "summarize",
    "default_threads", "random_inputs", "PeakRSS", "bench_file", "bench_loaded", "device_info",
    "file_sizes", "artifact_format", "read_contract", "apply_contract", "score_file",
]

TFLITE_RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
RUNTIME_ALIASES = {
    "litert": "litert", "tflite": "litert", "ai_edge_litert": "litert", "tflite_runtime": "litert",
    "tf.lite": "litert", "tensorflow": "litert",
    "onnxruntime": "onnxruntime", "ort": "onnxruntime", "onnx": "onnxruntime",
}


class RunnerError(Exception):
    """A bad model file or option. optkit.bench turns it into a UserError (exit 2)."""


class RuntimeMissing(RunnerError):
    """The runtime a model needs is not installed here (optkit.bench: a `skipped` row)."""


class TensorSpec(object):
    """One model input or output. `shape` uses None for a dynamic dimension; `dtype` is the
    tensor's own dtype (e.g. int8); `quantization` is (scale, zero_point) or None."""

    __slots__ = ("name", "shape", "dtype", "quantization")

    def __init__(self, name, shape, dtype, quantization=None):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = str(np.dtype(dtype)) if dtype is not None else "unknown"
        self.quantization = quantization

    def to_json(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "quantization": list(self.quantization) if self.quantization else None}

    def __iter__(self):  # unpacks like the (name, shape, dtype) tuple of the contract
        return iter((self.name, self.shape, self.dtype))

    def __eq__(self, other):
        return isinstance(other, TensorSpec) and self.to_json() == other.to_json()

    def __repr__(self):
        q = ", quantization=%r" % (self.quantization,) if self.quantization else ""
        return "TensorSpec(%r, %r, %r%s)" % (self.name, self.shape, self.dtype, q)


def default_threads():
    """The cores this process may use: the thread count we set when the caller gives none.

    Runtimes disagree on their own defaults (LiteRT used 1 thread here, onnxruntime all cores),
    so we always pass a number explicitly and record it.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quantize(x, dtype, quantization):
    scale, zero_point = quantization
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q, quantization):
    scale, zero_point = quantization
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _to_float32(y):
    return y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y


class Predictor(object):
    """`predictor(*arrays) -> [np.ndarray]`: float32 in, float32 out, whatever the model's I/O types."""

    runtime = "?"          # "litert" | "onnxruntime" | what a subclass elsewhere sets
    backend = "?"          # the module that actually runs it (ai_edge_litert, tflite_runtime, ...)
    backend_version = None

    def __init__(self, path, threads):
        self.path = path
        self.threads = threads
        self.inputs = []   # type: List[TensorSpec]
        self.outputs = []  # type: List[TensorSpec]

    def __call__(self, *arrays):
        raise NotImplementedError

    def _check_arity(self, arrays):
        if len(arrays) != len(self.inputs):
            raise RunnerError("%s expects %d input(s) (%s), got %d" % (
                os.path.basename(self.path), len(self.inputs),
                ", ".join(s.name for s in self.inputs), len(arrays)))

    # What `prepare` hands the timing loop; runtimes with a bare call say which one they picked.
    timed_call = "predictor(*arrays)"

    def prepare(self, *arrays):
        """A zero-argument callable that runs the model on `arrays`, for the timing loop.

        Everything that is the same on every call (converting, quantizing and copying the
        inputs in, allocating outputs) happens here, once, so the loop times the runtime's own
        call and nothing else. This default times the whole predictor call; LiteRT and
        onnxruntime below return their bare call. The model's outputs are left unread.
        """
        self._check_arity(arrays)
        return lambda: self(*arrays)


def import_interpreter(which=None):
    """The TFLite Interpreter class: ai_edge_litert, else tflite_runtime, else tf.lite."""
    order = [which] if which in TFLITE_RUNTIMES else list(TFLITE_RUNTIMES)
    errors = []
    for name in order:
        try:
            if name == "ai_edge_litert":
                from ai_edge_litert import interpreter as mod
                return mod.Interpreter, name, _version("ai-edge-litert")
            if name == "tflite_runtime":
                from tflite_runtime import interpreter as mod
                return mod.Interpreter, name, _version("tflite-runtime")
            import tensorflow as tf  # last resort: 4 s and 680 MB, but it runs anything
            return tf.lite.Interpreter, "tensorflow.lite", tf.__version__
        except Exception as exc:  # ImportError, or a broken install that fails on import
            errors.append("%s: %s" % (name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    raise RuntimeMissing("no TFLite interpreter available (pip install ai-edge-litert); tried "
                      + "; ".join(errors))


def _version(dist):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return None


class TFLitePredictor(Predictor):
    runtime = "litert"

    def __init__(self, path, threads, which=None):
        Predictor.__init__(self, path, threads)
        Interpreter, self.backend, self.backend_version = import_interpreter(which)
        try:
            self._interp = Interpreter(model_path=path, num_threads=threads)
            self._interp.allocate_tensors()
        except ValueError as exc:
            raise RunnerError("cannot load %s with %s: %s" % (path, self.backend, str(exc).strip().splitlines()[0]))
        self._refresh()

    def _refresh(self):
        """Re-read tensor details (indices, shapes, quantization) after a resize."""
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = [self._spec(d) for d in self._in]
        self.outputs = [self._spec(d) for d in self._out]

    @staticmethod
    def _spec(d):
        sig = d.get("shape_signature")
        shape = sig if sig is not None and len(sig) else d["shape"]
        scale, zero_point = d.get("quantization", (0.0, 0))
        quant = (float(scale), int(zero_point)) if scale else None
        return TensorSpec(d["name"], [None if int(s) < 0 else int(s) for s in shape], d["dtype"], quant)

    def _resize_if_needed(self, arrays):
        changed = False
        for d, a in zip(self._in, arrays):
            if tuple(d["shape"]) != tuple(a.shape):
                # strict=False lets a fixed batch dim change too (Keras models often export batch=1).
                self._interp.resize_tensor_input(d["index"], list(a.shape), strict=False)
                changed = True
        if changed:
            self._interp.allocate_tensors()
            self._refresh()

    def _set_inputs(self, arrays):
        """Resize if the shapes changed, quantize int8/uint8 inputs, copy them into the interpreter."""
        self._check_arity(arrays)
        arrays = [np.asarray(a) for a in arrays]
        self._resize_if_needed(arrays)
        for d, spec, a in zip(self._in, self.inputs, arrays):
            if spec.quantization and np.issubdtype(d["dtype"], np.integer):
                a = _quantize(a, d["dtype"], spec.quantization)
            elif a.dtype != d["dtype"]:
                a = a.astype(d["dtype"])
            self._interp.set_tensor(d["index"], a)

    timed_call = "Interpreter.invoke"

    def prepare(self, *arrays):
        # Inputs stay in the interpreter's buffers between invokes: set (and quantize) them once.
        self._set_inputs(arrays)
        return self._interp.invoke

    def __call__(self, *arrays):
        self._set_inputs(arrays)
        self._interp.invoke()
        return self.read_outputs()

    def read_outputs(self):
        """The outputs of the last invoke as float32 (dequantized), e.g. after a prepared call."""
        out = []
        for d, spec in zip(self._out, self.outputs):
            y = self._interp.get_tensor(d["index"])  # a copy: safe to keep across calls
            if spec.quantization and np.issubdtype(y.dtype, np.integer):
                y = _dequantize(y, spec.quantization)
            out.append(_to_float32(y))
        return out


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


class OnnxPredictor(Predictor):
    runtime = "onnxruntime"
    backend = "onnxruntime"

    def __init__(self, path, threads, providers=None):
        Predictor.__init__(self, path, threads)
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise RuntimeMissing("onnxruntime is not installed (pip install onnxruntime): %s" % exc)
        self.backend_version = ort.__version__
        opts = ort.SessionOptions()
        # Explicit threads: onnxruntime's default (0) takes every core, LiteRT's takes one.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.providers = list(providers or ["CPUExecutionProvider"])
        try:
            self._sess = ort.InferenceSession(path, sess_options=opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RunnerError("cannot load %s with onnxruntime: %s" % (path, str(exc).strip().splitlines()[0]))
        self.inputs = [self._spec(i) for i in self._sess.get_inputs()]
        self.outputs = [self._spec(o) for o in self._sess.get_outputs()]
        self._names = [s.name for s in self.inputs]

    @staticmethod
    def _spec(node):
        shape = [d if isinstance(d, int) and d >= 0 else None for d in (node.shape or [])]
        return TensorSpec(node.name, shape, _ORT_TYPES.get(node.type, "float32"))

    def _feed(self, arrays):
        self._check_arity(arrays)
        feed = {}
        for spec, a in zip(self.inputs, arrays):
            a = np.ascontiguousarray(a)
            feed[spec.name] = a if str(a.dtype) == spec.dtype else a.astype(spec.dtype)
        return feed

    def __call__(self, *arrays):
        return [_to_float32(np.asarray(y)) for y in self._sess.run(None, self._feed(arrays))]

    def prepare(self, *arrays, **options):
        """`session.run` on a feed built once, or `run_with_iobinding` with inputs and outputs
        bound once (no per-call conversion or output allocation): whichever is faster here,
        judged on `trials` alternating calls of each. `timed_call` records the choice."""
        feed = self._feed(arrays)
        sess = self._sess
        run = lambda: sess.run(None, feed)  # noqa: E731
        try:
            binding = sess.io_binding()
            for name, a in feed.items():
                binding.bind_cpu_input(name, a)
            for out in sess.get_outputs():
                binding.bind_output(out.name, "cpu")
            sess.run_with_iobinding(binding)
            # Re-bind the outputs the first run allocated: later runs write into them.
            for out, value in zip(sess.get_outputs(), binding.get_outputs()):
                binding.bind_ortvalue_output(out.name, value)
            bound = lambda: sess.run_with_iobinding(binding)  # noqa: E731
        except Exception:  # an older onnxruntime or a provider without binding: plain run
            self.timed_call = "InferenceSession.run"
            return run
        trials = int(options.get("trials", 15))
        times = {"InferenceSession.run": [], "InferenceSession.run_with_iobinding": []}
        clock = time.perf_counter
        for _ in range(trials):
            for name, fn in (("InferenceSession.run", run), ("InferenceSession.run_with_iobinding", bound)):
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
        best = min(times, key=lambda k: float(np.median(times[k])))
        self.timed_call = best
        return bound if best.endswith("iobinding") else run


def load_predictor(path, runtime=None, threads=None, **options):
    """A Predictor for a .tflite (LiteRT) or .onnx (onnxruntime) file.

    `runtime` may force one: "litert" (or a specific interpreter module: "ai_edge_litert",
    "tflite_runtime", "tensorflow"), "onnxruntime". `threads=None` means every core available
    to this process — set explicitly, so the number recorded is the number used.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunnerError("no such model file: %s" % path)
    ext = os.path.splitext(path)[1].lower()
    if threads is None:
        threads = default_threads()
    threads = int(threads)
    if threads < 1:
        raise RunnerError("threads must be >= 1, got %d" % threads)
    kind = RUNTIME_ALIASES.get(runtime) if runtime else {".tflite": "litert", ".onnx": "onnxruntime"}.get(ext)
    if kind is None:
        if runtime:
            raise RunnerError("unknown runtime %r for the runner (litert, onnxruntime)" % runtime)
        raise RunnerError("the runner loads .tflite and .onnx files, not %r" % (ext or path))
    if kind == "litert":
        if ext != ".tflite":
            raise RunnerError("runtime litert needs a .tflite file, got %s" % path)
        which = runtime if runtime in TFLITE_RUNTIMES else ("tensorflow" if runtime == "tf.lite" else None)
        return TFLitePredictor(path, threads, which=which)
    if ext != ".onnx":
        raise RunnerError("runtime onnxruntime needs a .onnx file, got %s" % path)
    return OnnxPredictor(path, threads, providers=options.get("providers"))


# Timed calls at least, by default. optkit.gate needs 30 samples a side to decide; a default
# bench run must give it them, even for a model too slow to reach that within --min-time.
MIN_RUNS = 50


def random_inputs(specs, batch=1, seed=0, low=0.0, high=1.0):
    """Deterministic float32 inputs for `specs`, None dims filled with `batch` (first) or 1.

    Images in [0, 1] match what optkit.data feeds models, so int8 models see their calibrated range.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = list(spec.shape)
        if shape:
            shape[0] = batch  # the batch dim, whether the model declared it dynamic or fixed
        shape = [1 if s is None else s for s in shape]
        arrays.append(rng.uniform(low, high, size=shape).astype(np.float32))
    return arrays


def measure(fn, warmup=10, min_time=1.0, min_runs=MIN_RUNS, max_runs=100000):
    """Time `fn()`: `warmup` untimed calls, then timed calls until BOTH `min_time` seconds and
    `min_runs` calls are reached (or `max_runs`). Returns summarize(samples).

    The loop is deliberately bare (one perf_counter pair and a list append per call), and `fn`
    should be a predictor's `prepare(...)` call so that only the runtime's work is inside:
    benchmarks/harness_overhead.py compares it with a hand-written loop on the runtime itself.
    """
    if min_runs < 1 or max_runs < min_runs:
        raise RunnerError("need 1 <= min_runs <= max_runs, got %d and %d" % (min_runs, max_runs))
    for _ in range(int(warmup)):
        fn()
    clock = time.perf_counter
    samples = []
    append = samples.append
    deadline = clock() + float(min_time)
    n = 0
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        append(t1 - t0)
        n += 1
        if (n >= min_runs and t1 >= deadline) or n >= max_runs:
            break
    return summarize(samples)


def summarize(samples_s):
    """Latency statistics in milliseconds from per-call samples in seconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise RunnerError("no samples")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50), "p90": float(p90), "p99": float(p99),
        "mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size),
        # nanosecond resolution is all perf_counter gives; rounding keeps the JSON half the size
        "samples_ms": [round(float(v), 6) for v in ms],
    }


class PeakRSS(object):
    """Resident-memory high-water mark of this process, in MB.

    On Linux the kernel's VmHWM is reset when we enter (writing 5 to /proc/self/clear_refs), so
    the peak is this block's own; elsewhere (or if the reset is refused) it is the process'
    lifetime peak from getrusage. `source` says which one you got.
    """

    def __enter__(self):
        self.source = "getrusage ru_maxrss (process lifetime)"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if _vm_hwm_mb() is not None:
                self.source = "VmHWM (reset at load)"
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        return False

    def peak_mb(self):
        if self.source.startswith("VmHWM"):
            return _vm_hwm_mb()
        try:
            import resource
        except ImportError:  # Windows
            return None
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0  # macOS: bytes


def _vm_hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_model():
    """A human name for the CPU: /proc/cpuinfo, sysctl on macOS, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":")[0].strip().lower()
                if key in ("model name", "hardware", "cpu model", "processor") and ":" in line:
                    value = line.split(":", 1)[1].strip()
                    if value and not value.isdigit():
                        return value
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess
            return subprocess.check_output(["sysctl", "-n", "machdep.cpu.brand_string"],
                                           universal_newlines=True).strip()
        except Exception:
            pass
    return platform.processor() or platform.machine()


def device_info():
    """The small fingerprint the runner can give on any device (optkit.env adds package versions)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_available": default_threads(),
            "machine": platform.machine(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}


def file_sizes(path):
    """(size in bytes, gzip -9 size in bytes) of an artifact; a directory (SavedModel,
    .mlpackage) counts the sum over its files. The gzip size shows what pruning and clustering
    buy, since they leave the raw file size unchanged."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    size = gz = 0
    for name in files:
        with open(name, "rb") as f:
            raw = f.read()
        size += len(raw)
        gz += len(gzip.compress(raw, compresslevel=9, mtime=0))
    return size, gz


def artifact_format(path):
    """'tflite', 'onnx', 'keras', 'h5', 'mlpackage', 'saved_model', ... from the path."""
    path = path.rstrip("/\\")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if not ext and os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    return ext or "unknown"


def bench_loaded(load, path, batch=1, warmup=10, min_time=1.0, min_runs=MIN_RUNS, max_runs=100000, seed=0):
    """The one benchmark procedure, for any runtime: `load()` -> a Predictor, timed; then one cold
    call, `warmup` untimed calls and the timed loop of `measure`, on random inputs of `batch`.

    Returns (result dict, predictor, inputs); the caller may reuse the predictor (accuracy).
    """
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        predictor = load()
        load_ms = (time.perf_counter() - t0) * 1000.0
        x = random_inputs(predictor.inputs, batch=batch, seed=seed)
        t0 = time.perf_counter()
        predictor(*x)   # the cold call: first allocation, graph tracing, delegate set-up
        cold_ms = (time.perf_counter() - t0) * 1000.0
        prepared = predictor.prepare(*x) if hasattr(predictor, "prepare") else (lambda: predictor(*x))
        stats = measure(prepared, warmup=warmup, min_time=min_time,
                        min_runs=min_runs, max_runs=max_runs)
        peak = rss.peak_mb()
    samples = stats.pop("samples_ms")
    size, gz = file_sizes(path)
    result = {
        "path": path, "format": artifact_format(path),
        "runtime": predictor.runtime, "backend": predictor.backend,
        "backend_version": predictor.backend_version, "threads": predictor.threads,
        "batch": int(batch), "load_ms": load_ms, "cold_ms": cold_ms, "warmup": int(warmup),
        "timed_call": getattr(predictor, "timed_call", "predictor(*arrays)"),
        "latency_ms": stats, "samples_ms": samples, "peak_rss_mb": peak,
        "peak_rss_source": rss.source, "size_bytes": size, "gzip_bytes": gz,
        "inputs": [_spec_json(s) for s in predictor.inputs],
        "outputs": [_spec_json(s) for s in predictor.outputs],
        "status": "ok", "reason": "",
    }
    return result, predictor, x


def _spec_json(spec):
    # Predictors from elsewhere (exporters) may hand back plain (name, shape, dtype) tuples.
    if isinstance(spec, TensorSpec):
        return spec.to_json()
    name, shape, dtype = tuple(spec)[:3]
    return {"name": name, "shape": list(shape), "dtype": str(dtype), "quantization": None}


def bench_file(path, runtime=None, threads=None, batch=1, warmup=10, min_time=1.0,
               min_runs=MIN_RUNS, max_runs=100000, seed=0):
    """Load, run once cold, warm up and time one .tflite/.onnx file; returns a bench result dict."""
    result, _, _ = bench_loaded(lambda: load_predictor(path, runtime=runtime, threads=threads), path,
                                batch=batch, warmup=warmup, min_time=min_time, min_runs=min_runs,
                                max_runs=max_runs, seed=seed)
    return result


# --------------------------------------------------------------------------------------------
# The input contract optkit stores with an artifact (optkit.contract writes it): how pixels
# 0-255 become the model's input, so an artifact is fed correctly without being told again.
# {"preprocess": "tf", "scale": [..], "offset": [..], "bgr": false}: input = pixels[, RGB->BGR]
# * scale + offset, per channel (one value = every channel).

CONTRACT_KEY = "optkit.preprocess"          # TFLite metadata name and ONNX metadata_props key
CONTRACT_SIDECAR = ".optkit-preprocess.json"  # beside a file (SavedModel: inside the folder)


def contract_sidecar(path):
    path = os.fspath(path).rstrip("/\\")
    if os.path.isdir(path):
        return os.path.join(path, "optkit-preprocess.json")
    return path + CONTRACT_SIDECAR


def read_contract(path):
    """The contract stored with `path` (TFLite metadata, ONNX metadata_props or a sidecar), or None."""
    path = os.fspath(path)
    text = None
    sidecar = contract_sidecar(path)
    if os.path.isfile(sidecar):
        with open(sidecar, "r") as fh:
            text = fh.read()
    elif path.lower().endswith(".tflite") and os.path.isfile(path):
        with open(path, "rb") as fh:
            raw = _tflite_metadata(fh.read(), CONTRACT_KEY)
        text = raw.decode("utf-8") if raw is not None else None
    elif path.lower().endswith(".onnx") and os.path.isfile(path):
        try:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            text = sess.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY)
        except Exception:
            text = None
    if not text:
        return None
    try:
        contract = json.loads(text)
    except ValueError:
        raise RunnerError("%s: unreadable input contract %r" % (path, text[:80]))
    return contract if isinstance(contract, dict) and "scale" in contract else None


def apply_contract(pixels, contract):
    """Pixels 0-255 (N,H,W,C, any dtype) -> the model's input under `contract` (float32)."""
    x = np.asarray(pixels, np.float32)
    if not contract:
        return x / 255.0          # no contract stored: optkit's default, [0, 1]
    if contract.get("bgr"):
        x = x[..., ::-1]
    scale = np.asarray(contract["scale"], np.float32)
    offset = np.asarray(contract["offset"], np.float32)
    return (x * scale + offset).astype(np.float32)


def _tflite_metadata(buf, name):
    """The bytes of metadata entry `name` in a .tflite flatbuffer, or None (no TF, no schema
    module: Model.metadata is field 6, Model.buffers field 4, Metadata = (name, buffer index),
    Buffer = (data, offset, size) with offset/size used by models over 2 GB)."""
    import struct

    def u32(pos):
        return struct.unpack_from("<I", buf, pos)[0]

    def field(table, index):
        vtable = table - struct.unpack_from("<i", buf, table)[0]
        if 4 + 2 * index >= struct.unpack_from("<H", buf, vtable)[0]:
            return None
        off = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def vector(pos):   # position of a uoffset to a vector -> (first element, length)
        start = pos + u32(pos)
        return start + 4, u32(start)

    try:
        root = u32(0)
        meta = field(root, 6)
        buffers = field(root, 4)
        if meta is None or buffers is None:
            return None
        first, count = vector(meta)
        for i in range(count):
            entry = first + 4 * i + u32(first + 4 * i)
            name_pos = field(entry, 0)
            if name_pos is None:
                continue
            s, n = vector(name_pos)
            if bytes(buf[s:s + n]).decode("utf-8", "replace") != name:
                continue
            index_pos = field(entry, 1)
            index = u32(index_pos) if index_pos is not None else 0
            bfirst, _ = vector(buffers)
            table = bfirst + 4 * index + u32(bfirst + 4 * index)
            data_pos = field(table, 0)
            if data_pos is not None:
                d, n = vector(data_pos)
                return bytes(buf[d:d + n])
            off_pos, size_pos = field(table, 1), field(table, 2)
            if off_pos is not None and size_pos is not None:
                off = struct.unpack_from("<Q", buf, off_pos)[0]
                return bytes(buf[off:off + struct.unpack_from("<Q", buf, size_pos)[0]])
            return None
    except (struct.error, IndexError):
        return None
    return None


def score_file(path, x, y, runtime=None, threads=None, batch=32):
    """Top-1 (or per-pixel) accuracy of a .tflite/.onnx artifact on pixels `x` (0-255) and
    labels `y`, fed through the artifact's stored contract. {"accuracy", "n", "preprocess"}."""
    predictor = load_predictor(path, runtime=runtime, threads=threads)
    contract = read_contract(path)
    correct = total = 0
    for i in range(0, len(x), batch):
        out = np.asarray(predictor(apply_contract(x[i:i + batch], contract))[0])
        truth = np.asarray(y[i:i + batch])
        pred = out.argmax(-1) if out.shape[-1] > 1 else (out[..., 0] > 0.5).astype(np.int64)
        pred = pred.reshape(truth.shape)
        correct += int(np.sum(pred == truth))
        total += int(truth.size)
    return {"accuracy": correct / float(total) if total else None, "n": int(len(y)),
            "preprocess": (contract or {}).get("preprocess", "unit (none stored)")}


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="runner.py", description="Time a .tflite or .onnx model.")
    p.add_argument("model")
    p.add_argument("--runtime", default=None, help="litert | onnxruntime (default: from the suffix)")
    p.add_argument("--threads", type=int, default=None, help="default: all cores available")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs, at least")
    p.add_argument("--min-runs", type=int, default=MIN_RUNS)
    p.add_argument("--max-runs", type=int, default=100000)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--data", default=None, help="a .npz of pixels 0-255 (x) and labels (y): also score "
                   "accuracy, feeding the pixels through the artifact's stored input contract")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    try:
        if args.batch < 1:
            raise RunnerError("--batch must be >= 1")
        result = bench_file(args.model, runtime=args.runtime, threads=args.threads, batch=args.batch,
                            warmup=args.warmup, min_time=args.min_time, min_runs=args.min_runs,
                            max_runs=args.max_runs)
        if args.data:
            with np.load(args.data) as archive:
                result["score"] = score_file(args.model, archive["x"], archive["y"], runtime=args.runtime,
                                             threads=args.threads)
    except (RunnerError, OSError, KeyError) as exc:
        sys.stderr.write("runner: error: %s\n" % exc)
        return 2
    result["env"] = device_info()
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        lat = result["latency_ms"]
        sys.stdout.write("%s  %s (%s) threads=%d batch=%d  p50 %.3f ms  p90 %.3f  p99 %.3f  n=%d  "
                         "load %.1f ms  cold %.2f ms\n" % (
                             result["path"], result["runtime"], result["backend"], result["threads"],
                             result["batch"], lat["p50"], lat["p90"], lat["p99"], lat["n"],
                             result["load_ms"], result["cold_ms"]))
        if "score" in result:
            sc = result["score"]
            sys.stdout.write("accuracy %.4f (n=%d, preprocess %s)\n" % (sc["accuracy"], sc["n"], sc["preprocess"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
