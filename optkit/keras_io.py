"""The Keras-flavour boundary: the one module that knows Keras 3 from tf_keras.

Users hold Keras 3 `.keras` files and old `.h5` files; tensorflow-model-optimization works only
on tf_keras models; the two flavours cannot load each other's files (shared/STACK.md). Everything
else in optkit goes through here to import Keras, load or save a model, or cross the boundary.

Rules kept here:
- `keras` and `tf_keras` are imported explicitly; `tf.keras` is never used, because what it
  resolves to depends on import order and on TF_USE_LEGACY_KERAS.
- Nothing is set in os.environ as an import side effect (tfmot sets TF_USE_LEGACY_KERAS when
  imported; `tfmot()` puts the previous value back).
- Conversions rebuild the model from its layer configs in the other flavour and copy the weights
  layer by layer, so outputs agree to float rounding (tested at 1e-5 over the zoo).
- Every failure a user can cause (missing, empty, truncated, wrong-format file; a Lambda layer
  without --unsafe) is a UserError with one line.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

from optkit.errors import UserError

KERAS3, TF_KERAS, SAVED_MODEL = "keras3", "tf_keras", "saved_model"

# --------------------------------------------------------------------------------------------
# Lazy imports


def _quiet_tf_logs():
    # TensorFlow's C++ banner drowns the one-line messages the CLI promises; respect a user's own
    # setting. Only done right before TF is first imported, never at optkit import time.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _stderr_held_back:
    """TensorFlow's C++ start-up lines (absl, oneDNN, CUDA probing) ignore TF_CPP_MIN_LOG_LEVEL and
    would bury optkit's one-line messages. Hold file descriptor 2 back while TF starts; if the
    import fails, show what was held back. OPTKIT_DEBUG=1 shows everything."""

    def __enter__(self):
        self.saved = None
        if os.environ.get("OPTKIT_DEBUG"):
            return self
        try:
            import sys

            sys.stderr.flush()
            self.buffer = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.buffer.fileno(), 2)
        except (OSError, ValueError):   # no real fd 2 (e.g. some notebook front-ends)
            self.saved = None
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.saved is None:
            return False
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if exc_type is not None:
            self.buffer.seek(0)
            os.write(2, self.buffer.read()[-4000:])
        self.buffer.close()
        return False


def tf():
    """`import tensorflow` on first use."""
    import sys

    if "tensorflow" not in sys.modules:
        _quiet_tf_logs()
        with _stderr_held_back():
            import tensorflow

            tensorflow.config.list_physical_devices()   # device probing logs CUDA errors here too
    import tensorflow

    # Python-side TF warnings (retracing notices, legacy-format nags) are not the user's concern.
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


def keras3():
    """Keras 3 (`import keras`), the flavour users hold and get back."""
    tf()
    import keras

    return keras


def tf_keras():
    """tf_keras (Keras 2 on TF 2.16+), the flavour tfmot needs."""
    tf()
    import tf_keras as tfk

    return tfk


def tfmot():
    """tensorflow_model_optimization, without leaving its TF_USE_LEGACY_KERAS=1 behind.

    tfmot picks tf_keras itself when `tf.keras` is Keras 3 (its compat module checks the
    version), so the variable is not needed once it is imported; leaving it set would change
    what `tf.keras` means for every later import in this process and in child processes.
    """
    tf()
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as mot
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return mot


# --------------------------------------------------------------------------------------------
# Flavour


def flavour_of(model) -> str:
    """'keras3' or 'tf_keras', from the class hierarchy (imports neither flavour)."""
    for klass in type(model).__mro__:
        module = klass.__module__ or ""
        if module.startswith("tf_keras"):
            return TF_KERAS
        if module.startswith("keras"):
            return KERAS3
    if isinstance(model, SavedModelCallable):
        return SAVED_MODEL
    raise UserError(f"not a Keras model: {type(model).__name__}")


def is_builtin(obj) -> bool:
    """True if `obj`'s class comes from Keras itself (either flavour), not from user code or tfmot."""
    module = type(obj).__module__ or ""
    return module.startswith(("keras.", "tf_keras.")) or module in ("keras", "tf_keras")


