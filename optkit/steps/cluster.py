"""`cluster`: weight clustering with tensorflow-model-optimization, fine-tuned, wrappers stripped.

Each clustered kernel ends up holding at most `clusters` distinct values (per output channel with
`per_channel`), which a compressor (gzip, or a palettized format) stores in a few bits per weight.
After `prune`, the zeros are kept (sparsity-preserving clustering): that is the first half of
PCQAT, and `qat` after it preserves both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from optkit import compression
from optkit import keras_io
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult

# option value -> tfmot CentroidInitialization member
INITS = {"kmeans_plus_plus": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED",
         "random": "RANDOM"}


@dataclass(frozen=True)
class Options(compression.SelectionOptions):
    clusters: int = option(16, "number of clusters (distinct values) per kernel", min=2, max=256)
    init: str = option("kmeans_plus_plus", "centroid initialisation", choices=tuple(INITS))
    per_channel: bool = option(False, "cluster each output channel of Conv2D kernels separately")
    preserve_sparsity: Optional[bool] = option(None, "keep zeros of an earlier prune (default: when the model is pruned)")
    lr: float = option(1e-4, "fine-tune learning rate (Adam)", min=0.0, min_open=True)


def apply(model, ctx, *, clusters=16, init="kmeans_plus_plus", per_channel=False, preserve_sparsity=None,
          layers="", skip_first=False, skip_last=False, skip_unsupported=False, lr=1e-4):
    mot = keras_io.tfmot()
    history = compression.detect_history(model, ctx)
    if preserve_sparsity is None:
        # Clustering a pruned model would fill its zeros with the nearest centroid; keep them.
        preserve_sparsity = history.pruned
    has_data = ctx.data is not None and getattr(ctx.data, "x_train", None) is not None and ctx.epochs > 0
    accuracy_before = compression.accuracy(model, ctx.data)
    size_before = compression.weights_file_sizes(model)

    base = keras_io.to_tf_keras(model)   # fresh copy: cluster_weights strips kernels off what it wraps
    selected = compression.select_layers(base, layers=layers, skip_first=skip_first, skip_last=skip_last)
    params = dict(number_of_clusters=int(clusters),
                  cluster_centroids_init=getattr(mot.clustering.keras.CentroidInitialization, INITS[init]),
                  preserve_sparsity=bool(preserve_sparsity), cluster_per_channel=bool(per_channel))

    def wrap(layer):
        # The public cluster_weights forwards preserve_sparsity / cluster_per_channel to the
        # experimental implementation; with a Keras 3 layer it would return None silently,
        # which to_tf_keras above rules out and the check below would catch.
        out = mot.clustering.keras.cluster_weights(layer, **params)
        if out is None:
            raise ValueError("cluster_weights returned nothing (not a tf_keras layer?)")
        return out

    wrapped_model, wrapped, skipped = compression.wrap_selected(
        base, selected, wrap, technique="cluster", skip_unsupported=skip_unsupported)

    tuned = None
    if has_data:
        tuned = compression.fine_tune(wrapped_model, ctx, learning_rate=lr)
    stripped = mot.clustering.keras.strip_clustering(wrapped_model)

    unique = compression.unique_values_per_kernel(stripped)
    kernels = compression.kernels(stripped)
    measured = [name for name in wrapped if name in kernels]   # a nested model is measured per inner layer
    allowed = clusters + (1 if preserve_sparsity else 0)     # with sparsity kept, zero comes on top
    most = {name: _max_unique(kernels[name], per_channel) for name in measured}
    over = {name: n for name, n in most.items() if n > allowed}
    info = {
        "technique": "weight clustering (tfmot cluster_weights)",
        "clusters": int(clusters),
        "init": init,
        "per_channel": bool(per_channel),
        "preserve_sparsity": bool(preserve_sparsity),
        "history": history.to_json(),
        "clustered_layers": wrapped,
        # tfmot leaves a Conv2D alone when it has too few weights for the clusters asked for.
        "skipped_layers": skipped,
        "allowed_unique_values": allowed if not per_channel else f"{allowed} per output channel",
        "within_limit": not over,
        "over_limit": over,
        **compression.describe(stripped, selected=wrapped),
        "unique_values_per_channel_max": {name: _max_unique(kernels[name], True) for name in measured},
        "size_before": size_before,
        "size_after": compression.weights_file_sizes(stripped),
        "accuracy_before": accuracy_before,
        "accuracy_after": compression.accuracy(stripped, ctx.data),
        "fine_tune": tuned if tuned is not None else "none (no training data or epochs=0): weights snapped to the initial centroids",
        "model": "stripped tf_keras model (plain layers); saves as Keras 3 .keras",
    }
    return StepResult(stripped, info)


def _max_unique(kernel, per_channel):
    """Distinct values in a kernel, or the most in any output channel (the last axis)."""
    if not per_channel:
        return int(np.unique(kernel).size)
    flat = kernel.reshape(-1, kernel.shape[-1])
    return int(max(np.unique(flat[:, c]).size for c in range(flat.shape[1])))


STEP = Step(
    name="cluster",
    help="Weight clustering (tfmot): k shared values per kernel, fine-tuned, wrappers stripped.",
    apply=apply,
    options=Options,
    kind="compression",
)
