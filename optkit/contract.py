"""The input contract: what a model expects its images to look like, as one concept end to end.

Models are trained on pixels mapped some way, and an int8 artifact calibrated in another range is
silently at chance (shared/STACK.md, "Real models"). The vocabulary is the Keras applications'
`preprocess_input` modes:

    unit   pixels / 255                       -> [0, 1]           (optkit's default)
    raw    pixels as they are                 -> [0, 255]         (older Keras code; a model with
                                                                   its own Rescaling layer)
    tf     pixels / 127.5 - 1                 -> [-1, 1]          (MobileNet, Xception, ...)
    torch  (pixels / 255 - mean) / std        -> about [-2.1, 2.6] (ImageNet mean/std)
    caffe  RGB -> BGR, pixels - mean (BGR)    -> about [-124, 152] (VGG, ResNet50 v1)
    scale=A,offset=B[,bgr]   pixels * A + B (after RGB->BGR with `bgr`)

Data sources keep pixels as pixels (optkit.data holds them as pixels / 255 in [0, 1]); `apply`
maps a Dataset into the model's input space once, and everything downstream (calibration,
fine-tuning, accuracy, parity) works there. Data already in model space (negative values, e.g.
floats in [-1, 1]) is used as given, and the run says so.

Where the contract comes from (`resolve`), first match wins, printed once and recorded:
1. the `--preprocess` flag;
2. the contract optkit stored with the model or artifact (TFLite metadata, ONNX metadata_props,
   a sidecar file for Keras files and SavedModels: optkit.runner reads all three without TF);
3. the model itself: a leading Rescaling/Normalization layer means it takes raw pixels;
4. a probe with labelled data: the float model scored under each common contract on a few
   hundred images; if another contract beats `unit` clearly, stop (UserError, exit 2) naming
   the `--preprocess` that works, or adopt it with `--preprocess auto`;
5. `unit`, marked "assumed".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from optkit import runner
from optkit.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("unit", "raw", "tf", "torch", "caffe")
DESCRIPTIONS = {"unit": "pixels / 255, in [0, 1]", "raw": "raw pixels, 0-255",
                "tf": "pixels / 127.5 - 1, in [-1, 1]", "torch": "pixels / 255 then ImageNet mean/std",
                "caffe": "BGR pixels minus the ImageNet mean"}
# The probe scores the float model on this many labelled images per contract: a few hundred
# keep the standard error of an accuracy near 2-3 points while costing well under a second.
PROBE_SAMPLES = 300
# A contract must beat `unit` by this many points (and chance by as many) before the probe
# stops the run: at least 5 points, and ~3 standard errors of the difference of two accuracies
# on n images (<= 0.71/sqrt(n)), so 7 images can never decide (margin 76 points) while 300
# (11.5 points) still catch a wrong range, which lands at chance (50+ points away here).
PROBE_MARGIN = 0.05
PROBE_MIN_SAMPLES = 20

FLAG, STORED, MODEL, PROBE, DEFAULT, DATA = "flag", "stored", "model", "probe", "default", "data"


@dataclass(frozen=True)
class Contract:
    """input = (pixels 0-255 [, RGB->BGR]) * scale + offset, per channel."""

    name: str
    scale: Tuple[float, ...]
    offset: Tuple[float, ...]
    bgr: bool = False
    source: str = DEFAULT      # flag | stored | model | probe | default
    note: str = ""             # why (the layer found, the probe's scores, ...)

    @property
    def assumed(self) -> bool:
        return self.source == DEFAULT

    def describe(self) -> str:
        what = DESCRIPTIONS.get(self.name, f"pixels{' (BGR)' if self.bgr else ''} * {_fmt(self.scale)} + {_fmt(self.offset)}")
        how = {FLAG: "from --preprocess", STORED: "stored with the model", MODEL: "the model's own layer",
               PROBE: "found by probing the data", DEFAULT: "assumed (no --preprocess, nothing stored, "
               "no scaling layer)", DATA: "data given in the model's input space"}.get(self.source, self.source)
        return f"{self.name} ({what}); {how}" + (f": {self.note}" if self.note else "")

    def to_json(self) -> dict:
        return {"preprocess": self.name, "scale": list(self.scale), "offset": list(self.offset),
                "bgr": self.bgr, "source": self.source, "assumed": self.assumed, "note": self.note}

    def stored_json(self) -> dict:
        """What travels with an artifact: the mapping only (where it came from is this run's story)."""
        return {"preprocess": self.name, "scale": list(self.scale), "offset": list(self.offset), "bgr": self.bgr}

    def to_model(self, unit_pixels) -> np.ndarray:
        """optkit.data's pixels (pixels / 255, in [0, 1]) -> the model's input space."""
        return runner.apply_contract(np.asarray(unit_pixels, np.float32) * 255.0, self.stored_json())

    def input_range(self) -> Tuple[float, float]:
        """The model-space values that pixels 0-255 map to (lowest, highest over channels)."""
        ends = self.to_model(np.array([[[[0.0] * 3], [[1.0] * 3]]], np.float32))
        return float(ends.min()), float(ends.max())


def _fmt(values):
    return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"


def parse(text: str, source: str = FLAG) -> Contract:
    """'raw', 'tf', ..., or 'scale=A,offset=B[,bgr]' (A, B a number or one per channel with ':')."""
    spec = str(text).strip().lower()
    if spec == "unit":
        return Contract("unit", (1 / 255.0,), (0.0,), source=source)
    if spec == "raw":
        return Contract("raw", (1.0,), (0.0,), source=source)
    if spec == "tf":
        return Contract("tf", (1 / 127.5,), (-1.0,), source=source)
    if spec == "torch":
        return Contract("torch", tuple(1 / (255.0 * s) for s in IMAGENET_STD),
                        tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)), source=source)
    if spec == "caffe":
        return Contract("caffe", (1.0,), tuple(-m for m in CAFFE_MEAN_BGR), bgr=True, source=source)
    if "=" in spec:
        values, bgr = {}, False
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if part == "bgr":
                bgr = True
                continue
            key, _, value = part.partition("=")
            if key not in ("scale", "offset") or not value:
                raise UserError(f"--preprocess {text}: expected scale=A,offset=B[,bgr], got '{part}'")
            try:
                values[key] = tuple(float(v) for v in value.split(":"))
            except ValueError:
                raise UserError(f"--preprocess {text}: '{value}' is not a number (per-channel values: a:b:c)") from None
        if "scale" not in values:
            raise UserError(f"--preprocess {text}: needs scale=A (e.g. scale=0.00392,offset=0)")
        if any(v == 0 for v in values["scale"]):
            raise UserError(f"--preprocess {text}: scale must not be 0")
        return Contract(spec, values["scale"], values.get("offset", (0.0,)), bgr=bgr, source=source)
    raise UserError(f"unknown --preprocess '{text}' (choose from {', '.join(MODES)}, auto, "
                    "or scale=A,offset=B[,bgr])")


