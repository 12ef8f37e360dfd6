"""What `optkit inspect` reports about a model: parameters, multiply-adds, layers, flavour, I/O,
and which rewrites apply. One dict, the JSON shape of DESIGN.md."""
from __future__ import annotations

import math
from collections import Counter

from optkit import keras_io


def summarize(loaded: keras_io.LoadedModel) -> dict:
    model = loaded.model
    if loaded.flavour == keras_io.SAVED_MODEL:
        # A plain SavedModel has variables but no layers: count what can be counted.
        params = model.count_params()
        return {"path": loaded.path, "flavour": loaded.flavour, "params": params, "trainable_params": None,
                "flops": None, "inputs": _specs(keras_io.input_specs(model)),
                "outputs": _specs(keras_io.output_specs(model)), "layers": {},
                "rewrites": {"separable": 0, "pooling": False}}
    layers = list(_leaf_layers(model))
    return {
        "path": loaded.path,
        "name": model.name,
        "flavour": loaded.flavour,
        "params": int(model.count_params()),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "flops": total_multiply_adds(model),
        "inputs": _specs(keras_io.input_specs(model)),
        "outputs": _specs(keras_io.output_specs(model)),
        "layers": dict(sorted(Counter(type(l).__name__ for l in layers).items())),
        "rewrites": _rewrites(model, loaded.flavour),
        "channel_pruning": _channel_pruning(model),
    }


def _specs(specs):
    return [{"name": n, "shape": list(s), "dtype": d} for n, s, d in specs]


def _leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer


def total_multiply_adds(model) -> int:
    """Multiply-adds of one inference at batch 1, summed over the layers (see multiply_adds)."""
    return int(sum(multiply_adds(layer) for layer in _leaf_layers(model)))


def multiply_adds(layer) -> int:
    """Multiply-accumulates of one inference of `layer` at batch 1, for the layers that dominate
    a CNN's cost (convolutions and Dense). Normalisation, pooling and activations are left out:
    they are cheap and BatchNormalization folds into the convolution when exported."""
    kind = type(layer).__name__
    try:
        out_shape = tuple(layer.output.shape)
        in_shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        return 0   # a shared layer has no single input/output; its calls are not counted
    if None in out_shape[1:] or None in in_shape[1:]:
        return 0
    out_positions = math.prod(out_shape[1:-1])
    cin = in_shape[-1]
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        k = math.prod(layer.kernel_size)
        return out_positions * k * (cin // getattr(layer, "groups", 1)) * layer.filters
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return out_positions * math.prod(layer.kernel_size) * cin * layer.depth_multiplier
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        k = math.prod(layer.kernel_size)
        dm = layer.depth_multiplier
        # depthwise at the output resolution (strides apply in the depthwise step), then pointwise
        return out_positions * (k * cin * dm + cin * dm * layer.filters)
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return math.prod(in_shape[1:-1]) * math.prod(layer.kernel_size) * cin * layer.filters
    if kind == "Dense":
        return math.prod(in_shape[1:-1] or (1,)) * cin * layer.units
    return 0


def _rewrites(model, flavour):
    """How many Conv2D the `separable` step would rewrite and whether `pooling` applies,
    answered by the steps themselves so inspect and optimize never disagree."""
    from optkit.steps import pooling, separable

    k3 = model if flavour == keras_io.KERAS3 else _as_keras3(model)
    if k3 is None:
        return {"separable": 0, "pooling": False, "note": "model cannot be expressed in Keras 3"}
    return {"separable": separable.eligible_count(k3), "pooling": pooling.applicable(k3)}


def _channel_pruning(model):
    """Which channel groups `channel_prune` can shrink, answered by the step itself."""
    from optkit.steps import channel_prune

    try:
        return channel_prune.inspect(model)
    except Exception as exc:   # reporting only: a graph optkit cannot read must not hide the rest
        return {"prunable_groups": 0, "note": f"not analysed: {type(exc).__name__}: {exc}"[:200]}


def _as_keras3(model):
    try:
        return keras_io.to_keras3(model)
    except Exception:
        return None
