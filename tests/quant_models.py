"""Trained models that full-integer quantization hurts, built the way the failure happens in
real models (shared by tests/test_quant_debug.py and benchmarks/quantization.py).

    wide_channel_cnn   one conv whose output has a channel ~300x wider than the rest (as after
                       an unnormalised feature or a folded scale); the next conv reads it with a
                       correspondingly tiny weight. Per-tensor int8 of that activation leaves the
                       other channels a few levels each; per-channel weights of the next conv zero
                       its tiny weights. Function-preserving in float.
    hardswish_mobilenet  MobileNetV3-style blocks (depthwise separable, hard-swish, no BN).
    large_residual     a residual net whose activations grow along the residual stream.
"""
from __future__ import annotations

import numpy as np

SHAPE = (16, 16, 3)
CLASSES = 4
WIDE_FACTOR = 300.0


def faint_quadrant_task(n_train=768, n_val=256, n_test=256, seed=0, contrast=0.4):
    """Four classes: a faint patch (`contrast` above noise of amplitude 1) in one quadrant.

    Faint on purpose: with a bright patch one int8 level per pixel still finds it and nothing
    breaks; here the evidence is in small differences that coarse int8 scales wipe out.
    """
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, CLASSES, n).astype(np.int64)
        x = rng.random((n,) + SHAPE, dtype=np.float32) * (1 - contrast)
        for i, label in enumerate(y):
            r, c = divmod(int(label), 2)
            x[i, r * 8 + 1:r * 8 + 7, c * 8 + 1:c * 8 + 7, :] += contrast
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = make(n_train), make(n_val), make(n_test)
    return SimpleNamespace(x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys,
                           num_classes=CLASSES, input_shape=SHAPE, class_names=[str(i) for i in range(CLASSES)],
                           source="faint-quadrant")


def _fit(model, data, epochs=4):
    from optkit.train import fit

    fit(model, data, epochs=epochs, batch_size=32, learning_rate=3e-3, progress=False)
    return model


def wide_channel_cnn(data, seed=0, epochs=6):
    """10 quantizable layers (so the 20% float limit allows 2); softmax head as users ship."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(SHAPE)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="wide")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    h = L.Conv2D(24, 3, padding="same", activation="relu", name="conv4")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dense(32, activation="relu", name="fc1")(h)
    h = L.Dense(32, activation="relu", name="fc2")(h)
    h = L.Dense(16, activation="relu", name="fc3")(h)
    out = L.Dense(CLASSES, activation="softmax", name="head")(h)
    model = _fit(keras.Model(inp, out, name="wide_channel"), data, epochs)
    widen_channel(model, "wide", "conv3", data.x_train[:64], factor=WIDE_FACTOR)
    return model


def widen_channel(model, layer, consumer, x, factor=WIDE_FACTOR):
    """Scale the most active output channel of `layer` (on `x`) by `factor` and its input weights
    in `consumer` by 1/factor: the same function in float (ReLU commutes with a positive scale).
    A dead channel would change nothing, hence the most active one."""
    import keras

    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    channel = int(np.argmax(np.asarray(probe(x)).mean(axis=(0, 1, 2))))
    k, b = model.get_layer(layer).get_weights()
    k[..., channel] *= factor
    b[channel] *= factor
    model.get_layer(layer).set_weights([k, b])
    weights = model.get_layer(consumer).get_weights()
    weights[0][:, :, channel, :] /= factor
    model.get_layer(consumer).set_weights(weights)


def _bn(L, name):
    # momentum 0.9: short trainings leave 0.99's moving statistics unconverged (STACK.md)
    return L.BatchNormalization(momentum=0.9, name=name)


def scale_bn_channel(model, bn, channel, factor):
    """Multiply one output channel of a BatchNormalization layer by `factor` (gamma and beta)."""
    gamma, beta, mean, var = model.get_layer(bn).get_weights()
    gamma[channel] *= factor
    beta[channel] *= factor
    model.get_layer(bn).set_weights([gamma, beta, mean, var])


def scale_input_channel(model, layer, channel, factor):
    """Multiply the weights a conv/dense layer applies to one input channel by `factor`."""
    weights = model.get_layer(layer).get_weights()
    weights[0][..., channel, :] *= factor
    model.get_layer(layer).set_weights(weights)


def _most_active(model, layer, x):
    import keras

    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    return int(np.argmax(np.abs(np.asarray(probe(x))).mean(axis=(0, 1, 2))))


def hardswish_mobilenet(data, seed=0, epochs=6, factor=WIDE_FACTOR):
    """MobileNetV3-style inverted bottlenecks (1x1 expand, 3x3 depthwise, hard-swish, linear 1x1
    projection) with one outlier channel in a bottleneck: the first block's projection output
    channel is scaled by `factor` (BN gamma/beta) and the next expansion reads it with 1/factor,
    the same function in float. 12 quantizable layers."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(SHAPE)
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    h = L.Activation("hard_swish", name="stem_hs")(_bn(L, "stem_bn")(h))
    for i, (expand, out, stride) in enumerate([(48, 24, 2), (72, 32, 1), (96, 40, 2)]):
        h = L.Conv2D(expand, 1, use_bias=False, name=f"b{i}_expand")(h)
        h = L.Activation("hard_swish", name=f"b{i}_expand_hs")(_bn(L, f"b{i}_expand_bn")(h))
        h = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"b{i}_dw")(h)
        h = L.Activation("hard_swish", name=f"b{i}_dw_hs")(_bn(L, f"b{i}_dw_bn")(h))
        h = L.Conv2D(out, 1, use_bias=False, name=f"b{i}_project")(h)
        h = _bn(L, f"b{i}_project_bn")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(CLASSES, activation="softmax", name="head")(h)
    model = _fit(keras.Model(inp, out, name="hardswish_mobilenet"), data, epochs)
    channel = _most_active(model, "b0_project_bn", data.x_train[:64])
    scale_bn_channel(model, "b0_project_bn", channel, factor)
    scale_input_channel(model, "b1_expand", channel, 1.0 / factor)
    return model


def large_residual(data, seed=0, epochs=6, factor=100.0, blocks=3):
    """A residual net whose residual stream carries one large channel (as in deep nets, where a
    few channels grow far beyond the rest): scaled by `factor` at the stem and at every block's
    last BN, read with 1/factor by every block's first conv and by the head. The same function
    in float; every Add carries the wide channel, so no single layer kept float fixes it."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(SHAPE)
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    h = L.ReLU(name="stem_relu")(_bn(L, "stem_bn")(h))
    for i in range(blocks):
        r = L.Conv2D(16, 3, padding="same", use_bias=False, name=f"res{i}a")(h)
        r = L.ReLU(name=f"res{i}a_relu")(_bn(L, f"res{i}a_bn")(r))
        r = L.Conv2D(16, 3, padding="same", use_bias=False, name=f"res{i}b")(r)
        r = _bn(L, f"res{i}b_bn")(r)
        h = L.ReLU(name=f"add{i}_relu")(L.Add(name=f"add{i}")([h, r]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(CLASSES, activation="softmax", name="head")(h)
    model = _fit(keras.Model(inp, out, name="large_residual"), data, epochs)
    channel = _most_active(model, "stem_bn", data.x_train[:64])
    scale_bn_channel(model, "stem_bn", channel, factor)
    for i in range(blocks):
        scale_input_channel(model, f"res{i}a", channel, 1.0 / factor)
        scale_bn_channel(model, f"res{i}b_bn", channel, factor)
    scale_input_channel(model, "head", channel, 1.0 / factor)
    return model
