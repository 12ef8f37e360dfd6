"""What the tfmot compression steps (prune, cluster, qat) share.

- which layers a technique touches (by name or type, first/last weight layer skippable, layers
  tfmot cannot handle named in a UserError or left alone on request);
- what a step achieved, measured on the weights themselves (zeros per kernel, unique values per
  kernel, bytes and gzip bytes of a saved weights file, accuracy before and after);
- what came before: PQAT/CQAT/PCQAT need to know whether the model was pruned and/or clustered.

Nothing here imports TensorFlow at module level; tfmot is reached only through optkit.keras_io,
which keeps its TF_USE_LEGACY_KERAS side effect out of the process environment.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from optkit import keras_io
from optkit.errors import UserError
from optkit.options import option

# Weight attributes that hold a layer's "kernel": the tensors pruning zeroes and clustering shares.
KERNEL_ATTRS = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")

# A model counts as pruned when this share of its kernel weights is exactly zero: a trained
# float model has practically no exact zeros, magnitude pruning leaves the target share.
PRUNED_MIN_SPARSITY = 0.2
# A kernel counts as clustered when it holds at most this many distinct values (tfmot's cluster
# counts are 2-256) while being much larger than that; trained float kernels are all distinct.
CLUSTERED_MAX_UNIQUE = 256

# How many samples "accuracy before/after" uses: enough for a stable figure, bounded in time.
EVAL_LIMIT = 2000


# ------------------------------------------------------------------------------- layer selection

def parse_layer_list(value) -> List[str]:
    """`layers=` option -> names. Step specs split options on commas, so the CLI form separates
    entries with '+' (`layers=Conv2D+dense_1`); the Python API may pass a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", "+").split("+") if v.strip()]
    return [str(v) for v in value]


def kernel_of(layer):
    """The layer's main weight matrix (None for layers without one)."""
    for attr in KERNEL_ATTRS:
        weight = getattr(layer, attr, None)
        if weight is not None and hasattr(weight, "shape") and len(weight.shape) >= 2:
            return weight
    return None


def weight_layers(model) -> list:
    """Top-level layers that hold a weight matrix (rank >= 2), in model order.

    This is what compression acts on: Conv/Dense/Depthwise/Embedding kernels, and also a custom
    layer's matrix (so that a layer tfmot cannot handle is named instead of silently skipped).
    BatchNormalization and biases hold only vectors and are left alone by every technique. A
    nested model counts as one layer here (tfmot's per-layer APIs take a whole sub-model);
    measurements look inside it."""
    return [layer for layer in model.layers if any(len(w.shape) >= 2 for w in layer.trainable_weights)]


def _flat_layers(model):
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs") and not hasattr(layer, "layer"):
            out.extend(_flat_layers(layer))   # a nested model's layers count one by one
        else:
            out.append(layer)
    return out


def select_layers(model, *, layers=None, skip_first: bool = False, skip_last: bool = False) -> List[str]:
    """Names of the weight layers to compress.

    `layers`: names or class names (e.g. ["Conv2D", "dense_1"]); empty = every weight layer.
    `skip_first` / `skip_last`: leave the first / last weight layer alone (the stem and the
    classifier are the most sensitive to compression)."""
    candidates = weight_layers(model)
    if skip_first and candidates:
        candidates = candidates[1:]
    if skip_last and candidates:
        candidates = candidates[:-1]
    wanted = parse_layer_list(layers)
    if wanted:
        all_layers = list(model.layers)
        for entry in wanted:
            if not any(l.name == entry or type(l).__name__ == entry for l in all_layers):
                names = ", ".join(l.name for l in weight_layers(model))
                raise UserError(f"no layer named or of type '{entry}' in the model (weight layers: {names})")
        candidates = [l for l in candidates if l.name in wanted or type(l).__name__ in wanted]
    if not candidates:
        raise UserError("no weight layers left to compress with this layer selection")
    return [l.name for l in candidates]


