"""Core ML ML Program (.mlpackage) through coremltools, with its optional weight compression.

Converted from the model's concrete serving function (`ct.convert([concrete_fn],
source="tensorflow")`): the only path STACK.md found working for both Keras flavours (tf_keras
model objects and Keras 3 Sequential objects fail). The batch dimension stays flexible
(`RangeDim`), inputs keep the model's input names, outputs are renamed output_0..n.

Precisions: none (float32 compute), float16 (float16 compute, Core ML's default on device),
int8 (float32 compute over int8 linearly-quantized weights, `coremltools.optimize`). Options add
palettization and pruning.

Core ML predicts only on macOS. On Linux the package is converted, then loaded back without a
predictor and checked structurally (inputs, outputs, op list) during export; `load()` raises
Unavailable, so validation records `unverified: needs macOS` instead of a number.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Optional

from exporters import _common
from optkit.errors import Unavailable, UserError
from optkit.options import option
from optkit.runner import Predictor, TensorSpec
from optkit.runtimes import Runtime

NAME = "coreml"
SUFFIX = ".mlpackage"
PRECISIONS = ("none", "float16", "int8")
NAMES_OUTPUTS = True

# Largest batch the package accepts; Core ML needs a bound for a flexible dimension.
MAX_BATCH = 64
@dataclass(frozen=True)
class Options:
    palettize_bits: Optional[int] = option(None, "palettize weights to 2**bits shared values", min=1, max=8)
    prune_sparsity: Optional[float] = option(None, "prune weights to this share of zeros", min=0.0, max=1.0,
                                             max_open=True)
    weight_threshold: int = option(2048, "compress only weights with at least this many elements", min=0)
    minimum_deployment_target: str = option("", "e.g. iOS16 (default: iOS16 when compressing)")
    max_batch: int = option(MAX_BATCH, "largest batch the package accepts", min=1)


OPTIONS = Options


def available():
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        return False, "coremltools is not installed (pip install 'optkit[export]')"
    return True, ""


def can_predict():
    """(bool, reason): Core ML's predictor exists only on macOS."""
    if platform.system() != "Darwin":
        return False, "needs macOS (Core ML prediction is only supported on macOS)"
    return True, ""


def export(model, out_path, *, quantize="none", data=None, **options):
    """Write `out_path` (.mlpackage). Options: palettize_bits (1-8, k-means palettization),
    prune_sparsity (0-1, magnitude pruning), weight_threshold (int, smallest weight tensor that
    is compressed; coremltools' default 2048), minimum_deployment_target (e.g. "iOS16"),
    max_batch (int, default 64)."""
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    import coremltools as ct

    from exporters import _graph

    # The frozen, inlined graph (exporters._graph): coremltools cannot convert the nested
    # XLA-marked call Keras 3 makes of a grouped convolution (ConvNeXt), issue #17.
    frozen = _graph.freeze(model)
    concrete, specs = frozen.concrete_function(), frozen.specs
    max_batch = int(options.get("max_batch", MAX_BATCH))
    inputs = [ct.TensorType(name=s.name, shape=(ct.RangeDim(1, max_batch),) + tuple(int(d) for d in s.shape[1:]))
              for s in specs]
    compressing = quantize == "int8" or "palettize_bits" in options or "prune_sparsity" in options
    target = options.get("minimum_deployment_target") or ("iOS16" if compressing else None)
    kwargs = {"minimum_deployment_target": getattr(ct.target, target)} if target else {}
    precision = ct.precision.FLOAT16 if quantize == "float16" else ct.precision.FLOAT32
    with _common.quiet_stdout():
        mlmodel = ct.convert([concrete], source="tensorflow", convert_to="mlprogram", inputs=inputs,
                             compute_precision=precision, **kwargs)
    mlmodel = _rename_outputs(ct, mlmodel)
    details = {"converter": "coremltools.convert (frozen, inlined concrete function)", "compute_precision": precision.name,
               "coremltools": ct.__version__, "max_batch": max_batch}
    if target:
        details["minimum_deployment_target"] = target
    mlmodel = _compress(ct, mlmodel, quantize, options, details)
    with _common.atomic_output(out_path) as tmp:
        mlmodel.save(tmp)
    structure = inspect(out_path)
    _check_structure(structure, specs, len(frozen.output_names))
    details.update(structure)
    return details


