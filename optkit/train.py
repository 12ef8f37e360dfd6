"""Training and evaluation shared by every part of optkit that trains (rewrites, speed ladder, compression).

One `fit` for both Keras flavours: the model is compiled with its *own* flavour's optimizer and loss
(a Keras 3 optimizer cannot train a tf_keras model and vice versa), progress goes to stderr (stdout is
reserved for `--json`), runs are seeded, and the time per epoch is reported without the first epoch,
which carries tracing/XLA compilation (7-20 s here, STACK.md) and would swamp the comparison.

`epochs` is a cap, not a promise: with validation data every run keeps the weights of its best
validation epoch and stops once `patience` epochs bring no improvement (shorter on small data,
optkit.data.is_small), so a fine-tune that only hurts gives back what it started from when
`keep_start=True` (a rewrite's exact weights) and a from-scratch run is not cut at a bad epoch.

Speed settings (XLA, step fusing, mixed precision) travel with the model, so that whoever trains it
later trains it the way the user asked and the saved model records it:
- `jit_compile` and `steps_per_execution` are kept in a `TrainingConfig` attribute on the model and,
  once the model is compiled, in its compile config, which `.keras` files save and reload;
- mixed precision is the layers' own dtype policies (written into every layer's config), so it needs no
  separate record: `training_config()` reads it back from the layers.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from optkit import keras_io
from optkit.errors import UserError

# Attribute under which the speed settings ride on a model object. A dataclass, not a dict: Keras
# wraps dicts assigned to layers in tracking containers, plain objects are left alone.
_ATTR = "_optkit_training"


@dataclass(frozen=True)
class TrainingConfig:
    """How a model wants to be trained. Written by the speed steps, read by `fit`."""

    jit_compile: bool = False
    steps_per_execution: int = 1
    mixed_precision: Optional[str] = None     # "mixed_float16" | "mixed_bfloat16" | None (float32)
    # CPU settings fixed when TensorFlow starts (oneDNN) or its runtime initialises (threads): `fit`
    # cannot change them in a running process; they are recorded so a launcher can (optkit.steps.speed).
    onednn: Optional[bool] = None
    intra_op_threads: Optional[int] = None

    def to_json(self):
        return dataclasses.asdict(self)


# Early stopping: epochs without a better validation score before a run stops. Small data gets
# less patience (its validation score is a handful of images: waiting mostly fits noise).
PATIENCE = 3
SMALL_DATA_PATIENCE = 2


@dataclass
class TrainResult:
    epoch_times_s: List[float]
    time_per_epoch_s: float
    time_per_epoch_note: str          # how time_per_epoch_s was obtained (which epochs, compile or not)
    history: Dict[str, List[float]]
    val_accuracy: Optional[float]
    epochs_run: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)   # what was actually used
    # What early stopping did: {"patience", "epochs_cap", "best_epoch" (0 = the starting weights),
    # "stopped_early", "restored", "monitor"}; empty when the run had no validation data.
    best: Dict[str, Any] = field(default_factory=dict)

    def to_json(self):
        return {
            "epoch_times_s": [round(t, 4) for t in self.epoch_times_s],
            "time_per_epoch_s": self.time_per_epoch_s,
            "time_per_epoch_note": self.time_per_epoch_note,
            "history": {k: [float(v) for v in vs] for k, vs in self.history.items()},
            "val_accuracy": self.val_accuracy,
            "epochs_run": self.epochs_run,
            "settings": self.settings,
            "early_stopping": self.best,
        }


# ---------------------------------------------------------------------------- speed settings

def training_config(model) -> TrainingConfig:
    """The speed settings a model carries: its attribute, else its compile config; AMP from its layers."""
    recorded = getattr(model, _ATTR, None)
    policy = mixed_precision_of(model)
    if isinstance(recorded, TrainingConfig):
        return dataclasses.replace(recorded, mixed_precision=policy)
    # A model loaded from a .keras file has no attribute but remembers how it was compiled.
    jit = getattr(model, "_jit_compile", None)
    if jit is None:
        jit = getattr(model, "jit_compile", False)
    spe = getattr(model, "_steps_per_execution", None) or getattr(model, "steps_per_execution", 1)
    compiled = bool(getattr(model, "compiled", False) or getattr(model, "_is_compiled", False))
    if not compiled:
        jit, spe = False, 1
    spe = int(spe.numpy()) if hasattr(spe, "numpy") else int(spe)
    return TrainingConfig(jit_compile=jit is True, steps_per_execution=spe, mixed_precision=policy)


def saved_training_config(path) -> Dict[str, Any]:
    """The XLA / step-fusing settings a saved `.keras` file recorded in its compile config.

    keras_io.load reads models with compile=False (a user's custom loss must not block loading),
    which drops the compile config; the settings are still in the file, so read them from there.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            compile_config = json.loads(zf.read("config.json")).get("compile_config") or {}
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return {}
    return {k: compile_config[k] for k in ("jit_compile", "steps_per_execution") if k in compile_config}


def copy_training_config(source, target) -> None:
    """Carry the recorded speed settings from `source` to a rebuilt/cloned `target` (AMP travels
    in the layers themselves)."""
    recorded = getattr(source, _ATTR, None)
    if isinstance(recorded, TrainingConfig):
        fields = dataclasses.asdict(recorded)
        fields.pop("mixed_precision")
        set_training_config(target, **fields)


def set_training_config(model, **changes) -> TrainingConfig:
    """Record speed settings on `model` (merged with what it already carries) and return them."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(TrainingConfig)}
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    config = dataclasses.replace(training_config(model), **changes)
    object.__setattr__(model, _ATTR, config) if _is_tracking(model) else setattr(model, _ATTR, config)
    return config


def _is_tracking(model):
    # Keras layers track attributes through __setattr__; bypassing it keeps the record out of
    # the layer's weights/sub-layer bookkeeping. Either way works; this is the quieter one.
    return hasattr(model, "_tracker") or hasattr(model, "_self_setattr_tracking")


def mixed_precision_of(model) -> Optional[str]:
    """The mixed policy used by the model's layers, or None when they all compute in float32."""
    for layer in _all_layers(model):
        name = _policy_name(layer)
        if name and name.startswith("mixed_"):
            return name
    return None


def _policy_name(layer):
    policy = getattr(layer, "dtype_policy", None) or getattr(layer, "_dtype_policy", None)
    return getattr(policy, "name", None)


def _all_layers(model):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])


