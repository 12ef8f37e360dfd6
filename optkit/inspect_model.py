"""What `optkit inspect` reports about a model: parameters, multiply-adds, layers, flavour, I/O,
and which rewrites apply. One dict, the JSON shape of DESIGN.md."""
from __future__ import annotations

import math
from collections import Counter

from optkit import keras_io
from optkit.model_cost import leaf_layers, multiply_adds, total_multiply_adds  # noqa: F401 - re-exported


def summarize(loaded: keras_io.LoadedModel) -> dict:
    model = loaded.model
    if loaded.flavour == keras_io.SAVED_MODEL:
        # A plain SavedModel has variables but no layers: count what can be counted.
        params = model.count_params()
        return {"path": loaded.path, "flavour": loaded.flavour, "params": params, "trainable_params": None,
                "flops": None, "inputs": _specs(keras_io.input_specs(model)),
                "outputs": _specs(keras_io.output_specs(model)), "layers": {},
                "rewrites": {"separable": 0, "pooling": False}}
    layers = list(leaf_layers(model))
    return {
        "path": loaded.path,
        "name": model.name,
        "flavour": loaded.flavour,
        "params": int(model.count_params()),
        "trainable_params": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "flops": total_multiply_adds(model),
        "inputs": _specs(keras_io.input_specs(model)),
        "outputs": _specs(keras_io.output_specs(model)),
        "layers": dict(sorted(Counter(type(l).__name__ for l in layers).items())),
        "rewrites": _rewrites(model, loaded.flavour),
        "channel_pruning": _channel_pruning(model),
    }


def _specs(specs):
    return [{"name": n, "shape": list(s), "dtype": d} for n, s, d in specs]


def _rewrites(model, flavour):
    """How many Conv2D the `separable` step would rewrite and whether `pooling` applies,
    answered by the steps themselves so inspect and optimize never disagree."""
    from optkit.steps import pooling, separable

    k3 = model if flavour == keras_io.KERAS3 else _as_keras3(model)
    if k3 is None:
        return {"separable": 0, "pooling": False, "note": "model cannot be expressed in Keras 3"}
    return {"separable": separable.eligible_count(k3), "pooling": pooling.applicable(k3)}


def _channel_pruning(model):
    """Which channel groups `channel_prune` can shrink, answered by the step itself."""
    from optkit.steps import channel_prune

    try:
        return channel_prune.inspect(model)
    except Exception as exc:   # reporting only: a graph optkit cannot read must not hide the rest
        return {"prunable_groups": 0, "note": f"not analysed: {type(exc).__name__}: {exc}"[:200]}


def _as_keras3(model):
    try:
        return keras_io.to_keras3(model)
    except Exception:
        return None