def wrap_selected(model, selected: Iterable[str], wrap: Callable, *, technique: str,
                  skip_unsupported: bool = False):
    """Clone `model` (tf_keras) with `wrap(layer)` applied to the selected layers.

    `wrap` is tfmot's own per-layer API (prune_low_magnitude / cluster_weights), which raises
    ValueError for a layer it cannot handle; that becomes a UserError naming the layer, or, with
    `skip_unsupported`, the layer is left unwrapped and listed. Layers not selected are reused
    as they are (the model is already a fresh copy from keras_io.to_tf_keras)."""
    tfk = keras_io.tf_keras()
    selected = set(selected)
    wrapped, skipped = [], []

    def clone_fn(layer):
        if layer.name not in selected:
            return layer
        try:
            out = wrap(layer)
        except ValueError as exc:
            if skip_unsupported:
                skipped.append(layer.name)
                return layer
            raise UserError(
                f"{technique}: tensorflow-model-optimization cannot handle layer '{layer.name}' "
                f"({type(layer).__name__}): {first_line(exc)}; leave it out with layers=... or pass "
                "skip_unsupported=true") from None
        if out is layer:   # tfmot declined quietly (e.g. a Conv2D too small to cluster)
            skipped.append(layer.name)
        else:
            wrapped.append(layer.name)
        return out

    if not isinstance(model, tfk.Sequential) and not getattr(model, "_is_graph_network", False):
        raise UserError(f"{technique}: subclassed models cannot be compressed (tfmot needs a Sequential "
                        "or functional model)")
    clone = tfk.models.clone_model(model, clone_function=clone_fn)
    if not wrapped:
        raise UserError(f"{technique}: no layer could be wrapped (skipped: {', '.join(skipped) or 'none'})")
    return clone, wrapped, skipped


def first_line(exc) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:240]


# ------------------------------------------------------------------------------- measurements

def kernels(model) -> Dict[str, np.ndarray]:
    """Layer name -> kernel values, for every layer with a weight matrix. tfmot wrappers are looked
    through and reported under the wrapped layer's own name ('body', not 'quant_body'), so the
    same layer has the same key before and after every step."""
    out = {}
    for layer in _flat_layers(model):
        value = _kernel_value(layer)
        if value is not None:
            out[getattr(getattr(layer, "layer", None), "name", layer.name)] = value
    return out


def _kernel_value(layer):
    inner = getattr(layer, "layer", None)   # tfmot wrappers keep the original layer in `.layer`
    if inner is None:
        weight = kernel_of(layer)
        return None if weight is None else np.asarray(weight.numpy())
    # Inside a QuantizeWrapper the layer's `kernel` attribute is swapped for the fake-quant
    # tensor; the variable itself is among the wrapper's weights, named after the attribute.
    for attr in KERNEL_ATTRS:
        for weight in layer.weights:
            base = weight.name.split("/")[-1].split(":")[0]
            if base == attr and len(weight.shape) >= 2:
                return np.asarray(weight.numpy())
    return None


def parameter_count(model) -> int:
    """The model's own weights (what Keras' count_params gives for a plain model).

    A tfmot wrapper counts the layer it wraps, not the quantizer ranges, pruning masks or step
    counters it adds (a QAT model's count_params is about three times its weight count), and
    tfmot's own layers (QuantizeLayer at the input) hold nothing but such ranges."""
    seen, total = set(), 0
    for layer in _flat_layers(model):
        weights = layer.weights
        if keras_io.is_tfmot_layer(layer):
            # The wrapper lists the wrapped layer's variables (`conv2d/kernel`) and its own
            # (`quant_conv2d/kernel_min`, `.../optimizer_step`), which carry its name.
            weights = [w for w in weights if not w.name.startswith(f"{layer.name}/")]
        for w in weights:
            if id(w) not in seen:      # a weight shared by two layers counts once
                seen.add(id(w))
                total += int(np.prod(w.shape))
    return total


def sparsity_per_layer(model) -> Dict[str, float]:
    """Share of exact zeros in each kernel."""
    return {name: round(float(np.mean(k == 0)), 4) for name, k in kernels(model).items()}


def unique_values_per_kernel(model) -> Dict[str, int]:
    return {name: int(np.unique(k).size) for name, k in kernels(model).items()}


def overall_sparsity(model, names: Optional[Sequence[str]] = None) -> float:
    """Share of zeros over the kernels of `names` (all kernels when None), weighted by size."""
    ks = kernels(model)
    chosen = [ks[n] for n in (names if names is not None else ks) if n in ks]
    total = sum(k.size for k in chosen)
    return round(float(sum(int(np.sum(k == 0)) for k in chosen) / total), 4) if total else 0.0


def weights_file_sizes(model) -> Dict[str, int]:
    """Bytes on disk and gzip -9 bytes of the model's weights written to an HDF5 file.

    Pruning and clustering leave the raw size unchanged and shrink only the compressed size
    (STACK.md), so both are reported. The file holds the weight arrays alone (no layer names, no
    optimizer state, which Keras' own save_weights adds once a model is compiled), so the numbers
    before and after a step compare the weights and nothing else."""
    import h5py

    from optkit.runner import file_sizes

    with tempfile.TemporaryDirectory(prefix="optkit-size-") as tmp:
        path = os.path.join(tmp, "weights.h5")
        with h5py.File(path, "w") as fh:
            for i, array in enumerate(model.get_weights()):
                fh.create_dataset(f"w{i:04d}", data=np.asarray(array))
        size, gz = file_sizes(path)
    return {"bytes": size, "gzip_bytes": gz}


