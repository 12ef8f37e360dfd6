"""Keras 3 `.keras`: the file users get back, loadable by plain Keras 3 (no optkit needed).

tf_keras models are converted with keras_io.to_keras3 first (tf_keras writes a `.keras` that
Keras 3 cannot read, STACK.md). Loading uses Keras 3 itself and runs the model through a
compiled call (keras_io.predict), so validation proves the file round-trips.
"""
from __future__ import annotations

import os

from exporters import _common
from optkit.errors import UserError
from optkit.runner import Predictor, TensorSpec

NAME = "keras"
SUFFIX = ".keras"
PRECISIONS = ("none",)
NAMES_OUTPUTS = True
OPTIONS = ()


def available():
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        return False, "keras 3 is not installed (pip install 'optkit[tf]')"
    return True, ""


def export(model, out_path, *, quantize="none", data=None, **options):
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    from optkit import keras_io

    flavour = keras_io.flavour_of(model)
    if flavour == keras_io.SAVED_MODEL:
        raise UserError("a plain SavedModel has no Keras layers to save as .keras")
    target = keras_io.as_keras3(model)
    with _common.atomic_output(out_path) as tmp:
        target.save(tmp)
    return {"converter": "keras.Model.save", "source_flavour": flavour,
            "converted_from_tf_keras": flavour == keras_io.TF_KERAS}


class KerasPredictor(Predictor):
    """A Keras model run through keras_io.predict (a compiled call, not model.predict)."""

    runtime = "keras"

    def __init__(self, model, path, threads):
        Predictor.__init__(self, path, threads)
        from optkit import keras_io

        self.model = model
        self.backend = keras_io.flavour_of(model)
        self.inputs = [TensorSpec(name, shape, dtype) for name, shape, dtype in keras_io.input_specs(model)]
        n_out = len(keras_io.output_specs(model))
        self.outputs = [TensorSpec(name, shape, dtype) for name, (_, shape, dtype)
                        in zip(_common.output_names(n_out), keras_io.output_specs(model))]

    def __call__(self, *arrays):
        from optkit import keras_io

        self._check_arity(arrays)
        out = keras_io.predict(self.model, list(arrays) if len(arrays) > 1 else arrays[0],
                               batch_size=max(1, len(arrays[0])))
        return list(out) if isinstance(out, (list, tuple)) else [out]


def load(path, *, threads=None, **options):
    """Load with plain Keras 3 (not keras_io.load: the point is that Keras 3 alone reads it)."""
    from optkit import keras_io, runner

    keras = keras_io.keras3()
    try:
        model = keras.models.load_model(os.fspath(path), compile=False)
    except Exception as exc:
        raise UserError(f"{path}: Keras 3 cannot load it: {_common.first_line(exc)}") from None
    return KerasPredictor(model, os.fspath(path), threads or runner.default_threads())
