"""Keras and TensorFlow as runtimes (load-only: they run a model file, no exporter involved).

    keras          a direct call compiled with tf.function (no jit)
    keras-predict  the same model through `model.predict` (what most tutorials time)
    tf-xla         the direct call compiled with tf.function(jit_compile=True)

`KerasPredictor` is also what exporters/keras.py validates its `.keras` files with.
"""
from __future__ import annotations

import numpy as np

from optkit import runner
from optkit.errors import UserError
from optkit.runtimes import Runtime

MODES = {"keras": "call", "tf-xla": "xla", "keras-predict": "predict"}


def _set_tf_threads(tf, threads: int) -> int:
    """Set TF's intra-op threads; returns the count in force (TF only accepts it before its
    runtime starts, so a second Keras artifact in one process keeps the first one's setting)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    current = tf.config.threading.get_intra_op_parallelism_threads()
    return current if current > 0 else runner.default_threads()


class KerasPredictor(runner.Predictor):
    """A loaded Keras model (either flavour) or SavedModel callable, called three ways:
    "call" = tf.function(model(x)), "xla" = the same with jit_compile=True, "predict" = model.predict.
    `output_names` renames the outputs (the keras exporter names them output_0, output_1, ...)."""

    def __init__(self, model, path: str, threads: int, runtime: str = "keras", *, output_names=None,
                 set_threads: bool = True):
        from optkit import keras_io

        runner.Predictor.__init__(self, path, threads)
        self.runtime = runtime
        mode = MODES[runtime]
        tf = keras_io.tf()
        if set_threads:
            self.threads = _set_tf_threads(tf, threads)
        self.model = model
        flavour = keras_io.flavour_of(model)
        self.backend = flavour
        self.backend_version = tf.__version__
        self.inputs = [runner.TensorSpec(n, [None if d is None else int(d) for d in s], d_ or "float32")
                       for n, s, d_ in keras_io.input_specs(model)]
        outputs = keras_io.output_specs(model)
        names = output_names or [n for n, _, _ in outputs]
        self.outputs = [runner.TensorSpec(n, [None if d is None else int(d) for d in s], d_ or "float32")
                        for n, (_, s, d_) in zip(names, outputs)]
        if flavour == keras_io.SAVED_MODEL:
            if mode == "predict":
                raise UserError(f"{path}: a plain SavedModel has no model.predict; use --runtime keras")
            sig = model.signature
            inputs = model.input_names
            self._fn = tf.function(lambda *xs: [sig(**dict(zip(inputs, xs)))[k] for k in model.output_names],
                                   jit_compile=(mode == "xla"), reduce_retracing=True)
        elif mode == "predict":
            self._fn = lambda *xs: model.predict(list(xs) if len(xs) > 1 else xs[0],
                                                 batch_size=len(xs[0]), verbose=0)
        else:
            self._fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False),
                                   jit_compile=(mode == "xla"), reduce_retracing=True)
        self._tf = tf

    def __call__(self, *arrays):
        self._check_arity(arrays)
        out = self._fn(*[np.asarray(a, np.float32) for a in arrays])
        flat = self._tf.nest.flatten(out)
        return [np.asarray(o, dtype=np.float32) for o in flat]


def _loader(runtime):
    def load(path, *, threads=None):
        from optkit import keras_io

        threads = threads or runner.default_threads()
        tf = keras_io.tf()
        _set_tf_threads(tf, threads)      # before the model is built: TF fixes it at first use
        return KerasPredictor(keras_io.load(path).model, path, threads, runtime)

    return load


_FILES = ("keras", "h5", "saved_model")
RUNTIMES = [
    Runtime("keras", _FILES, _loader("keras"), "a Keras model (either flavour) or SavedModel, tf.function call",
            aliases=("tf",), default_for=_FILES, needs_tensorflow=True),
    Runtime("keras-predict", ("keras", "h5"), _loader("keras-predict"), "the same model through model.predict",
            aliases=("predict",), needs_tensorflow=True),
    Runtime("tf-xla", _FILES, _loader("tf-xla"), "the direct call compiled with tf.function(jit_compile=True)",
            aliases=("xla",), needs_tensorflow=True),
]