def accuracy(model, data) -> Optional[float]:
    """Top-1 accuracy on the data's test split (else validation split), None without data."""
    if data is None:
        return None
    from optkit.train import evaluate

    for xs, ys in (("x_test", "y_test"), ("x_val", "y_val")):
        x, y = getattr(data, xs, None), getattr(data, ys, None)
        if x is not None and len(x):
            return round(evaluate(model, x[:EVAL_LIMIT], y[:EVAL_LIMIT]), 4)
    return None


# ------------------------------------------------------------------------------- history

@dataclass
class History:
    """What earlier steps did to the weights, and how we know."""

    pruned: bool
    clustered: bool
    source: str          # "pipeline" (ctx.extra["history"]) or "weights" (detected)

    def to_json(self):
        return {"pruned": self.pruned, "clustered": self.clustered, "source": self.source}


def previous_steps(ctx) -> Optional[List[str]]:
    """Names of the steps applied before this one, as the pipeline records them in
    `ctx.extra["history"]` (a list of names or of {"name": ...} dicts); None when not given."""
    extra = getattr(ctx, "extra", None) or {}
    raw = extra.get("history")
    if raw is None:
        return None
    return [entry["name"] if isinstance(entry, dict) else str(entry) for entry in raw]


def detect_history(model, ctx=None) -> History:
    """Was the model pruned and/or clustered before? The pipeline's record wins; without one
    (a pruned .keras file loaded from disk), the weights tell: exact zeros mean pruning, few
    distinct values per large kernel mean clustering."""
    names = previous_steps(ctx) if ctx is not None else None
    if names is not None:
        return History(pruned="prune" in names, clustered="cluster" in names, source="pipeline")
    ks = kernels(model)
    big = {n: k for n, k in ks.items() if k.size > 4 * CLUSTERED_MAX_UNIQUE}
    pruned = overall_sparsity(model) >= PRUNED_MIN_SPARSITY
    clustered = bool(big) and all(np.unique(k).size <= CLUSTERED_MAX_UNIQUE for k in big.values())
    return History(pruned=pruned, clustered=clustered, source="weights")


# ------------------------------------------------------------------------------- fine-tuning

def training_steps(data, epochs: int, batch_size: int) -> int:
    n = len(data.x_train) if hasattr(data, "x_train") else len(data[0])
    return max(1, -(-n // batch_size)) * max(0, epochs)


def require_training_data(ctx, technique: str):
    if ctx.data is None or getattr(ctx.data, "x_train", None) is None or not len(ctx.data.x_train):
        raise UserError(f"{technique} fine-tunes the model and needs training data (--data SRC)")
    if ctx.epochs < 1:
        raise UserError(f"{technique} needs at least one fine-tuning epoch (--epochs >= 1)")


def fine_tune(model, ctx, *, callbacks=(), learning_rate: Optional[float] = None,
              first_candidate_epoch: int = 1) -> Dict[str, Any]:
    """optkit.train.fit with the context's epochs/batch size (a cap: it stops early on validation
    and keeps the best epoch from `first_candidate_epoch` on); returns what the report keeps."""
    from optkit.train import fit

    result = fit(model, ctx.data, epochs=ctx.epochs, batch_size=ctx.batch_size, callbacks=list(callbacks),
                 progress=ctx.progress, learning_rate=learning_rate, seed=ctx.seed,
                 first_candidate_epoch=first_candidate_epoch)
    return {"epochs": result.epochs_run, "time_per_epoch_s": round(result.time_per_epoch_s, 3),
            "learning_rate": result.settings.get("learning_rate"),
            "val_accuracy": result.val_accuracy, "early_stopping": result.best}


def describe(model, *, selected: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The per-layer facts every compression step reports."""
    info = {"sparsity_per_layer": sparsity_per_layer(model),
            "unique_values_per_kernel": unique_values_per_kernel(model)}
    if selected is not None:
        info["overall_sparsity"] = overall_sparsity(model, selected)
    return info


@dataclass(frozen=True)
class SelectionOptions:
    """The layer-selection options prune and cluster share (their option classes extend it)."""

    layers: str = option("", "layer names or types to compress, '+'-separated (default: all weight layers)")
    skip_first: bool = option(False, "leave the first weight layer out")
    skip_last: bool = option(False, "leave the last weight layer out")
    skip_unsupported: bool = option(False, "leave layers tfmot cannot wrap unwrapped instead of failing")