# ---------------------------------------------------------------------------- fit / evaluate

def fit(model, data, *, epochs: int, batch_size: int = 32, learning_rate: Optional[float] = None,
        callbacks: Sequence[Any] = (), progress: bool = True, early_stopping: Any = "auto",
        keep_start: bool = False, first_candidate_epoch: int = 1,
        jit: Optional[bool] = None, steps_per_execution: Optional[int] = None, strategy=None,
        keep_compile: bool = False, seed: int = 0, shuffle: bool = True,
        plateau_factor: Optional[float] = None) -> TrainResult:
    """Train `model` (Keras 3 or tf_keras) in place on `data` for at most `epochs`, and time it.

    `data` is an optkit.data.Dataset (x_train, y_train, x_val, y_val) or a tuple
    `(x_train, y_train[, x_val, y_val])`; labels are integer class ids.
    `jit` / `steps_per_execution` default to the settings the model carries (see `training_config`);
    passing them overrides.
    With validation data the weights of the best validation epoch (accuracy, ties broken by lower
    loss) are restored at the end. `early_stopping` is the patience in epochs: "auto" (default)
    is PATIENCE, SMALL_DATA_PATIENCE on small data; None or 0 trains every epoch (best weights
    are still restored). `keep_start=True` counts the starting weights as a candidate (a
    fine-tune that never beats them gives them back); `first_candidate_epoch` ignores earlier
    epochs (a pruning ramp that has not reached its target sparsity yet).
    `keep_compile=True` keeps the optimizer and loss the model was compiled with.
    `callbacks` are passed to Keras untouched (e.g. tfmot's UpdatePruningStep on tf_keras models).
    `plateau_factor` (e.g. PLATEAU_FACTOR) multiplies the learning rate after each epoch without a
    better validation score; off by default (fine-tunes and their tests are tuned to a fixed rate).
    """
    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    x, y, x_val, y_val = _split(data)
    flavour = keras_io.flavour_of(model)
    K = keras_io.keras_module(flavour)
    K.utils.set_random_seed(seed)

    config = training_config(model)
    jit = config.jit_compile if jit is None else bool(jit)
    spe = config.steps_per_execution if steps_per_execution is None else int(steps_per_execution)
    if spe < 1:
        raise UserError(f"steps_per_execution must be >= 1, got {spe}")

    optimizer, loss_scaling = _compile(model, K, flavour, x, keep_compile=keep_compile,
                                       learning_rate=learning_rate, jit=jit, spe=spe,
                                       policy=config.mixed_precision, strategy=strategy)

    timer = _epoch_timer(K)
    cbs = [timer, *callbacks]
    has_val = x_val is not None and len(x_val) > 0
    keeper = None
    if has_val:
        patience = _patience(early_stopping, y, y_val)
        start = _start_score(model, x_val, y_val, batch_size) if keep_start else None
        keeper = _best_weights(K, patience=patience, start=start, first_epoch=first_candidate_epoch,
                               plateau_factor=plateau_factor)
        cbs.append(keeper)
    if progress:
        cbs.append(_progress_bar(K, epochs, _steps(len(x), batch_size)))
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=shuffle,
                        validation_data=(x_val, y_val) if has_val else None, callbacks=cbs)
    best = keeper.summary(epochs) if keeper is not None else {}
    if progress and best.get("restored"):
        from optkit import console

        console.write(f"kept the weights of {'the start' if best['best_epoch'] == 0 else 'epoch %d' % best['best_epoch']}"
                      f" (best validation accuracy {best['val_accuracy']:.4f})"
                      + (f"; stopped after epoch {len(timer.times)}" if best["stopped_early"] else ""))

    times = timer.times
    if len(times) > 1:
        per_epoch = statistics.median(times[1:])
        later = f"epochs 2-{len(times)}" if len(times) > 2 else "epoch 2"
        note = f"median of {later} (epoch 1 includes tracing/compilation: {times[0]:.2f} s)"
    else:
        per_epoch = times[0]
        note = "single epoch: includes tracing/compilation"
    val_acc = evaluate(model, x_val, y_val, batch_size=max(batch_size, 32)) if has_val else None
    settings = {"flavour": flavour, "jit_compile": jit, "steps_per_execution": spe,
                "mixed_precision": config.mixed_precision, "loss_scaling": loss_scaling,
                "optimizer": type(optimizer).__name__, "learning_rate": _lr_of(optimizer),
                "batch_size": batch_size, "seed": seed, "train_samples": int(len(x)),
                "val_samples": int(len(x_val)) if has_val else 0}
    return TrainResult(epoch_times_s=times, time_per_epoch_s=per_epoch, time_per_epoch_note=note,
                       history={k: [float(v) for v in vs] for k, vs in history.history.items()},
                       val_accuracy=val_acc, epochs_run=len(times), settings=settings, best=best)


