"""Keras 3 `.keras`: the file users get back, loadable by plain Keras 3 (no optkit needed).

tf_keras models are converted with keras_io.to_keras3 first (tf_keras writes a `.keras` that
Keras 3 cannot read, STACK.md). Loading uses Keras 3 itself and runs the model through the keras
runtime's compiled call (optkit.runtimes.keras), so validation proves the file round-trips.
"""
from __future__ import annotations

import os

from exporters import _common
from optkit.errors import UserError
from optkit.options import NoOptions

NAME = "keras"
SUFFIX = ".keras"
PRECISIONS = ("none",)
NAMES_OUTPUTS = True
OPTIONS = NoOptions      # takes no converter options


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


def load(path, *, threads=None, **options):
    """Load with plain Keras 3 (not keras_io.load: the point is that Keras 3 alone reads it)."""
    from optkit import keras_io, runner

    keras = keras_io.keras3()
    try:
        model = keras.models.load_model(os.fspath(path), compile=False)
    except Exception as exc:
        raise UserError(f"{path}: Keras 3 cannot load it: {_common.first_line(exc)}") from None
    from optkit.runtimes.keras import KerasPredictor   # the keras runtime's predictor, outputs named

    n_out = len(keras_io.output_specs(model))
    return KerasPredictor(model, os.fspath(path), threads or runner.default_threads(), "keras",
                          output_names=_common.output_names(n_out), set_threads=False)
