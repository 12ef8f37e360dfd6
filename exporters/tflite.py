"""TFLite (LiteRT): float32, dynamic range, float16 and full int8 through TFLiteConverter.

Converts Keras models of both flavours with `TFLiteConverter.from_keras_model` (the path that
also handles tfmot's quantization-aware tf_keras models: their fake-quant ranges become the int8
scales). Runs with optkit.runner's LiteRT predictor (ai_edge_litert, else tflite_runtime, else
tf.lite), so there is one implementation of "how to run a .tflite"; this module adds what only
export cares about: tensor types, the op list and whether XNNPACK took the graph.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from exporters import _common
from optkit import quant_debug
from optkit.errors import Unavailable, UserError
from optkit.options import option
from optkit.runner import Predictor

NAME = "tflite"
SUFFIX = ".tflite"
PRECISIONS = ("none", "dynamic", "float16", "int8")

@dataclass(frozen=True)
class Options(quant_debug.Int8Options):
    int8_io: bool = option(True, "for int8, int8 inputs and outputs (false: float I/O around int8 ops)")
    allow_float: bool = option(False, "for int8, let ops with no int8 kernel stay float")
    calibration_samples: int = option(_common.CALIBRATION_SAMPLES, "representative samples for int8", min=1)
    sparse: bool = option(False, "keep pruned weights in the sparse encoding where LiteRT runs it")


OPTIONS = Options


def available():
    try:
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None:
            return False, "tensorflow is not installed (pip install 'optkit[tf]')"
    except ValueError:
        pass
    return True, ""


def export(model, out_path, *, quantize="none", data=None, **options):
    """Write `out_path` (.tflite). Options:

    int8_io (bool, default True): for quantize=int8, int8 input/output tensors (scale and zero
        point recorded) instead of float32 I/O around an int8 body.
    allow_float (bool, default False): for int8, let ops with no int8 kernel stay float instead
        of failing the conversion.
    calibration_samples (int, default 100): representative samples for int8.
    sparse (bool, default False): keep pruned weights in the converter's sparse encoding
        (EXPERIMENTAL_SPARSITY), measured against the dense conversion; where LiteRT's XNNPACK
        cannot run it the dense model is written and `details["sparse"]` says why (exporters/_sparse.py).
    quant_report, keep_float, max_accuracy_drop, float_limit: per-layer diagnosis and selective
        float fallback for int8 (optkit.quant_debug, through LiteRT's QuantizationDebugger).
    """
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    details = {"converter": "TFLiteConverter", "quantize": quantize}
    flatbuffer = _convert(model, quantize, data, options, details, sparse=bool(options.get("sparse", False)))
    if options.get("sparse", False):
        from exporters import _sparse

        flatbuffer, details["sparse"] = _sparse.keep_if_it_runs(
            flatbuffer, lambda: _convert(model, quantize, data, options, {}, sparse=False),
            ops_of=lambda path: inspect(path).get("ops", []))
    with _common.atomic_output(out_path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(flatbuffer)
    details.update(inspect(out_path))
    return details


def _convert(model, quantize, data, options, details, *, sparse):
    from optkit import keras_io

    tf = keras_io.tf()
    converter = _converter(model, tf)
    if quantize in ("dynamic", "float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = list(converter.optimizations) + [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        samples, source = _common.sample_inputs(
            model, data, n=int(options.get("calibration_samples", _common.CALIBRATION_SAMPLES)))
        details["calibration_source"] = source

        def representative():
            for i in range(len(samples[0])):
                yield [a[i:i + 1] for a in samples]

        converter.representative_dataset = representative
        if not options.get("allow_float", False):
            # Full integer: conversion fails loudly if an op has no int8 kernel, rather than
            # shipping a model that silently falls back to float on the device.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if options.get("int8_io", True):
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with _common.quiet_stdout():  # Keras 3's export prints "Saved artifact at ..." on stdout
        if quantize == "int8" and quant_debug.wanted(options):
            flatbuffer, details["quantization"] = quant_debug.tflite_int8(
                model, converter, samples, int8_io=options.get("int8_io", True), data=data, options=options)
            return flatbuffer
        if quantize == "int8":
            details["quantization"] = quant_debug.plain_record("tflite", "minmax", samples)
        return converter.convert()


def _converter(model, tf):
    """Keras 3 and quantization-aware tf_keras models: from_keras_model (the path that turns
    tfmot's fake-quant ranges into int8 scales). Plain tf_keras models: from the named serving
    function, because tf_keras' own signature names outputs after layers and loses their order
    (Keras 3's export already names them output_0..n)."""
    from optkit import keras_io

    flavour = keras_io.flavour_of(model)
    if flavour == keras_io.SAVED_MODEL:
        return tf.lite.TFLiteConverter.from_saved_model(model.path)
    if flavour == keras_io.KERAS3 or keras_io.has_tfmot_layers(model):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    _, concrete, _ = _common.named_serving_function(model)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)


def load(path, *, threads=None, runtime=None, **options):
    """A runner Predictor for `path`; `runtime` may force ai_edge_litert/tflite_runtime/tensorflow.

    Outputs come back in the model's order: the interpreter lists output tensors in graph order,
    which for multi-output models is not the model's; the serving signature's output_0..n is.
    """
    from optkit import runner

    try:
        predictor = runner.load_predictor(os.fspath(path), runtime=runtime, threads=threads)
    except runner.RuntimeMissing as exc:   # the runtime is not installed here: skipped, not failed
        raise Unavailable(str(exc)) from None
    except runner.RunnerError as exc:
        raise UserError(str(exc)) from None
    order = _signature_output_order(predictor)
    return predictor if order is None else SignatureOrdered(predictor, order)


def _signature_output_order(predictor):
    """Permutation putting the runner's outputs in signature order (output_0, output_1, ...), or
    None when it is already right or the signature does not say (e.g. layer-named outputs)."""
    interp = getattr(predictor, "_interp", None)
    if interp is None or len(predictor.outputs) < 2:
        return None
    try:
        outputs = interp._get_full_signature_list()["serving_default"]["outputs"]
    except (AttributeError, KeyError):
        return None
    names = _common.output_names(len(outputs))
    if sorted(outputs) != sorted(names):
        return None
    position = {int(d["index"]): i for i, d in enumerate(interp.get_output_details())}
    order = [position[int(outputs[name])] for name in names]
    return None if order == list(range(len(order))) else order


class SignatureOrdered(Predictor):
    """The runner's TFLite predictor with outputs re-ordered to the model's output order."""

    def __init__(self, inner, order):
        Predictor.__init__(self, inner.path, inner.threads)
        self.inner, self.order = inner, order
        self.runtime, self.backend, self.backend_version = inner.runtime, inner.backend, inner.backend_version
        self.inputs = inner.inputs
        self.outputs = [inner.outputs[i] for i in order]

    def __call__(self, *arrays):
        out = self.inner(*arrays)
        return [out[i] for i in self.order]


def inspect(path):
    """Tensor types, the op list and XNNPACK delegation of a .tflite file (LiteRT, no TF needed).

    The op list is read from an interpreter without the default delegate (the model's own ops);
    XNNPACK is reported from a default interpreter, whose execution plan gains DELEGATE nodes
    for each partition XNNPACK took.
    """
    from optkit import runner

    Interpreter, backend, _ = runner.import_interpreter()
    info = {"interpreter": backend}
    plain_kwargs = {}
    resolver = _resolver_without_delegates(backend)
    if resolver is not None:
        plain_kwargs["experimental_op_resolver_type"] = resolver
    plain = Interpreter(model_path=os.fspath(path), **plain_kwargs)
    plain.allocate_tensors()
    ops = [op["op_name"] for op in plain._get_ops_details()]
    info["ops"] = sorted(set(ops))
    info["op_count"] = len(ops)
    info["inputs"] = [_tensor(d) for d in plain.get_input_details()]
    info["outputs"] = [_tensor(d) for d in plain.get_output_details()]
    tensors = plain.get_tensor_details()
    info["int8_tensors"] = sum(1 for t in tensors if str(t["dtype"].__name__) == "int8")
    info["tensor_count"] = len(tensors)
    try:
        default = Interpreter(model_path=os.fspath(path), num_threads=1)
        default.allocate_tensors()
        delegated = [op for op in default._get_ops_details() if op["op_name"] == "DELEGATE"]
        info["xnnpack"] = {"applied": bool(delegated), "partitions": len(delegated)}
    except Exception as exc:  # reporting only: a delegate problem must not hide the artifact
        info["xnnpack"] = {"applied": False, "error": _common.first_line(exc)}
    return info


def _resolver_without_delegates(backend):
    try:
        if backend == "ai_edge_litert":
            from ai_edge_litert.interpreter import OpResolverType
        elif backend == "tflite_runtime":
            from tflite_runtime.interpreter import OpResolverType
        else:
            from optkit import keras_io

            OpResolverType = keras_io.tf().lite.experimental.OpResolverType
        return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    except (ImportError, AttributeError):
        return None


def _tensor(d):
    scale, zero_point = d.get("quantization", (0.0, 0))
    return {"name": d["name"], "dtype": d["dtype"].__name__,
            "shape": [int(s) for s in (d.get("shape_signature") if d.get("shape_signature") is not None else d["shape"])],
            "quantization": [float(scale), int(zero_point)] if scale else None}