def class_path(obj) -> str:
    """'Erf from my_layers' - where an object's class comes from, for messages."""
    return f"{type(obj).__name__} from {type(obj).__module__}"


def is_graph_model(model) -> bool:
    """True for Sequential and functional models (their graph is data), False for subclassed ones."""
    names = {k.__name__ for k in type(model).__mro__ if (k.__module__ or "").startswith(("keras.", "tf_keras."))}
    return is_builtin(model) and bool(names & {"Functional", "Sequential"})


def is_tfmot_layer(layer) -> bool:
    """A tensorflow-model-optimization wrapper or layer (QuantizeWrapper, PruneLowMagnitude, ...)."""
    return (type(layer).__module__ or "").startswith("tensorflow_model_optimization")


def has_tfmot_layers(model) -> bool:
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if is_tfmot_layer(layer):
            return True
        stack.extend(getattr(layer, "layers", []))
    return False


def is_op_config(entry: dict) -> bool:
    """A layer entry of a Keras 3 functional config that stands for a `keras.ops` call (x + y,
    ops.mean, ...) rather than a layer."""
    return str(entry.get("module") or "").startswith("keras.src.ops")


def user_objects(layers) -> dict:
    """Classes and activation functions among `layers` that tf_keras cannot deserialize by name
    (custom layers, Keras-3-only activations mapped to same-named functions): what tfmot's
    internal clone must be given as custom objects."""
    custom = {}
    for layer in layers:
        if not (type(layer).__module__ or "").startswith("tf_keras"):
            custom[type(layer).__name__] = type(layer)
        fn = getattr(layer, "activation", None)
        if callable(fn) and not (getattr(fn, "__module__", "") or "").startswith("tf_keras") and hasattr(fn, "__name__"):
            custom[fn.__name__] = fn
    return custom


def cifar_load_batch():
    """Keras 3's CIFAR batch reader (a restricted unpickler); it lives in keras.src, reached only here."""
    keras3()
    from keras.src.datasets.cifar import load_batch

    return load_batch


def from_config_trusted(cls, config):
    """`cls.from_config(config)` with Keras 3's safe mode off: for configs optkit built from a model
    already in memory (its Lambda layers were accepted when it was loaded)."""
    from keras.src.saving import serialization_lib   # Keras 3 offers the scope only here

    with serialization_lib.SafeModeScope(False):
        return cls.from_config(config)


def keras_module(flavour):
    """The Keras package of a flavour: `keras` for 'keras3', `tf_keras` for 'tf_keras'."""
    return keras3() if flavour == KERAS3 else tf_keras()


def keras_module_of(model):
    """The Keras package `model` belongs to, for building layers/optimizers of the same flavour."""
    return keras_module(flavour_of(model))


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    model: Any
    flavour: str
    path: str


class SavedModelCallable:
    """A SavedModel that is not a Keras model: inference only, through its serving signature."""

    def __init__(self, loaded, path):
        self.loaded = loaded
        self.path = path
        sigs = loaded.signatures
        if "serving_default" not in sigs:
            raise UserError(f"{path}: SavedModel has no 'serving_default' signature")
        self.signature = sigs["serving_default"]
        args, kwargs = self.signature.structured_input_signature
        self.input_specs = list(kwargs.values()) if kwargs else list(args)
        self.input_names = list(kwargs.keys()) if kwargs else [s.name for s in args]
        self.output_names = sorted(self.signature.structured_outputs)
        self.name = os.path.basename(os.path.normpath(path))

    def __call__(self, *arrays):
        tf_ = tf()
        feeds = {n: tf_.convert_to_tensor(a, dtype=s.dtype) for n, s, a in zip(self.input_names, self.input_specs, arrays)}
        out = self.signature(**feeds)
        return [out[k].numpy() for k in self.output_names]

    def count_params(self):
        return int(sum(int(v.shape.num_elements()) for v in self.loaded.variables))