def _patience(early_stopping, y, y_val) -> Optional[int]:
    if early_stopping == "auto":
        from optkit.data import is_small

        return SMALL_DATA_PATIENCE if is_small(np.concatenate([np.asarray(y).reshape(-1),
                                                              np.asarray(y_val).reshape(-1)])) else PATIENCE
    if early_stopping in (None, False, 0):
        return None
    patience = int(early_stopping)
    if patience < 1:
        raise UserError(f"early stopping patience must be >= 1 epoch, got {early_stopping}")
    return patience


def _start_score(model, x_val, y_val, batch_size):
    """(accuracy, loss) of the starting weights, measured the way Keras scores each epoch."""
    scores = model.evaluate(x_val, y_val, batch_size=max(batch_size, 32), verbose=0, return_dict=True)
    return _score(scores)


def _score(logs):
    """(accuracy, -loss): higher is better; accuracy first, the loss breaks ties between epochs
    whose accuracy is the same count of a small validation set."""
    logs = logs or {}
    acc = logs.get("val_accuracy", logs.get("accuracy"))
    loss = logs.get("val_loss", logs.get("loss"))
    return (float(acc) if acc is not None else float("-inf"),
            -float(loss) if loss is not None and np.isfinite(loss) else float("-inf"))


# fit(plateau_factor=PLATEAU_FACTOR): each epoch without a better validation score halves the
# learning rate for the rest of the fit (Keras' ReduceLROnPlateau with patience 1). The Lesson 14
# Naive CNN trained from scratch at Adam 1e-3 swung between 0.91 and 0.58 validation accuracy from
# one epoch to the next (issue 18), so a fixed rate left its best epoch to one lucky step. The rate
# is put back when the fit ends. Only baselines trained from scratch use it (optimize.py).
PLATEAU_FACTOR = 0.5


