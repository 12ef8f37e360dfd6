"""`train`: train the model further with the settings it carries (optkit.train.fit).

The speed steps (`jit`, `amp`, `fusing`, `tune`) only record how a model wants to be trained; a
`train` step after them trains it that way and measures the time per epoch. The Lesson 14 ladder's
speed rungs are `separable:epochs=0 -> jit -> ... -> train`, so every rung trains the same number
of epochs from the same rewritten weights and differs from the others only by its settings.
"""
from __future__ import annotations

from dataclasses import dataclass

from optkit import keras_io, train
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult


@dataclass(frozen=True)
class Options:
    epochs: int = option(-1, "epochs (-1: the run's --epochs)", min=-1)


def apply(model, ctx, *, epochs=-1):
    data = getattr(ctx, "data", None)
    if data is None:
        raise UserError("train: needs labelled data (--data)")
    epochs = ctx.epochs if epochs < 0 else epochs
    # A copy: the parent's model stays as it was (its own variant).
    new = keras_io.clone(model)
    train.copy_training_config(model, new)
    # keep_start: training further never hands back weights worse on validation than it started
    # from (the ladder's speed rungs then match Separable, which keeps its exact rewrite the same way).
    result = train.fit(new, data, epochs=epochs, batch_size=ctx.batch_size, progress=ctx.progress,
                       seed=ctx.seed, strategy=(ctx.extra or {}).get("strategy"), keep_start=True)
    return StepResult(new, {"training": result.to_json()})


STEP = Step(
    name="train",
    help="Train the model further with the speed settings it carries, and time it.",
    apply=apply,
    options=Options,
    kind="train",
)