def load(path, *, unsafe: bool = False) -> LoadedModel:
    """Load a Keras 3 `.keras`, a tf_keras `.keras`/`.h5` (Keras 2.0-2.4 era too), or a SavedModel dir."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return _load_saved_model(path, unsafe)
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if path.endswith(".weights.h5"):
        raise UserError(f"{path}: a weights-only file; optkit needs a whole model (.keras, .h5 or SavedModel)")
    if magic.startswith(b"PK"):
        return _load_keras_zip(path, unsafe)
    if magic == b"\x89HDF\r\n\x1a\n":
        return _load_h5(path, unsafe)
    raise UserError(f"{path}: not a Keras model (expected a .keras zip, an .h5 file or a SavedModel directory)")


def _refuse_lambda(config, path, unsafe):
    """Keras' safe_mode refuses Lambda layers in .keras files; legacy .h5 loading has no such check,
    so the config is scanned here for every format."""
    if unsafe:
        return
    found = _find_class(config, "Lambda")
    if found:
        raise UserError(f"{path}: contains a Lambda layer ('{found}'), which runs arbitrary code when loaded; "
                        "pass --unsafe only if you trust this file")


def _find_class(node, class_name):
    if isinstance(node, dict):
        if node.get("class_name") == class_name:
            cfg = node.get("config") or {}
            return cfg.get("name", class_name) if isinstance(cfg, dict) else class_name
        for value in node.values():
            hit = _find_class(value, class_name)
            if hit:
                return hit
    elif isinstance(node, list):
        for value in node:
            hit = _find_class(value, class_name)
            if hit:
                return hit
    return None


def _load_keras_zip(path, unsafe):
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise UserError(f"{path}: a zip file, but not a .keras model (no config.json)")
            config = json.loads(zf.read("config.json"))
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except zipfile.BadZipFile:
        raise UserError(f"{path}: truncated or corrupt .keras file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt .keras file (config.json is not JSON)") from None
    _refuse_lambda(config, path, unsafe)
    version = str(meta.get("keras_version", "3"))
    flavour = KERAS3 if version.startswith("3") else TF_KERAS
    kmod = keras_module(flavour)
    # Keras copies a .keras file it loads into memory; a file name without the suffix is refused.
    src = path if path.endswith(".keras") else _linked_copy(path, ".keras")
    try:
        model = _call_loader(kmod.models.load_model, src, path, safe_mode=not unsafe, compile=False)
    finally:
        if src != path:
            os.unlink(src)
    return LoadedModel(model, flavour, path)


def _load_h5(path, unsafe):
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            version = fh.attrs.get("keras_version", b"")
    except OSError:
        raise UserError(f"{path}: truncated or corrupt HDF5 file") from None
    if raw is None:
        raise UserError(f"{path}: an HDF5 file without a model config (weights only?); optkit needs a whole model")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    config = json.loads(raw)
    _refuse_lambda(config, path, unsafe)
    # Keras 3 writes keras_version 3.x; everything older (Keras 2.0-2.4, tf.keras, tf_keras) loads
    # in tf_keras, which still understands legacy configs (no InputLayer, `groups` on DepthwiseConv2D).
    flavour = KERAS3 if str(version).startswith("3") else TF_KERAS
    src = path if path.endswith((".h5", ".hdf5")) else _linked_copy(path, ".h5")
    try:
        model = _call_loader(keras_module(flavour).models.load_model, src, path, compile=False)
    finally:
        if src != path:
            os.unlink(src)
    return LoadedModel(model, flavour, path)


def _load_saved_model(path, unsafe):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise UserError(f"{path}: a directory, but not a SavedModel (no saved_model.pb)")
    # A tf_keras SavedModel carries its Keras metadata and comes back as a trainable Keras model.
    if os.path.exists(os.path.join(path, "keras_metadata.pb")):
        tfk = tf_keras()
        try:
            model = tfk.models.load_model(path, compile=False)
            return LoadedModel(model, TF_KERAS, path)
        except Exception:  # fall through to the plain SavedModel path, which still serves inference
            pass
    try:
        loaded = tf().saved_model.load(path)
    except Exception as exc:
        raise UserError(f"{path}: cannot load SavedModel: {_first_line(exc)}") from None
    return LoadedModel(SavedModelCallable(loaded, path), SAVED_MODEL, path)


def _call_loader(fn, src, shown, **kwargs):
    try:
        return fn(src, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        text = _first_line(exc)
        if "Lambda" in text and ("safe_mode" in text or "unsafe" in text):
            raise UserError(f"{shown}: contains a Lambda layer; pass --unsafe only if you trust this file") from None
        raise UserError(f"{shown}: cannot load model: {text}") from None


def _linked_copy(path, suffix):
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    return tmp


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------------------------
# Saving


def save(model, path):
    """Write a model atomically. `.keras` is always Keras 3 (what users get back loads in plain
    Keras 3); `.h5` keeps the model's flavour; any other path is a SavedModel directory."""
    path = os.fspath(path)
    if path.endswith(".keras"):
        target = model if flavour_of(model) == KERAS3 else to_keras3(model)
        _atomic(path, lambda tmp: target.save(tmp))
    elif path.endswith((".h5", ".hdf5")):
        _atomic(path, lambda tmp: model.save(tmp))
    else:
        _atomic(path, lambda tmp: _save_saved_model(model, tmp))
    return path