def from_json(doc: dict, source: str = STORED) -> Contract:
    try:
        return Contract(str(doc.get("preprocess", "custom")), tuple(float(v) for v in doc["scale"]),
                        tuple(float(v) for v in doc["offset"]), bool(doc.get("bgr", False)), source=source)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"stored input contract is unreadable: {doc!r}"[:200]) from None


# ---------------------------------------------------------------------------- stored with files


def read_stored(path: Optional[str]) -> Optional[Contract]:
    """The contract stored with a model file or artifact, or None."""
    if not path or not os.path.exists(path):
        return None
    try:
        doc = runner.read_contract(path)
    except runner.RunnerError as exc:
        raise UserError(str(exc)) from None
    return from_json(doc) if doc else None


def attach(path: str, contract: Contract) -> str:
    """Store `contract` with an artifact: TFLite metadata, ONNX metadata_props, else a sidecar
    (Keras file, SavedModel folder, Core ML package, TensorRT engine). Atomic; returns where."""
    text = json.dumps(contract.stored_json())
    if path.lower().endswith(".tflite") and os.path.isfile(path):
        _tflite_add_metadata(path, runner.CONTRACT_KEY, text.encode())
        return "tflite metadata"
    if path.lower().endswith(".onnx") and os.path.isfile(path):
        _onnx_add_metadata(path, runner.CONTRACT_KEY, text)
        return "onnx metadata_props"
    sidecar = runner.contract_sidecar(path)
    _write_atomic(sidecar, text.encode())
    return "sidecar " + os.path.basename(sidecar)


def _write_atomic(path, data: bytes):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _tflite_add_metadata(path, name, data: bytes):
    import importlib

    from optkit import keras_io

    keras_io.tf()   # quiet logs before the TF modules below load
    fb = importlib.import_module("tensorflow.lite.tools.flatbuffer_utils")
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    with open(path, "rb") as fh:
        model = fb.read_model_from_bytearray(bytearray(fh.read()))
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != name]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    _write_atomic(path, fb.convert_object_to_bytearray(model))


def _onnx_add_metadata(path, key, value):
    import onnx

    model = onnx.load(path, load_external_data=False)
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=value)
    _write_atomic(path, model.SerializeToString())


# ---------------------------------------------------------------------------- data


def apply(data, contract: Contract, say: Callable[[str], None] = lambda m: None):
    """A copy of optkit.data `Dataset` in the model's input space (pixels mapped by `contract`).
    Data the loader found already in model space is kept as given, and that is said."""
    if data is None:
        return None
    details = dict(getattr(data, "details", {}) or {})
    if details.get("space") == "model":
        lo, hi = details.get("value_range", (None, None))
        say(f"data holds values in [{lo:g}, {hi:g}] (not pixels): used as the model's input as given")
        details["preprocess"] = "as given (already in the model's input space)"
        return replace(data, details=details)
    details.update(space="model", preprocess=contract.name)
    return replace(data, x_train=contract.to_model(data.x_train), x_val=contract.to_model(data.x_val),
                   x_test=contract.to_model(data.x_test), details=details)