def _best_weights(K, *, patience, start, first_epoch, plateau_factor=None):
    """Keep the best validation epoch's weights, restore them at the end, scale the learning rate by
    `plateau_factor` (if given) after each epoch without improvement and stop after `patience` of them. Written here rather than Keras' EarlyStopping because the two
    flavours restore differently (tf_keras only when it stops early), and because a fine-tune
    must be able to lose to its starting weights."""

    class BestWeights(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_score = start
            self.best_epoch = 0 if start is not None else None
            self.best_weights = None      # None while the model's current weights are the best
            self.wait = 0
            self.stopped_early = False
            self.restored = False
            self.last_epoch = 0
            self.initial_lr = None        # set when a plateau first lowers the learning rate

        def on_train_begin(self, logs=None):
            if start is not None:
                self.best_weights = [w.copy() for w in self.model.get_weights()]

        def on_epoch_end(self, epoch, logs=None):
            self.last_epoch = epoch + 1
            if self.last_epoch < first_epoch:
                return
            score = _score({k: v for k, v in (logs or {}).items() if k.startswith("val_")})
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best_epoch, self.wait = score, self.last_epoch, 0
                self.best_weights = [w.copy() for w in self.model.get_weights()]
                return
            self.wait += 1
            if plateau_factor is not None:
                self._scale_learning_rate(plateau_factor)
            if patience is not None and self.wait >= patience:
                self.stopped_early = True
                self.model.stop_training = True

        def _learning_rate_variable(self):
            optimizer = getattr(self.model, "optimizer", None)
            lr = getattr(getattr(optimizer, "inner_optimizer", optimizer), "learning_rate", None)
            return lr if hasattr(lr, "assign") else None   # a schedule sets its own rate: leave it

        def _scale_learning_rate(self, factor):
            lr = self._learning_rate_variable()
            if lr is not None:
                value = float(np.asarray(lr.numpy()))
                if self.initial_lr is None:
                    self.initial_lr = value
                lr.assign(value * factor)

        def on_train_end(self, logs=None):
            lr = self._learning_rate_variable()
            if lr is not None and self.initial_lr is not None:
                lr.assign(self.initial_lr)   # the model keeps the settings it was given (steps/fit.py reuses them)
            if self.best_epoch is not None and self.best_epoch != self.last_epoch and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
                self.restored = True
            self.best_weights = None

        def summary(self, cap):
            acc = None if self.best_score is None else self.best_score[0]
            return {"monitor": "val_accuracy (ties: val_loss)", "patience": patience, "epochs_cap": int(cap),
                    "best_epoch": self.best_epoch, "val_accuracy": acc, "stopped_early": self.stopped_early,
                    "restored": self.restored, "start_was_candidate": start is not None,
                    "first_candidate_epoch": int(first_epoch)}

    return BestWeights()


def compile_with_settings(model, *, learning_rate: Optional[float] = None) -> TrainingConfig:
    """Compile `model` the way `fit` would, with the speed settings it carries, without training.

    Used by the speed steps so a model saved right after them records `jit_compile` and
    `steps_per_execution` in its compile config. The loss is chosen from the model's output on
    random inputs (probabilities or logits)."""
    config = training_config(model)
    flavour = keras_io.flavour_of(model)
    K = keras_io.keras_module(flavour)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    probe = np.random.default_rng(0).random((4,) + shape, dtype=np.float32)
    _compile(model, K, flavour, probe, keep_compile=False, learning_rate=learning_rate,
             jit=config.jit_compile, spe=config.steps_per_execution, policy=config.mixed_precision)
    return config


def _compile(model, K, flavour, x, *, keep_compile, learning_rate, jit, spe, policy, strategy=None):
    scope = strategy.scope() if strategy is not None else _nullcontext()
    with scope:
        optimizer, loss, loss_scaling = _optimizer_and_loss(model, K, flavour, x, keep_compile,
                                                            learning_rate, policy)
        compile_kwargs = dict(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                              jit_compile=jit, steps_per_execution=spe)
        if flavour == keras_io.KERAS3:
            # We scale the loss ourselves (float16 only); bfloat16 has float32's range and needs none.
            compile_kwargs["auto_scale_loss"] = False
        model.compile(**compile_kwargs)
    set_training_config(model, jit_compile=jit, steps_per_execution=spe)
    return optimizer, loss_scaling


def evaluate(model, x, y, batch_size: int = 32) -> float:
    """Top-1 accuracy of `model` on (x, y), through keras_io's compiled inference path."""
    if x is None or len(x) == 0:
        raise UserError("no samples to evaluate on")
    from optkit import metrics

    pred = keras_io.predict(model, x, batch_size=batch_size)
    if isinstance(pred, (list, tuple)):
        pred = pred[0]
    return metrics.accuracy(np.asarray(pred, dtype=np.float32), y)


# ---------------------------------------------------------------------------- helpers

def _split(data):
    if isinstance(data, (tuple, list)):
        if len(data) == 2:
            return np.asarray(data[0]), np.asarray(data[1]), None, None
        if len(data) == 4:
            return tuple(None if d is None else np.asarray(d) for d in data)
        raise UserError("training data must be (x, y) or (x, y, x_val, y_val)")
    try:
        return data.x_train, data.y_train, getattr(data, "x_val", None), getattr(data, "y_val", None)
    except AttributeError:
        raise UserError(f"cannot train on {type(data).__name__}: expected an optkit Dataset or (x, y)") from None


def _optimizer_and_loss(model, K, flavour, x, keep_compile, learning_rate, policy):
    existing = getattr(model, "optimizer", None)
    if keep_compile and existing is not None and getattr(model, "loss", None) is not None:
        optimizer, loss = existing, model.loss
        if learning_rate is not None:
            optimizer.learning_rate = learning_rate
    else:
        optimizer = K.optimizers.Adam(learning_rate=1e-3 if learning_rate is None else learning_rate)
        loss = _loss_for(model, K, x)
    loss_scaling = False
    if policy == "mixed_float16":
        # float16 gradients underflow without loss scaling; bfloat16 keeps float32's exponent range.
        lso = K.mixed_precision.LossScaleOptimizer
        if not isinstance(optimizer, lso):
            optimizer = lso(optimizer)
        loss_scaling = True
    return optimizer, loss, loss_scaling


def _loss_for(model, K, x):
    """Sparse cross-entropy, from logits unless the model already ends in a probability output."""
    probe = np.asarray(keras_io.predict(model, x[: min(len(x), 8)], batch_size=8), dtype=np.float32)
    if probe.ndim == 2 and probe.shape[1] == 1:
        from_logits = not (probe.min() >= 0.0 and probe.max() <= 1.0)
        return K.losses.BinaryCrossentropy(from_logits=from_logits)
    probe = probe.reshape(len(probe), -1)
    is_prob = probe.min() >= 0.0 and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3)
    return K.losses.SparseCategoricalCrossentropy(from_logits=not is_prob)