def save_variant(model, folder: str, stem: str = "model"):
    """Save `model` in `folder` as `stem.keras` (Keras 3, what users get back); a model that has no
    Keras 3 form (a quantize-wrapped QAT model) as tf_keras' own `stem.h5`.
    Returns (path, note): note says why it is an .h5 (empty for .keras). Raises if neither works."""
    path = os.path.join(folder, f"{stem}.keras")
    try:
        return save(model, path), ""
    except Exception as exc:  # noqa: BLE001 - the .h5 fallback below says both reasons
        first = _first_line(exc)
        if flavour_of(model) != TF_KERAS:
            raise
    h5 = os.path.join(folder, f"{stem}.h5")
    try:
        save(model, h5)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"{first}; tf_keras .h5: {_first_line(exc)}") from None
    return h5, "tf_keras .h5 (cannot be expressed in Keras 3): " + first


def _save_saved_model(model, tmp):
    if flavour_of(model) == KERAS3:
        model.export(tmp, format="tf_saved_model", verbose=False)
    else:
        model.save(tmp, save_format="tf")


def _atomic(path, write):
    """optkit.files.staging: a temp path with the target's name (Keras picks the format from the
    suffix), published in one step (folders swapped atomically), removed on failure."""
    from optkit import files

    with files.staging(path) as staged:
        write(staged.path)


# --------------------------------------------------------------------------------------------
# Crossing the boundary


def clone(model):
    """A fresh copy in the same flavour with the same weights (tfmot mutates what it is given)."""
    kmod = keras_module_of(model)
    copy = kmod.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def as_keras3(model):
    """`model` itself if it is Keras 3, else its Keras 3 twin (for read-only uses: no copy made)."""
    return model if flavour_of(model) == KERAS3 else to_keras3(model)


def to_tf_keras(model):
    """A tf_keras twin of `model` (always a fresh object)."""
    flavour = flavour_of(model)
    if flavour == TF_KERAS:
        return clone(model)
    if flavour != KERAS3:
        raise UserError("a plain SavedModel has no layers to convert; load the Keras model it came from")
    tfk = tf_keras()
    config = _k3_model_config_to_tfk(model)
    custom = dict(_k3_only_activations(), **_custom_objects(model, "keras.src.", "tf_keras.src."))
    with tfk.utils.custom_object_scope(custom):
        if type(model).__name__ == "Sequential":
            twin = tfk.Sequential.from_config(config)
        else:
            twin = tfk.Model.from_config(config)
    _copy_weights(model, twin)
    return twin


