"""TensorFlow SavedModel: the serving function of a Keras model, with its `serving_default`
signature (inputs named after the model's inputs, outputs output_0..n).

Keras 3 models are written by Keras' own `model.export`; tf_keras models and plain SavedModels
with `tf.saved_model.save` of a module holding the model (so its variables are tracked) and the
named serving function. Loading runs the
serving signature through TensorFlow: this format is for TF Serving / TF runtimes, not devices.
"""
from __future__ import annotations

import os
import re

from exporters import _common
from optkit.errors import UserError
from optkit.options import NoOptions
from optkit.runner import Predictor, TensorSpec

NAME = "saved_model"
SUFFIX = "_saved_model"      # a directory: model_saved_model/
PRECISIONS = ("none",)
NAMES_OUTPUTS = True
OPTIONS = NoOptions      # takes no converter options


def available():
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return False, "tensorflow is not installed (pip install 'optkit[tf]')"
    return True, ""


def export(model, out_path, *, quantize="none", data=None, **options):
    _common.check_request(NAME, PRECISIONS, OPTIONS, quantize, options)
    from optkit import keras_io

    tf = keras_io.tf()
    flavour = keras_io.flavour_of(model)
    with _common.atomic_output(out_path) as tmp:
        if flavour == keras_io.KERAS3:
            # Keras 3's own exporter: tf.saved_model.save of a Keras 3 model writes a SavedModel that
            # serves correctly but that TFLiteConverter.from_saved_model turns into NaNs when it
            # has BatchNormalization (measured; model.export's does not). Outputs: output_0..n.
            model.export(tmp, format="tf_saved_model", verbose=False)
            how = "keras.Model.export(format='tf_saved_model')"
        else:
            _, concrete, _ = _common.named_serving_function(model)
            holder = tf.Module()
            # Attribute assignment makes tf.Module track the model's variables, so they are saved.
            holder.model = model.loaded if isinstance(model, keras_io.SavedModelCallable) else model
            tf.saved_model.save(holder, tmp, signatures={"serving_default": concrete})
            how = "tf.saved_model.save (named serving function)"
        order = _common.input_names(model)
        _write_input_order(tmp, order)
    return {"converter": how, "signature": "serving_default", "source_flavour": flavour, "input_order": order}


# A signature's inputs are keyword arguments: the SavedModel itself has no positional order, and
# TF lists them alphabetically. The model's order is kept next to it, in `assets.extra/` (the
# directory TF Serving reserves for extra files; loaders ignore it), so positional callers
# (validation, bench) feed each array to the right input.
_ORDER_FILE = os.path.join("assets.extra", "optkit_inputs.json")


def _write_input_order(path, order):
    import json

    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, _ORDER_FILE), "w") as fh:
        json.dump({"inputs": order}, fh)


def _read_input_order(path, names):
    """The model's input order if recorded and consistent with the signature, else the signature's."""
    import json

    try:
        with open(os.path.join(path, _ORDER_FILE)) as fh:
            order = json.load(fh)["inputs"]
    except (OSError, ValueError, KeyError):
        return list(names)
    return list(order) if sorted(order) == sorted(names) else list(names)


def _natural(name):
    # output_10 after output_9: signature dicts come back in string order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class SavedModelPredictor(Predictor):
    """Runs a SavedModel's serving signature (float32 in, list of float32 out)."""

    runtime = "tensorflow"
    backend = "tensorflow.saved_model"

    def __init__(self, path, threads):
        Predictor.__init__(self, path, threads)
        from optkit import keras_io

        tf = keras_io.tf()
        self.backend_version = tf.__version__
        try:
            self._loaded = tf.saved_model.load(os.fspath(path))
        except Exception as exc:
            raise UserError(f"{path}: cannot load SavedModel: {_common.first_line(exc)}") from None
        if "serving_default" not in self._loaded.signatures:
            raise UserError(f"{path}: SavedModel has no 'serving_default' signature")
        self._fn = self._loaded.signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        self._names = _read_input_order(os.fspath(path), list(kwargs))
        self._specs = [kwargs[n] for n in self._names]
        self.inputs = [TensorSpec(n, _shape(kwargs[n].shape), kwargs[n].dtype.name) for n in self._names]
        outs = self._fn.structured_outputs
        self._out_names = sorted(outs, key=_natural)
        self.outputs = [TensorSpec(n, _shape(outs[n].shape), outs[n].dtype.name) for n in self._out_names]
        self._tf = tf

    def __call__(self, *arrays):
        self._check_arity(arrays)
        feed = {}
        for name, spec, a in zip(self._names, self._specs, arrays):
            tensor = self._tf.convert_to_tensor(a, dtype=spec.dtype)
            # Checked here: a wrongly shaped input can abort the whole process inside TF's kernels
            # (a oneDNN CHECK failure) instead of raising.
            if not spec.shape.is_compatible_with(tensor.shape):
                raise ValueError(f"input '{name}' has shape {tuple(tensor.shape)}; the SavedModel expects "
                                 f"{tuple(spec.shape)}")
            feed[name] = tensor
        out = self._fn(**feed)
        return [out[n].numpy() for n in self._out_names]


def _shape(shape):
    return [None if d is None else int(d) for d in shape.as_list()] if shape.rank is not None else []


def load(path, *, threads=None, **options):
    from optkit import runner

    if threads:
        _set_tf_threads(threads)
    return SavedModelPredictor(path, threads or runner.default_threads())


def _set_tf_threads(threads):
    from optkit import keras_io

    tf = keras_io.tf()
    try:
        # Only possible before TF initialises its runtime; afterwards the process keeps its pool.
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError:
        pass