def _lr_of(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = getattr(inner, "learning_rate", None)
    try:
        return float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))
    except (TypeError, ValueError):
        return None


def _steps(n, batch_size):
    return max(1, -(-n // batch_size))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _epoch_timer(K):
    class EpochTimer(K.callbacks.Callback):
        """Wall time of each epoch (training steps plus the end-of-epoch validation pass)."""

        def __init__(self):
            super().__init__()
            self.times = []
            self._start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    return EpochTimer()


def _progress_bar(K, epochs, steps):
    """A per-step bar on stderr (nested under any open stage bar) and a line per epoch."""
    from optkit import console

    class Progress(K.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def on_epoch_begin(self, epoch, logs=None):
            # tqdm is in the `report` extra; without it training still prints a line per epoch.
            self.bar = console.bar(steps, f"epoch {epoch + 1}/{epochs}", unit="step")

        def on_train_batch_end(self, batch, logs=None):
            # With steps_per_execution > 1 Keras calls this once per execution with the last step index.
            if self.bar is not None:
                self.bar.update(min(steps, batch + 1) - self.bar.n)

        def on_epoch_end(self, epoch, logs=None):
            if self.bar is not None:
                self.bar.close()
            shown = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items())
                             if "acc" in k or "loss" in k)
            console.write(f"epoch {epoch + 1}/{epochs}: {shown}")

    return Progress()