def to_keras3(model):
    """A Keras 3 twin of `model` (always a fresh object)."""
    flavour = flavour_of(model)
    if flavour == KERAS3:
        return clone(model)
    if flavour != TF_KERAS:
        raise UserError("a plain SavedModel has no layers to convert; load the Keras model it came from")
    wrapped = [l.name for l in _all_layers(model) if type(l).__module__.startswith("tensorflow_model_optimization")]
    if wrapped:
        raise UserError(f"layer '{wrapped[0]}' is still wrapped by tensorflow-model-optimization "
                        "(quantization-aware models have no Keras 3 form; export them to TFLite)")
    keras = keras3()
    from keras.src.legacy.saving import saving_utils  # the loader Keras 3 uses for tf_keras .h5 files

    # Through JSON: tf_keras configs hold ListWrapper objects Keras 3 cannot read.
    config = json.loads(model.to_json())
    config["class_name"] = "Sequential" if type(model).__name__ == "Sequential" else "Functional"
    custom = _custom_objects(model, "tf_keras.src.", "keras.src.")
    _tfk_config_to_k3(config["config"], custom)
    try:
        twin = saving_utils.model_from_config(config, custom_objects=custom)
    except Exception as exc:
        raise UserError(f"cannot rebuild {model.name} in Keras 3: {_first_line(exc)}") from None
    if not twin.built:
        twin.build(tuple(model.input_shape))
    _copy_weights(model, twin)
    del keras
    return twin


def _tfk_config_to_k3(config, custom=None):
    """Make a tf_keras model config readable by Keras 3's legacy loader: drop constructor keys
    Keras 3 no longer takes (e.g. DepthwiseConv2D's `groups`) and fix the few values it reads
    differently."""
    keras = keras3()
    custom = custom or {}
    # The mirror of _k3_functional's shift: Keras 3 numbers a nested model's first call node 0.
    nested = {l["name"] for l in config.get("layers", []) if l.get("class_name") in ("Functional", "Model", "Sequential")}
    if nested:
        for layer in config["layers"]:
            for node in layer.get("inbound_nodes", []):
                for ref in node:
                    if isinstance(ref, list) and ref and ref[0] in nested and ref[1] > 0:
                        ref[1] -= 1
        for key in ("input_layers", "output_layers"):
            for ref in config.get(key, []):
                if isinstance(ref, list) and ref and ref[0] in nested and ref[1] > 0:
                    ref[1] -= 1
    layers = config.get("layers", [])
    if "input_layers" not in config and layers and layers[0].get("class_name") != "InputLayer" \
            and "batch_input_shape" in layers[0].get("config", {}):
        # A Sequential from the Keras 2.0-2.4 era: no InputLayer, the first layer carries the shape.
        first = layers[0]["config"]
        layers.insert(0, {"class_name": "InputLayer", "config": {
            "batch_input_shape": first.pop("batch_input_shape"), "dtype": first.get("dtype", "float32"),
            "name": first.get("name", "input") + "_input"}})
    for layer in layers:
        class_name, cfg = layer.get("class_name"), layer.get("config", {})
        if "layers" in cfg:
            _tfk_config_to_k3(cfg, custom)
            continue
        if class_name == "BatchNormalization" and isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
            cfg["axis"] = cfg["axis"][0]   # tf_keras stores the built axis as a list; Keras 3 wants an int
        cls = custom.get(class_name) or getattr(keras.layers, class_name, None)
        if cls is not None and class_name != "InputLayer":   # the legacy loader reads InputLayer's old keys itself
            layer["config"] = _accepted(cls, cfg, is_layer=True, base=_K3_LAYER_BASE_KWARGS)


_K3_LAYER_BASE_KWARGS = {"name", "trainable", "dtype", "autocast", "activity_regularizer", "input_dim",
                         "input_shape"}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _custom_objects(model, src_prefix, dst_prefix):
    """Layers defined outside the layers package (e.g. ConvNeXt's LayerScale) live in the same
    module path in both flavours: keras.src.applications.convnext <-> tf_keras.src.applications.convnext."""
    found = {}
    for layer in _all_layers(model):
        module = type(layer).__module__
        if module.startswith(src_prefix) and not module.startswith(src_prefix + "layers") \
                and not module.startswith((src_prefix + "models", src_prefix + "engine")):
            target = dst_prefix + module[len(src_prefix):]
            try:
                found[type(layer).__name__] = getattr(importlib.import_module(target), type(layer).__name__)
            except (ImportError, AttributeError):
                raise UserError(f"layer '{layer.name}' ({type(layer).__name__}) has no counterpart in the other "
                                "Keras flavour") from None
    return found


