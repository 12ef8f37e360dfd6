"""Model files in the formats users bring, generated on the spot (no stored binaries).

`legacy_sequential_h5` rewrites a tf_keras .h5 into what Keras 2.2-2.4 wrote: a Sequential config
with no InputLayer (the first layer carries `batch_input_shape`), a DepthwiseConv2D config with
`groups`, and keras_version 2.2.4.
"""
from __future__ import annotations

import json

import numpy as np


def tiny_tf_keras_sequential(tfk, input_shape=(12, 12, 3), classes=4):
    return tfk.Sequential([
        tfk.layers.Conv2D(6, 3, activation="relu", input_shape=input_shape, name="conv"),
        tfk.layers.DepthwiseConv2D(3, name="dw"),
        tfk.layers.BatchNormalization(name="bn"),
        tfk.layers.Flatten(name="flat"),
        tfk.layers.Dense(classes, activation="softmax", name="head"),
    ])


def legacy_sequential_h5(tfk, path):
    import h5py

    model = tiny_tf_keras_sequential(tfk)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") * 0.3 for w in model.get_weights()])
    model.save(path)
    with h5py.File(path, "r+") as fh:
        config = json.loads(fh.attrs["model_config"])
        layers = config["config"]["layers"]
        first_input = layers.pop(0)
        assert first_input["class_name"] == "InputLayer"
        layers[0]["config"]["batch_input_shape"] = first_input["config"]["batch_input_shape"]
        for layer in layers:
            layer.pop("module", None)
            layer.pop("registered_name", None)
            layer.pop("build_config", None)
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"]["groups"] = 1
        fh.attrs["model_config"] = json.dumps(config).encode()
        fh.attrs["keras_version"] = b"2.2.4"
        fh.attrs["backend"] = b"tensorflow"
    return model
