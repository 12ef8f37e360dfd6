"""`qat`: quantization-aware training with tensorflow-model-optimization, and its collaborative forms.

After `prune` and/or `cluster` a plain `quantize_model` would undo their work (the fake-quant
fine-tune moves zeros and shared values apart). tfmot's collaborative schemes keep it:

    before            scheme                                               name
    nothing           Default8BitQuantizeScheme                            QAT
    prune             Default8BitPrunePreserveQuantizeScheme               PQAT
    cluster           Default8BitClusterPreserveQuantizeScheme(False)      CQAT
    prune + cluster   Default8BitClusterPreserveQuantizeScheme(True)       PCQAT

What came before is read from the pipeline's record (`ctx.extra["history"]`), else from the
weights (compression.detect_history). The result is a quantize-wrapped tf_keras model: it has no
Keras 3 form and is meant for one destination, a full-integer TFLite model (the tflite exporter's
`quantize="int8"`), whose int8 scales come from the fake-quant ranges learnt here.
"""
from __future__ import annotations

import os
import re
import tempfile

from dataclasses import dataclass

from optkit import compression
from optkit import keras_io
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult

SCHEMES = ("auto", "qat", "pqat", "cqat", "pcqat")


def scheme_for(history) -> str:
    if history.pruned and history.clustered:
        return "pcqat"
    if history.clustered:
        return "cqat"
    if history.pruned:
        return "pqat"
    return "qat"


def _scheme_object(mot, name):
    combine = mot.experimental.combine
    if name == "pqat":
        return combine.Default8BitPrunePreserveQuantizeScheme()
    if name == "cqat":
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
    if name == "pcqat":
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    return mot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


_UNSUPPORTED = re.compile(r"Layer (\S+?):<class '[^']*?(\w+)'> is not supported")


def quantize(mot, model, scheme, *, skip_unsupported=False):
    """quantize_annotate + quantize_apply with `scheme`, leaving out layers tfmot cannot quantize.

    Which layers tfmot can take is decided by tfmot itself (its registry plus the layout
    transforms that fold e.g. BatchNormalization into the preceding conv), so we ask it: a
    rejected layer that holds weights (a custom layer) is a UserError naming it unless
    `skip_unsupported`; one without weights (Rescaling, a custom activation) is left float, since
    there is nothing to train and the full-integer converter still quantizes its ops from the
    representative data. Returns (quantized model, layers left float)."""
    tfk = keras_io.tf_keras()
    layers = {layer.name: layer for layer in model.layers if not isinstance(layer, tfk.layers.InputLayer)}
    nested = [name for name, layer in layers.items() if hasattr(layer, "layers") and hasattr(layer, "inputs")]
    if nested:
        raise UserError(f"qat: tensorflow-model-optimization cannot quantize a model nested inside another "
                        f"(layer '{nested[0]}'); build the model flat")
    custom = keras_io.user_objects(layers.values())
    left_float = _rejected_by_registry(mot, layers, skip_unsupported)
    for _ in range(len(layers) + 1):
        keep = set(layers) - set(left_float)
        if not keep:
            break
        if left_float:
            float_config = _float_config(mot)
            custom[type(float_config).__name__] = type(float_config)
            annotated = tfk.models.clone_model(
                model, clone_function=lambda layer: mot.quantization.keras.quantize_annotate_layer(
                    layer, quantize_config=None if layer.name in keep else float_config))
        else:
            annotated = mot.quantization.keras.quantize_annotate_model(model)
        try:
            with mot.quantization.keras.quantize_scope(custom):
                return mot.quantization.keras.quantize_apply(annotated, scheme), left_float
        except RuntimeError as exc:
            match = _UNSUPPORTED.search(str(exc))
            if not match or match.group(1) not in layers:
                raise UserError(f"qat: tensorflow-model-optimization refused the model: "
                                f"{compression.first_line(exc)}") from None
            name, klass = match.group(1), match.group(2)
            if layers[name].weights and not skip_unsupported:
                raise UserError(
                    f"qat: tensorflow-model-optimization cannot quantize layer '{name}' ({klass}); "
                    "pass skip_unsupported=true to leave it in float") from None
            left_float.append(name)
        except ValueError as exc:
            raise UserError(f"qat: tensorflow-model-optimization refused the model: "
                            f"{compression.first_line(exc)}") from None
    raise UserError("qat: no layer of this model can be quantized by tensorflow-model-optimization")