def _copy_weights(src, dst):
    for layer in src.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = dst.get_layer(layer.name)
        shapes = [w.shape for w in target.get_weights()]
        if [w.shape for w in weights] != shapes:
            raise UserError(f"layer '{layer.name}': weights do not line up across Keras flavours "
                            f"({[w.shape for w in weights]} vs {shapes})")
        target.set_weights(weights)


# Keras 3 config -> tf_keras config ---------------------------------------------------------

_TFK_MODULES = {
    "keras.layers": "layers",
    "keras.initializers": "initializers",
    "keras.regularizers": "regularizers",
    "keras.constraints": "constraints",
}


def _k3_model_config_to_tfk(model):
    config = json.loads(model.to_json())["config"]   # plain lists and numbers, no tuples
    if type(model).__name__ == "Sequential":
        return {"name": config["name"], "layers": [_k3_layer(l) for l in config["layers"]]}
    return _k3_functional(config)


def _k3_functional(config):
    # tf_keras counts a nested model's own Input->output node as node 0, so references to a nested
    # model's outputs are one higher than Keras 3's (tf_keras functional._should_skip_first_node).
    nested = {l["name"] for l in config["layers"] if l["class_name"] in ("Functional", "Model", "Sequential")}
    return {
        "name": config["name"],
        "trainable": config.get("trainable", True),
        "layers": [_k3_op(l, nested) if str(l.get("module", "")).startswith("keras.src.ops.")
                   else dict(_k3_layer(l), name=l["name"], inbound_nodes=[_k3_node(n, nested) for n in l["inbound_nodes"]])
                   for l in config["layers"]],
        "input_layers": _k3_refs(config["input_layers"]),
        "output_layers": _k3_refs(config["output_layers"]),
    }


def _k3_refs(refs):
    # A single input/output is serialised flat: ["name", 0, 0].
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [list(r) for r in refs]


def _k3_only_activations():
    """Activations Keras 3 has and tf_keras lacks, under the same names, so a config names them the
    same in both flavours and the way back to Keras 3 needs nothing. Same maths as Keras 3's."""
    tf_ = tf()

    def hard_sigmoid_k3(x):
        return tf_.nn.relu6(x + 3.0) / 6.0

    def hard_silu(x):
        return x * hard_sigmoid_k3(x)

    def relu6(x):
        return tf_.nn.relu6(x)

    def silu(x):
        return tf_.nn.silu(x)

    def leaky_relu(x, negative_slope=0.2):
        return tf_.nn.leaky_relu(x, alpha=negative_slope)

    def log_softmax(x, axis=-1):
        return tf_.nn.log_softmax(x, axis=axis)

    hard_swish = hard_silu
    return {"hard_silu": hard_silu, "hard_swish": hard_swish, "relu6": relu6, "silu": silu,
            "leaky_relu": leaky_relu, "log_softmax": log_softmax}


def _k3_node(node, nested=frozenset()):
    args, kwargs = node.get("args", []), node.get("kwargs", {})
    tensors = args[0] if args and isinstance(args[0], (list, tuple)) else args[:1]
    if len(args) > 1:
        raise UserError("a layer called with several positional tensors cannot be converted to tf_keras yet")
    call_kwargs = {k: v for k, v in kwargs.items() if v is not None}  # tf_keras calls take no mask=None
    refs = []
    for t in tensors:
        if not (isinstance(t, dict) and t.get("class_name") == "__keras_tensor__"):
            raise UserError("a layer called on a constant cannot be converted to tf_keras")
        name, node_index, tensor_index = t["config"]["keras_history"]
        refs.append([name, node_index + (name in nested), tensor_index, call_kwargs])
    return refs


