"""Helpers shared by the exporter modules: atomic writes, the named serving function, and the
calibration/validation inputs. No TensorFlow at import time."""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from optkit import files
from optkit.errors import UserError

# How many samples feed int8 calibration: enough for stable activation ranges on small vision
# models (TFLite's own examples use 100), small enough to convert in seconds on 2 cores.
CALIBRATION_SAMPLES = 100


# Atomic writes live in optkit.files (shared with keras_io and report writing): a temp path next
# to the target, published in one step on success, removed on failure, stale temps cleaned.
atomic_output = files.atomic_output


def output_names(n: int) -> List[str]:
    """The names every exporter gives a model's outputs (Keras' own `export()` uses the same)."""
    return [f"output_{i}" for i in range(n)]


def named_serving_function(model, batch: Optional[int] = None):
    """(tf.function, concrete function, input TensorSpecs) whose outputs are a dict output_0..n.

    Built on keras_io.serving_function (input signature, batch dim None); naming the outputs here
    makes tf2onnx, SavedModel and Core ML carry the same output names, which validation checks.
    """
    from optkit import keras_io

    tf = keras_io.tf()
    fn, concrete = keras_io.serving_function(model, batch=batch)
    specs = list(fn.input_signature)
    n_out = len(concrete.structured_outputs) if isinstance(concrete.structured_outputs, (list, tuple)) else 1
    names = output_names(n_out)

    def named(*xs):
        out = fn(*xs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return {name: tf.identity(o, name=name) for name, o in zip(names, outs)}

    wrapped = tf.function(named, input_signature=specs)
    return wrapped, wrapped.get_concrete_function(), specs


def input_shapes(model) -> List[Tuple]:
    """Input shapes of a Keras model (or keras_io SavedModelCallable), batch dim included (None)."""
    from optkit import keras_io

    return [tuple(shape) for _, shape, _ in keras_io.input_specs(model)]


def input_names(model) -> List[str]:
    """The model's input names as exported signatures spell them (keras_io.serving_function's cleaning)."""
    from optkit import keras_io

    return [clean_name(name) for name, _, _ in keras_io.input_specs(model)]


def clean_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name.split(":")[0]) or "input"


def sample_inputs(model, data=None, n: int = CALIBRATION_SAMPLES, seed: int = 0,
                  split: str = "x_train") -> Tuple[List[np.ndarray], str]:
    """Inputs for calibration/validation, and where they came from (recorded in the artifact).

    `data` is an optkit.data.Dataset (its `split` is used, falling back to any split it has), a
    numpy array, or None. Without data we draw uniform [0, 1] images, the range optkit.data feeds
    models, and say so: int8 calibrated on random inputs is less faithful than on real data.
    """
    shapes = input_shapes(model)
    if data is not None:
        topped = None
        if not isinstance(data, (list, tuple, np.ndarray)) and split == "x_val":
            topped = _topped_up_validation(data, n)
        arrays = data if isinstance(data, (list, tuple)) else [topped[0] if topped else _pick_split(data, split)]
        if len(arrays) != len(shapes):
            raise UserError(f"--data gives {len(arrays)} input array(s); the model has {len(shapes)} input(s)")
        out = []
        for a, shape in zip(arrays, shapes):
            a = np.asarray(a, dtype=np.float32)
            if tuple(a.shape[1:]) != tuple(shape[1:]):
                raise UserError(f"--data samples have shape {tuple(a.shape[1:])}; the model expects "
                                f"{tuple(shape[1:])} (pass --data with a matching input shape)")
            out.append(a[:n])
        source = getattr(data, "source", None) or "data"
        return out, f"{source} ({topped[1] if topped else f'{len(out[0])} samples'})"
    rng = np.random.default_rng(seed)
    out = [rng.uniform(0.0, 1.0, size=(n,) + tuple(int(d) for d in shape[1:])).astype(np.float32)
           for shape in shapes]
    return out, f"random uniform [0, 1] ({n} samples; no --data given)"


# Fewer validation images than this and the value checks are topped up from the other splits:
# a centred SNR needs several samples (with one there is nothing to centre on, and a chaotic
# model's int8 copy scored 22 dB on a single image while failing on 32), and top-1 agreement
# on 1-2 images is all or nothing. Checking fidelity on calibration images flatters int8 a
# little; checking it on one image proves nothing. Accuracy stays on the held-back split.
MIN_VALIDATION_SAMPLES = 16


def _topped_up_validation(data, n):
    """(images, how they were picked) from the validation split plus the test and training
    splits when the validation split alone has fewer than MIN_VALIDATION_SAMPLES; else None."""
    val = getattr(data, "x_val", None)
    k = 0 if val is None else len(val)
    if k >= min(n, MIN_VALIDATION_SAMPLES):
        return None
    parts = [np.asarray(a, dtype=np.float32) for a in (val, getattr(data, "x_test", None), getattr(data, "x_train", None))
             if a is not None and len(a)]
    if not parts or sum(len(p) for p in parts) <= k:
        return None
    x = np.concatenate(parts)[:n]
    return x, (f"{len(x)} samples: the validation split has only {k}, topped up from the test and "
               "calibration images")


def _pick_split(data, split):
    if isinstance(data, np.ndarray):
        return data
    for name in (split, "x_train", "x_val", "x_test"):
        value = getattr(data, name, None)
        if value is not None and len(value):
            return value
    raise UserError("--data has no samples to calibrate or validate with")


def batches(arrays: Sequence[np.ndarray], size: int):
    """Yield lists of per-input arrays, `size` samples at a time."""
    n = len(arrays[0])
    for i in range(0, n, size):
        yield [a[i:i + size] for a in arrays]


@contextlib.contextmanager
def quiet_stdout():
    """Swallow what converters print from Python while they run.

    Keras' export prints "Saved artifact at ..." and one line per captured variable on stdout
    (hundreds for a MobileNet), coremltools draws progress bars on stderr: `--json` promises
    clean stdout and the CLI promises one-line messages. Errors still arrive as exceptions.
    C++ logging (TF, LiteRT) is not Python output and is governed by TF_CPP_MIN_LOG_LEVEL.
    """
    import io

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def check_request(name, precisions, known_options, quantize, options):
    """A precision the format lacks, or an option it does not take, is the user's to fix (exit 2).
    Checked before any conversion, and by optkit.export for every format before the first one runs."""
    from optkit import options as options_mod

    if quantize not in precisions:
        raise UserError(f"{name} cannot quantize '{quantize}' (supported: {', '.join(precisions)})")
    known_names = options_mod.names(known_options)
    unknown = sorted(set(options or {}) - set(known_names))
    if unknown:
        known = ", ".join(known_names) or "none"
        raise UserError(f"{name}: unknown option(s) {', '.join(unknown)} (known: {known})")
    options_mod.validate(known_options, options or {}, owner=name)   # types, choices, ranges


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]