def _float_config(mot):
    """A QuantizeConfig that quantizes nothing: the layer stays float in the QAT model.

    Leaving such a layer unannotated is not enough: quantize_apply still gives a layer that
    follows a quantized one an output quantizer from the registry, which is what rejects it."""
    base = mot.quantization.keras.QuantizeConfig

    class KeepFloatQuantizeConfig(base):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return KeepFloatQuantizeConfig()


def _rejected_by_registry(mot, layers, skip_unsupported):
    """Layers whose quantize config tfmot's registry would reject only deep inside quantize_apply
    (e.g. an Activation layer with hard_silu): asked up front, so the message names the layer and
    a weightless one can simply stay float."""
    registry = mot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    rejected = []
    for name, layer in layers.items():
        if not registry.supports(layer):
            continue
        try:
            registry.get_quantize_config(layer).get_output_quantizers(layer)
        except ValueError as exc:
            if layer.weights and not skip_unsupported:
                raise UserError(f"qat: tensorflow-model-optimization cannot quantize layer '{name}' "
                                f"({type(layer).__name__}): {compression.first_line(exc)}; pass "
                                "skip_unsupported=true to leave it in float") from None
            rejected.append(name)
    return rejected


@dataclass(frozen=True)
class Options:
    scheme: str = option("auto", "auto (from earlier steps) | qat | pqat | cqat | pcqat", choices=SCHEMES)
    skip_unsupported: bool = option(False, "leave layers tfmot cannot quantize in float instead of failing")
    lr: float = option(1e-4, "fine-tune learning rate (Adam)", min=0.0, min_open=True)
    convert: bool = option(True, "convert to int8 TFLite once to report its size (and prove it converts)")


def apply(model, ctx, *, scheme="auto", skip_unsupported=False, lr=1e-4, convert=True):
    compression.require_training_data(ctx, "qat")
    mot = keras_io.tfmot()
    history = compression.detect_history(model, ctx)
    chosen = scheme_for(history) if scheme == "auto" else scheme
    accuracy_before = compression.accuracy(model, ctx.data)
    size_before = compression.weights_file_sizes(model)

    base = keras_io.to_tf_keras(model)   # fresh copy: quantize_model wraps the layers it is given
    qat_model, left_float = quantize(mot, base, _scheme_object(mot, chosen), skip_unsupported=skip_unsupported)
    quantized = [l.layer.name for l in qat_model.layers
                 if type(l).__name__.startswith("QuantizeWrapper") and l.layer.name not in left_float]
    tuned = compression.fine_tune(qat_model, ctx, learning_rate=lr)

    info = {
        "technique": {"qat": "quantization-aware training", "pqat": "pruning-preserving QAT",
                      "cqat": "cluster-preserving QAT",
                      "pcqat": "sparsity- and cluster-preserving QAT"}[chosen] + " (tfmot)",
        "scheme": chosen,
        "scheme_requested": scheme,
        "history": history.to_json(),
        "quantized_layers": quantized,
        "left_float": left_float,
        # Kernels as the fake-quant model holds them (float); PQAT/CQAT keep their zeros/values.
        **compression.describe(qat_model),
        "size_before": size_before,
        "accuracy_before": accuracy_before,
        "accuracy_after": compression.accuracy(qat_model, ctx.data),
        "fine_tune": tuned,
        "model": "quantize-wrapped tf_keras model (fake-quant): it has no Keras 3 form; "
                 "export it with --to tflite --quantize int8",
    }
    if convert:
        info["tflite_int8"] = tflite_int8_facts(qat_model, ctx.data)
    return StepResult(qat_model, info, export_only="tflite:int8")


def tflite_int8_facts(model, data):
    """Convert to full-integer TFLite in a temp dir (what this model is for) and report its size,
    gzip size and tensor types; proves the QAT model converts before the pipeline relies on it."""
    import exporters
    from optkit.runner import file_sizes

    tflite = exporters.get("tflite")
    with tempfile.TemporaryDirectory(prefix="optkit-qat-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        details = tflite.export(model, path, quantize="int8", data=data)
        size, gz = file_sizes(path)
    return {"bytes": size, "gzip_bytes": gz,
            "inputs": details.get("inputs"), "outputs": details.get("outputs"),
            "int8_tensors": details.get("int8_tensors"), "tensor_count": details.get("tensor_count")}


STEP = Step(
    name="qat",
    help="Quantization-aware training (tfmot); PQAT/CQAT/PCQAT after prune/cluster. Export: tflite int8.",
    apply=apply,
    options=Options,
    kind="compression",
)