def random_inputs(shape: Sequence[int], n: int, contract: Contract, seed: int = 0) -> np.ndarray:
    """Uniform random pixels mapped into the model's space (noise, when no data is given)."""
    rng = np.random.default_rng(seed)
    return contract.to_model(rng.uniform(0.0, 1.0, size=(n,) + tuple(int(d) for d in shape)).astype(np.float32))


# ---------------------------------------------------------------------------- resolution


def resolve(flag: Optional[str] = None, *, model=None, path: Optional[str] = None, data=None,
            say: Callable[[str], None] = lambda m: None) -> Contract:
    """The model's contract, by the order in the module docstring. `data` is an optkit.data
    Dataset in pixel space (labelled, for the probe). Says the outcome once through `say`."""
    auto = flag is not None and str(flag).strip().lower() == "auto"
    contract = None
    if flag is not None and not auto:
        contract = parse(flag, FLAG)
    if contract is None:
        contract = read_stored(path)
    if contract is None and model is not None:
        contract = from_model(model)
    if contract is None and model is not None and _labelled(data):
        contract = probe(model, data, adopt=auto)
    if contract is None:
        contract = parse("unit", DEFAULT)
        if data is not None and (getattr(data, "details", None) or {}).get("space") == "model":
            contract = replace(contract, source=DATA)
    say(f"input contract: {contract.describe()}")
    return contract


def prepare(flag: Optional[str], *, model, path: Optional[str] = None, data=None,
            say: Callable[[str], None] = lambda m: None, probe: bool = True):
    """`resolve` then `apply`: (the contract, `data` in the model's input space). Also says
    when the calibration or evaluation set is too small to trust (optkit.data.size_warnings).
    `probe=False`: no probing (an untrained model has nothing to tell)."""
    contract = resolve(flag, model=model, path=path, data=data if probe else None, say=say)
    if data is not None:
        from optkit.data import size_warnings

        for line in size_warnings(data):
            say(f"warning: {line}")
    return contract, apply(data, contract, say)


def from_model(model) -> Optional[Contract]:
    """`raw` when the model's first layer after its input rescales or normalizes (it takes pixels)."""
    from optkit import keras_io

    layer = keras_io.leading_preprocessing_layer(model)
    if layer is None:
        return None
    return replace(parse("raw", MODEL), note=f"its first layer is {layer}, so it takes raw pixels")


def _labelled(data) -> bool:
    return data is not None and getattr(data, "y_test", None) is not None and len(data.y_test) > 0 \
        and (getattr(data, "details", None) or {}).get("space") != "model"


def candidates(channels: int) -> Sequence[str]:
    # torch and caffe are defined per RGB channel.
    return MODES if channels == 3 else ("unit", "raw", "tf")


def probe(model, data, *, adopt: bool = False) -> Optional[Contract]:
    """Score the float model under each common contract on a few hundred labelled images.

    Returns None when `unit` is as good as any (then the default stands), the winning contract
    when `adopt`, else raises UserError naming the `--preprocess` that works."""
    from optkit import keras_io, metrics

    x, y = _probe_split(data)
    if len(y) < PROBE_MIN_SAMPLES:
        return None
    margin = max(PROBE_MARGIN, 2.0 / np.sqrt(len(y)))
    channels = int(x.shape[-1])
    scores = {}
    for name in candidates(channels):
        c = parse(name, PROBE)
        out = keras_io.predict(model, c.to_model(x), batch_size=64)
        result = metrics.score(out[0] if isinstance(out, (list, tuple)) else out, y)
        scores[name] = result.get("miou") if result.get("miou") is not None else result["accuracy"]
    top = max(scores.values())
    # Near-ties (tf and torch both centre the pixels) go to the first, most common mode.
    best = next(k for k in scores if scores[k] >= top - margin / 2)
    chance = _chance(model, data)
    table = ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items())
    if best == "unit" or scores[best] - scores["unit"] < margin or scores[best] - chance < margin:
        return None
    note = f"scores on {len(y)} labelled images: {table}"
    if adopt:
        return replace(parse(best, PROBE), note=note)
    raise UserError(f"the model scores {100 * scores['unit']:.1f}% with [0, 1] inputs but "
                    f"{100 * scores[best]:.1f}% with {DESCRIPTIONS[best]} on {len(y)} labelled images: "
                    f"give --preprocess {best} (or --preprocess auto to adopt what the probe finds)")


def _probe_split(data):
    for xs, ys in (("x_test", "y_test"), ("x_val", "y_val"), ("x_train", "y_train")):
        x, y = getattr(data, xs, None), getattr(data, ys, None)
        if x is not None and y is not None and len(x):
            return x[:PROBE_SAMPLES], y[:PROBE_SAMPLES]
    raise UserError("no labelled samples to probe the input contract with")


def _chance(model, data) -> float:
    classes = getattr(data, "num_classes", None) or 2
    return 1.0 / max(2, int(classes))
