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


def hardswish_mobilenet(data, seed=0, epochs=4):
    """MobileNetV3-style: depthwise + pointwise with hard-swish, no BatchNorm to tame ranges."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(SHAPE)
    h = L.Conv2D(16, 3, padding="same", activation="hard_swish", name="stem")(inp)
    for i, (ch, stride) in enumerate([(24, 1), (32, 2), (32, 1), (48, 2)]):
        h = L.DepthwiseConv2D(3, strides=stride, padding="same", activation="hard_swish", name=f"dw{i}")(h)
        h = L.Conv2D(ch, 1, activation="hard_swish", name=f"pw{i}")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(CLASSES, activation="softmax", name="head")(h)
    return _fit(keras.Model(inp, out, name="hardswish_mobilenet"), data, epochs)


def large_residual(data, seed=0, epochs=4, gain=8.0):
    """Residual blocks whose branch output is scaled by `gain`: the residual stream's range grows
    block after block, as in deep nets without normalisation."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input(SHAPE)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inp)
    for i in range(4):
        r = L.Conv2D(16, 3, padding="same", activation="relu", name=f"res{i}a")(h)
        r = L.Conv2D(16, 3, padding="same", name=f"res{i}b")(r)
        r = L.Rescaling(gain, name=f"gain{i}")(r)
        h = L.Add(name=f"add{i}")([h, r])
    h = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(CLASSES, activation="softmax", name="head")(h)
    return _fit(keras.Model(inp, out, name="large_residual"), data, epochs)
