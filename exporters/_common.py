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
        arrays = data if isinstance(data, (list, tuple)) else [_pick_split(data, split)]
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
        return out, f"{source} ({len(out[0])} samples)"
    rng = np.random.default_rng(seed)
    out = [rng.uniform(0.0, 1.0, size=(n,) + tuple(int(d) for d in shape[1:])).astype(np.float32)
           for shape in shapes]
    return out, f"random uniform [0, 1] ({n} samples; no --data given)"


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