def _k3_op(layer, nested):
    """A Keras 3 functional graph records `x + 3` or `a + b` as bare operations, which tf_keras
    has no class for. Arithmetic with a constant becomes a Rescaling layer (x*scale + offset,
    present in both flavours, so the way back needs nothing); tensor with tensor becomes the
    merge layer of the same name."""
    name, op = layer["name"], layer["class_name"]
    (node,) = layer["inbound_nodes"]
    args = node["args"]
    is_tensor = [isinstance(a, dict) and a.get("class_name") == "__keras_tensor__" for a in args]
    if len(args) == 2 and all(is_tensor) and op in ("Add", "Multiply", "Subtract"):
        inbound = _k3_node({"args": [args], "kwargs": {}}, nested)
        return {"class_name": op, "config": {"name": name, "trainable": True, "dtype": "float32"},
                "name": name, "inbound_nodes": [inbound]}
    if len(args) == 2 and sum(is_tensor) == 1 and isinstance(args[1 - is_tensor.index(True)], (int, float)):
        tensor_first = is_tensor[0]
        c = float(args[1] if tensor_first else args[0])
        scale_offset = {
            "Add": (1.0, c),
            "Multiply": (c, 0.0),
            "Subtract": (1.0, -c) if tensor_first else (-1.0, c),
            "Divide": (1.0 / c, 0.0) if tensor_first and c else None,
            "TrueDivide": (1.0 / c, 0.0) if tensor_first and c else None,
        }.get(op)
        if scale_offset is not None:
            tensor = args[0] if tensor_first else args[1]
            inbound = _k3_node({"args": [tensor], "kwargs": {}}, nested)
            return {"class_name": "Rescaling",
                    "config": {"name": name, "trainable": True, "dtype": "float32",
                               "scale": scale_offset[0], "offset": scale_offset[1]},
                    "name": name, "inbound_nodes": [inbound]}
    raise UserError(f"operation '{name}' ({op}) in the Keras 3 graph has no tf_keras form optkit can build")


def _k3_layer(layer):
    class_name = layer["class_name"]
    if class_name in ("Functional", "Model"):
        return {"class_name": "Functional", "config": _k3_functional(layer["config"])}
    if class_name == "Sequential":
        cfg = layer["config"]
        return {"class_name": "Sequential", "config": {"name": cfg["name"], "layers": [_k3_layer(l) for l in cfg["layers"]]}}
    cls = _tfk_class(layer.get("module"), class_name)
    config = {k: _k3_value(v) for k, v in layer["config"].items()}
    if class_name == "InputLayer":
        config["batch_input_shape"] = config.pop("batch_shape", config.pop("batch_input_shape", None))
        config.pop("optional", None)
    return {"class_name": class_name, "config": _accepted(cls, config, is_layer=True)}


def _k3_value(value):
    if isinstance(value, list):
        return [_k3_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "class_name" in value and "config" in value and "module" in value:
        class_name = value["class_name"]
        if class_name.endswith("DTypePolicy"):
            return value["config"]["name"]
        cls = _tfk_class(value.get("module"), class_name)
        config = {k: _k3_value(v) for k, v in (value["config"] or {}).items()}
        return {"class_name": class_name, "config": _accepted(cls, config, is_layer=False)}
    return {k: _k3_value(v) for k, v in value.items()}


def _tfk_class(module, class_name):
    tfk = tf_keras()
    if module in _TFK_MODULES:
        cls = getattr(getattr(tfk, _TFK_MODULES[module]), class_name, None)
    elif module and module.startswith("keras.src."):
        try:
            cls = getattr(importlib.import_module("tf_keras.src." + module[len("keras.src."):]), class_name, None)
        except ImportError:
            cls = None
    else:
        cls = getattr(tfk.layers, class_name, None)
    if cls is None:
        raise UserError(f"'{class_name}' has no tf_keras counterpart, so tensorflow-model-optimization cannot "
                        "handle this model")
    return cls


_LAYER_BASE_KWARGS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape",
                      "batch_input_shape", "batch_size", "weights", "activity_regularizer", "autocast"}


def _accepted(cls, config, *, is_layer, base=_LAYER_BASE_KWARGS):
    """Drop Keras-3-only keys (e.g. `quantization_config`, initializers' `input_axes`) that the
    tf_keras constructor would reject."""
    params = inspect.signature(cls.__init__).parameters
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if takes_kwargs and not is_layer:
        return config
    allowed = named | (base if takes_kwargs else set())
    return {k: v for k, v in config.items() if k in allowed}


# --------------------------------------------------------------------------------------------
# Inference


_COMPILED = weakref.WeakKeyDictionary()
_COMPILED_JIT = weakref.WeakKeyDictionary()


