"""What one inference of a Keras model costs: multiply-adds per layer and in total.

Shared by `optkit inspect` (optkit.inspect_model) and the steps that report what they saved
(channel_prune); a module of its own so that neither imports the other. No TensorFlow import.
"""
from __future__ import annotations

import math


def leaf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from leaf_layers(layer)
        else:
            yield layer


def total_multiply_adds(model) -> int:
    """Multiply-adds of one inference at batch 1, summed over the layers (see multiply_adds)."""
    return int(sum(multiply_adds(layer) for layer in leaf_layers(model)))


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
