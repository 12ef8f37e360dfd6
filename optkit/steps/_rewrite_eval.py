"""What a rewrite did to the model's outputs: error right after the rewrite and after fine-tuning.

Shared by the `separable` and `pooling` steps (a private module: the step registry skips it).
"""
from __future__ import annotations

import numpy as np

from optkit import keras_io, train

SAMPLES = 256   # enough for a stable relative error, small enough to cost well under a second


def probe_inputs(model, data, seed=0):
    """Held-back images when there is data (what matters is the error on real inputs), else uniform noise."""
    if data is not None:
        x = data.x_val if getattr(data, "x_val", None) is not None and len(data.x_val) else data.x_train
        return np.asarray(x[:SAMPLES], dtype=np.float32)
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((64,) + shape, dtype=np.float32)


def relative_output_error(reference, candidate, x) -> float:
    """‖f_candidate(x) − f_reference(x)‖ / ‖f_reference(x)‖ over a batch (Frobenius norms)."""
    a = np.asarray(keras_io.predict(reference, x), dtype=np.float64)
    b = np.asarray(keras_io.predict(candidate, x), dtype=np.float64)
    return float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))


def measure_and_finetune(source, rewritten, ctx, epochs=-1):
    """Output error of `rewritten` vs `source`, then (with data) fine-tune `rewritten` in place and re-measure."""
    data = getattr(ctx, "data", None)
    x = probe_inputs(source, data, getattr(ctx, "seed", 0))
    info = {"output_error_after_rewrite": relative_output_error(source, rewritten, x),
            "output_error_on": "validation images" if data is not None else "uniform random inputs"}
    if data is None:
        info["finetune"] = "skipped: no --data"
        return info
    x_val, y_val = data.x_val, data.y_val
    if x_val is not None and len(x_val):
        info["accuracy_before"] = train.evaluate(source, x_val, y_val)
        info["accuracy_after_rewrite"] = train.evaluate(rewritten, x_val, y_val)
    epochs = ctx.epochs if epochs is None or epochs < 0 else epochs
    if epochs == 0:
        info["finetune"] = "skipped: 0 epochs"
        return info
    # keep_start: a fine-tune that scores below the exact rewrite on validation gives it back.
    result = train.fit(rewritten, data, epochs=epochs, batch_size=ctx.batch_size, progress=ctx.progress,
                       seed=getattr(ctx, "seed", 0), keep_start=True)
    info["finetune"] = result.to_json()
    info["output_error_after_finetune"] = relative_output_error(source, rewritten, x)
    info["accuracy_after_finetune"] = result.val_accuracy
    info["kept_exact_rewrite"] = result.best.get("best_epoch") == 0
    return info