def _compiled_call(model, jit_compile: bool = False):
    cache = _COMPILED_JIT if jit_compile else _COMPILED
    fn = cache.get(model)
    if fn is None:
        fn = tf().function(lambda x: model(x, training=False), reduce_retracing=True,
                           jit_compile=bool(jit_compile))
        cache[model] = fn
    return fn


def predict(model, x, batch_size: int = 32, jit_compile: bool = False):
    """Outputs of `model` on `x` (numpy in, numpy out) through a compiled call, in batches
    (XLA-compiled with `jit_compile`).

    Not `model.predict`, whose per-call overhead dominates small batches (STACK.md)."""
    import numpy as np

    xs = x if isinstance(x, (list, tuple)) else [x]
    n = len(xs[0])
    if isinstance(model, SavedModelCallable):
        chunks = [model(*[a[i:i + batch_size] for a in xs]) for i in range(0, n, batch_size)]
    else:
        fn = _compiled_call(model, jit_compile)
        chunks = []
        for i in range(0, n, batch_size):
            batch = [a[i:i + batch_size] for a in xs]
            out = fn(batch if len(batch) > 1 else batch[0])
            chunks.append([o.numpy() for o in out] if isinstance(out, (list, tuple)) else [out.numpy()])
    outs = [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]
    return outs if len(outs) > 1 else outs[0]


def input_specs(model):
    """[(name, shape, dtype)] of a model's inputs, batch dimension included as None."""
    if isinstance(model, SavedModelCallable):
        return [(n, tuple(s.shape), s.dtype.name) for n, s in zip(model.input_names, model.input_specs)]
    return [(t.name, tuple(t.shape), _dtype_name(t.dtype)) for t in model.inputs]


def output_specs(model):
    if isinstance(model, SavedModelCallable):
        outs = model.signature.structured_outputs
        return [(k, tuple(outs[k].shape), outs[k].dtype.name) for k in model.output_names]
    # Named after the layer that produces each output (Keras 3 names Sequential outputs
    # 'keras_tensor_N', which means nothing to a user).
    return [(_producer_name(t, i), tuple(t.shape), _dtype_name(t.dtype)) for i, t in enumerate(model.outputs)]


# Layers that map pixels into a model's input space: a model that starts with one takes pixels.
PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


def leading_preprocessing_layer(model) -> Optional[str]:
    """'Rescaling(scale=0.00392, offset=0)' when the first layer after the model's input (looking
    into a nested model) is a Rescaling/Normalization layer, else None. Either flavour."""
    if isinstance(model, SavedModelCallable):
        return None
    layers = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]
    if not layers:
        return None
    first = layers[0]
    if hasattr(first, "layers") and not type(first).__name__ in PREPROCESSING_LAYERS:
        return leading_preprocessing_layer(first)
    kind = type(first).__name__
    if kind not in PREPROCESSING_LAYERS:
        return None
    config = first.get_config()
    keys = ("scale", "offset") if kind == "Rescaling" else ("mean", "variance")
    shown = ", ".join(f"{k}={_short(config.get(k))}" for k in keys if config.get(k) is not None)
    return f"{kind}({shown})"


def _short(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return "[...]"
    return str(value)


def _producer_name(tensor, index):
    history = getattr(tensor, "_keras_history", None)
    layer = history[0] if history else None
    return getattr(layer, "name", None) or f"output_{index}"


def _dtype_name(dtype):
    return getattr(dtype, "name", str(dtype))


def serving_function(model, batch: Optional[int] = None):
    """A `tf.function` with an input signature (batch dim None unless given), for tf2onnx,
    coremltools and SavedModel export. Returns (function, concrete_function)."""
    tf_ = tf()
    specs = [tf_.TensorSpec((batch,) + tuple(shape[1:]), dtype or "float32", name=_clean_name(name))
             for name, shape, dtype in input_specs(model)]
    if isinstance(model, SavedModelCallable):
        sig = model.signature
        fn = tf_.function(lambda *xs: [sig(**dict(zip(model.input_names, xs)))[k] for k in model.output_names],
                          input_signature=specs)
    else:
        fn = tf_.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False),
                          input_signature=specs)
    return fn, fn.get_concrete_function()


def _clean_name(name):
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name.split(":")[0]) or "input"
