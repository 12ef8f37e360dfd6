"""ONNX through tf2onnx, run with onnxruntime; float16 and int8 through onnxruntime's own tools.

tf2onnx's `from_keras` fails on Keras 3 Sequential models (STACK.md) and `from_function` keeps
captured constants as inputs and XLA-marked calls (issue #17), so every model is frozen and
inlined first (exporters._graph) and converted with `from_graph_def`; outputs are output_0..n.
Quantization:
  dynamic  onnxruntime.quantization.quantize_dynamic (int8 weights, activations at run time)
  int8     quantize_static, QDQ format, calibrated on --data (or random inputs, and said so)
  float16  onnxruntime.transformers.float16 (float16 weights and math, float32 I/O kept)
`reduce_range=True` because this x86 CPU has AVX2 without VNNI: full-range int8 saturates the
u8s8 multiply there (STACK.md measured top-1 agreement 0.65 -> 0.94 with it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from exporters import _common
from optkit import quant_debug
from optkit.errors import Unavailable, UserError
from optkit.options import option

NAME = "onnx"
SUFFIX = ".onnx"
PRECISIONS = ("none", "dynamic", "float16", "int8")
NAMES_OUTPUTS = True

# Opset 17 converts every zoo model here with tf2onnx 1.17 and runs on onnxruntime >= 1.13.
DEFAULT_OPSET = 17
@dataclass(frozen=True)
class Options(quant_debug.Int8Options):
    opset: int = option(DEFAULT_OPSET, "ONNX opset", min=7)
    # Per-channel weight scales by default: on this project's machines (AVX-512 VNNI) per-tensor int8
    # of small trained models lost 2-4 points where per-channel lost 0.5-1.5 (tests/test_contract.py,
    # tests/test_mutations.py, benchmarks/quantization.py); TFLite is per-channel already.
    per_channel: bool = option(True, "int8: per-channel weight scales (--per-tensor turns it off)")
    reduce_range: bool = option(True, "int8: 7-bit weights (needed on CPUs without VNNI)")
    calibration_samples: int = option(_common.CALIBRATION_SAMPLES, "representative samples for int8", min=1)
    op_types: object = option("", "int8: op types to quantize (comma-separated or a list; default all)")
    calibration_method: str = option("minmax", "int8 calibration", choices=quant_debug.METHODS)


OPTIONS = Options


def available():
    import importlib.util

    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{', '.join(missing)} not installed (pip install 'optkit[export]')"
    return True, ""


def export(model, out_path, *, quantize="none", data=None, **options):
    """Write `out_path` (.onnx). Options: opset (int, default 17); for int8/dynamic:
    per_channel (bool, default True), reduce_range (bool, default True),
    calibration_samples (int, default 100), op_types (comma list, e.g. "Conv,MatMul"),
    calibration_method (minmax|entropy|percentile); quant_report, keep_float, max_accuracy_drop,
    float_limit: per-layer diagnosis and selective float fallback (optkit.quant_debug)."""
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    opset = int(options.get("opset", DEFAULT_OPSET))
    details = {"converter": "tf2onnx.from_graph_def (frozen, inlined)", "opset": opset, "quantize": quantize}
    with _common.atomic_output(out_path) as tmp:
        float_path = tmp if quantize == "none" else tmp + ".float.onnx"
        to_onnx(model, float_path, opset=opset)
        try:
            if quantize == "dynamic":
                _quantize_dynamic(float_path, tmp, options, details)
            elif quantize == "int8":
                quantize_static(model, float_path, tmp, data, options, details)
            elif quantize == "float16":
                to_float16(float_path, tmp, details)
        finally:
            if float_path != tmp and os.path.exists(float_path):
                os.unlink(float_path)
    details.update(inspect(out_path))
    return details


def to_onnx(model, path, *, opset=DEFAULT_OPSET):
    """Float32 ONNX of a Keras model (either flavour) or a keras_io SavedModelCallable.

    Converted from the frozen, fully inlined graph (exporters._graph): tf2onnx's own freezing
    leaves captured constants as graph inputs and XLA-marked calls un-inlined (issue #17)."""
    import tf2onnx

    from exporters import _graph

    frozen = _graph.freeze(model)
    tf2onnx.convert.from_graph_def(frozen.graph_def, input_names=frozen.input_tensors,
                                   output_names=frozen.output_tensors, opset=opset,
                                   tensors_to_rename=frozen.renames(), output_path=os.fspath(path))
    return path


def _quant_kwargs(options):
    return {
        "per_channel": bool(options.get("per_channel", True)),
        "reduce_range": bool(options.get("reduce_range", True)),
    }


def _op_types(options):
    value = options.get("op_types")
    if not value:
        return None
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def _quantize_dynamic(src, dst, options, details):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kwargs = _quant_kwargs(options)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=_op_types(options), **kwargs)
    details.update(quantizer="onnxruntime.quantization.quantize_dynamic", weight_type="QInt8", **kwargs)


def quantize_static(model, src, dst, data, options, details, symmetric=False):
    """Static QDQ int8. `symmetric=True` (zero points 0 for activations and weights) is what
    TensorRT's explicit quantization requires (exporters.tensorrt builds from this)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples, source = _common.sample_inputs(
        model, data, n=int(options.get("calibration_samples", _common.CALIBRATION_SAMPLES)))
    # Shape inference and graph cleanup first, as onnxruntime's docs require for static quantization.
    prepped = src + ".prep.onnx"
    try:
        quant_pre_process(src, prepped, skip_symbolic_shape=False)
    except Exception:  # pre-processing is an optimisation; quantize the raw graph if it fails
        prepped = src
    kwargs = _quant_kwargs(options)
    try:  # optkit.quant_debug: quantize_static (QDQ), diagnosis and nodes_to_exclude
        details["quantization"] = quant_debug.onnx_int8(model, prepped, dst, samples, data=data, options=options,
                                                        op_types=_op_types(options), symmetric=symmetric)
    finally:
        if prepped != src and os.path.exists(prepped):
            os.unlink(prepped)
    details.update(quantizer="onnxruntime.quantization.quantize_static", quant_format="QDQ",
                   activation_type="QInt8", weight_type="QInt8", calibration_source=source, symmetric=symmetric,
                   **kwargs)


def to_float16(src, dst, details):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(m, dst)
    details.update(float16="onnxruntime.transformers.float16 (float32 I/O kept)")


def load(path, *, threads=None, providers=None, **options):
    """A runner Predictor on onnxruntime with explicit threads (and providers, default CPU)."""
    from optkit import runner

    try:
        return runner.load_predictor(os.fspath(path), runtime="onnxruntime", threads=threads, providers=providers)
    except runner.RuntimeMissing as exc:   # the runtime is not installed here: skipped, not failed
        raise Unavailable(str(exc)) from None
    except runner.RunnerError as exc:
        raise UserError(str(exc)) from None


def inspect(path):
    """Opset, op types and quantized-tensor count of an .onnx file."""
    import onnx

    m = onnx.load(os.fspath(path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    int8 = sum(1 for t in m.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "ops": sorted(set(ops)),
        "op_count": len(ops),
        "int8_initializers": int8,
        "inputs": [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}],
        "outputs": [o.name for o in m.graph.output],
    }