def _rename_outputs(ct, mlmodel):
    spec = mlmodel.get_spec()
    current = [o.name for o in spec.description.output]
    wanted = _common.output_names(len(current))
    if current == wanted:
        return mlmodel
    for old, new in zip(current, wanted):
        ct.utils.rename_feature(spec, old, new, rename_inputs=False)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def _compress(ct, mlmodel, quantize, options, details):
    cto = ct.optimize.coreml
    threshold = int(options.get("weight_threshold", 2048))
    if "prune_sparsity" in options:
        sparsity = float(options["prune_sparsity"])
        config = cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(
            target_sparsity=sparsity, weight_threshold=threshold))
        mlmodel = cto.prune_weights(mlmodel, config)
        details["pruned_sparsity"] = sparsity
    if "palettize_bits" in options:
        bits = int(options["palettize_bits"])
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=bits, weight_threshold=threshold))
        mlmodel = cto.palettize_weights(mlmodel, config)
        details["palettized_bits"] = bits
    if quantize == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", weight_threshold=threshold))
        mlmodel = cto.linear_quantize_weights(mlmodel, config)
        details["weights"] = "int8 linear symmetric per channel"
    details["weight_threshold"] = threshold
    return mlmodel


def inspect(path):
    """Inputs, outputs and op list of an .mlpackage, read without a predictor (works on Linux)."""
    import coremltools as ct

    try:
        with _common.quiet_stdout():
            model = ct.models.MLModel(os.fspath(path), skip_model_load=True)
    except Exception as exc:
        raise UserError(f"{path}: not a loadable Core ML package: {_common.first_line(exc)}") from None
    spec = model.get_spec()
    info = {
        "spec_version": spec.specificationVersion,
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
    }
    if spec.WhichOneof("Type") == "mlProgram":
        main = spec.mlProgram.functions["main"]
        block = main.block_specializations[main.opset]
        ops = [op.type for op in block.operations]
        info.update(model_type="mlProgram", opset=main.opset, ops=sorted(set(ops)), op_count=len(ops))
    else:
        info["model_type"] = spec.WhichOneof("Type")
    return info


def _feature(f):
    kind = f.type.WhichOneof("Type")
    out = {"name": f.name, "type": kind}
    if kind == "multiArrayType":
        arr = f.type.multiArrayType
        out["shape"] = list(arr.shape)
        ranges = list(arr.shapeRange.sizeRanges)
        if ranges:
            out["shape_range"] = [[r.lowerBound, r.upperBound] for r in ranges]
    return out


def _check_structure(info, specs, n_outputs):
    """The package must have the model's inputs (names, per-sample shape) and output count."""
    names = [i["name"] for i in info["inputs"]]
    if names != [s.name for s in specs]:
        raise RuntimeError(f"Core ML inputs {names}, expected {[s.name for s in specs]}")
    for feat, s in zip(info["inputs"], specs):
        if feat.get("shape", [])[1:] != [int(d) for d in s.shape[1:]]:
            raise RuntimeError(f"Core ML input {feat['name']} has shape {feat.get('shape')}, expected "
                               f"(batch,) + {tuple(s.shape[1:])}")
    expected = _common.output_names(n_outputs)
    if [o["name"] for o in info["outputs"]] != expected:
        raise RuntimeError(f"Core ML outputs {[o['name'] for o in info['outputs']]}, expected {expected}")
    if not info.get("ops"):
        raise RuntimeError("Core ML program has no operations")


class CoreMLPredictor(Predictor):
    """Runs an .mlpackage with Core ML (macOS only), CPU only by default for comparable numbers."""

    runtime = "coreml"
    backend = "coremltools"

    def __init__(self, path, threads, compute_units="CPU_ONLY"):
        Predictor.__init__(self, path, threads)
        import coremltools as ct

        self.backend_version = ct.__version__
        self._model = ct.models.MLModel(os.fspath(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        info = inspect(path)
        self.inputs = [TensorSpec(i["name"], [None] + i["shape"][1:], "float32") for i in info["inputs"]]
        self.outputs = [TensorSpec(o["name"], [None] + o.get("shape", [])[1:], "float32") for o in info["outputs"]]

    def __call__(self, *arrays):
        import numpy as np

        self._check_arity(arrays)
        out = self._model.predict({s.name: np.asarray(a, np.float32) for s, a in zip(self.inputs, arrays)})
        return [np.asarray(out[s.name], np.float32) for s in self.outputs]


def load(path, *, threads=None, compute_units="CPU_ONLY", **options):
    """A Core ML predictor on macOS; elsewhere Unavailable (the package was checked at export)."""
    ok, reason = can_predict()
    if not ok:
        raise Unavailable(reason)
    from optkit import runner

    return CoreMLPredictor(path, threads or runner.default_threads(), compute_units=compute_units)


# Its packages run only here: the runtime `optkit bench --runtime coreml` (optkit.runtimes).
RUNTIME = Runtime("coreml", ("mlpackage", "mlmodel"), load, "Core ML packages (prediction needs macOS)",
                  default_for=("mlpackage", "mlmodel"))
