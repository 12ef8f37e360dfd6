"""`channel_prune`: structured pruning that removes whole filters, so the model gets faster.

Magnitude pruning (`prune`) zeroes weights inside unchanged tensors: the compressed file
shrinks, latency does not (tensorflow/model-optimization#611). This step deletes the least
important output channels of convolutions and Dense layers and rebuilds a smaller model;
optkit.channel_graph decides which channels must go together (residual adds, concatenations,
BatchNormalization, depthwise convolutions, the Dense after Flatten/pooling) and keeps the
model's inputs and outputs unchanged.

Schedule: `iterations=K` removes ratio/K of each group's original channels per round and
fine-tunes after every round (early stopping on validation accuracy, best weights restored).
`scope=layer` removes the same share from every group; `scope=global` ranks all channels of
all groups together (importance normalised by each group's mean, so groups of different scale
compare) and removes the lowest, keeping at least MIN_KEEP of every group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from optkit import channel_graph, compression, keras_io, model_cost, train
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult

IMPORTANCES = ("l1", "l2", "bn_gamma", "taylor")
SCOPES = ("layer", "global")
# Under global ranking a group may lose at most this share: a group emptied to one channel
# turns the network into a bottleneck the fine-tune rarely recovers from.
MIN_KEEP = 0.1
# Taylor importance: gradients accumulated over this many training samples.
TAYLOR_SAMPLES = 256


@dataclass(frozen=True)
class Options:
    ratio: float = option(0.5, "share of each group's channels to remove", min=0.0, max=1.0, max_open=True)
    importance: str = option("l2", "l1 | l2 (filter norms) | bn_gamma (|BN scale|) | taylor (|w·grad|)",
                             choices=IMPORTANCES)
    scope: str = option("layer", "layer (same share per group) | global (rank all channels together)",
                        choices=SCOPES)
    layers: str = option("", "prune only groups produced by these layer names or types, '+'-separated")
    iterations: int = option(1, "prune in K rounds of ratio/K, fine-tuning after each", min=1)
    epochs: int = option(-1, "fine-tuning epochs in total (-1: the run's --epochs; 0: none)", min=-1)
    # Validation accuracy on a few hundred images is noisy: with patience 2, ResNet-20 stopped
    # after 5 of 8 epochs at 91.3%; with 4 it ran all 8 and reached 95.8% (benchmarks/pruning.py).
    patience: int = option(4, "early stopping patience in epochs (best validation weights restored)", min=1)
    lr: float = option(1e-3, "fine-tune learning rate (Adam)", min=0.0, min_open=True)


def apply(model, ctx, *, ratio=0.5, importance="l2", scope="layer", layers="", iterations=1,
          epochs=-1, patience=4, lr=1e-3):
    # Types, choices and ranges were checked when the plan was built (Options).
    data = getattr(ctx, "data", None)
    if importance == "taylor" and (data is None or getattr(data, "x_train", None) is None or not len(data.x_train)):
        raise UserError("channel_prune: importance=taylor needs training data (--data SRC) for its gradients")
    source = keras_io.as_keras3(model)
    graph = channel_graph.ChannelGraph(source)
    keys = _selected(graph, compression.parse_layer_list(layers))
    original = {_key(g): g.channels for g in graph.prunable_groups() if _key(g) in keys}
    epochs_total = ctx.epochs if epochs is None or epochs < 0 else epochs
    per_round = _split_epochs(epochs_total, iterations)

    info = {"technique": "structured channel pruning (filters removed, dependency-aware)",
            "ratio": ratio, "importance": importance, "scope": scope, "iterations": iterations,
            "input_flavour": keras_io.flavour_of(model),
            "params_before": int(source.count_params()),
            "multiply_adds_before": model_cost.total_multiply_adds(source),
            "accuracy_before": compression.accuracy(source, data), "rounds": []}
    current = source
    for round_index in range(1, iterations + 1):
        graph = channel_graph.ChannelGraph(current) if current is not source else graph
        groups = {_key(g): g for g in graph.prunable_groups() if _key(g) in original}
        grads = _gradients(current, data, ctx) if importance == "taylor" else None
        scores = {k: graph.importance(g, importance, grads) for k, g in groups.items()}
        share = ratio * round_index / iterations
        targets = _targets(original, groups, scores, share, scope)
        keep = {groups[k].id: np.sort(np.argsort(-scores[k], kind="stable")[:n]) for k, n in targets.items()
                if n < groups[k].channels}
        if keep:
            current = graph.prune(keep)
        record = {"round": round_index, "removed_share": round(share, 4), "params": int(current.count_params()),
                  "accuracy_after_prune": compression.accuracy(current, data)}
        if data is not None and per_round[round_index - 1] > 0:
            result = train.fit(current, data, epochs=per_round[round_index - 1], batch_size=ctx.batch_size,
                               learning_rate=lr, early_stopping=patience, progress=ctx.progress, seed=ctx.seed)
            record["fine_tune"] = {"epochs_run": result.epochs_run, "val_accuracy": result.val_accuracy,
                                   "early_stopping": result.best}
        else:
            record["fine_tune"] = "skipped: no --data" if data is None else "skipped: 0 epochs"
        info["rounds"].append(record)

    final = channel_graph.ChannelGraph(current)
    widths = {_key(g): g.channels for g in final.prunable_groups()}
    info.update({
        "params_after": int(current.count_params()),
        "multiply_adds_after": model_cost.total_multiply_adds(current),
        "accuracy_after": compression.accuracy(current, data),
        "groups": [{"producers": list(k), "channels_before": n, "channels_after": widths.get(k, n)}
                   for k, n in original.items()],
        "fixed_groups": [f"{'+'.join(g['producers'])}: {g['why']}" for g in graph.summary()["fixed"]],
        "outputs_unchanged": [tuple(t.shape) for t in current.outputs] == [tuple(t.shape) for t in source.outputs],
        "model": "Keras 3 model (rebuilt from its config with smaller layers)",
    })
    info["params_ratio"] = round(info["params_after"] / max(1, info["params_before"]), 4)
    info["multiply_adds_ratio"] = round(info["multiply_adds_after"] / max(1, info["multiply_adds_before"]), 4)
    return StepResult(current, info)


def _key(group) -> Tuple[str, ...]:
    """A group's identity across rebuilds: its producers' names (rebuilds keep layer names)."""
    return tuple(sorted(group.producers))


def _selected(graph, wanted: List[str]):
    prunable = graph.prunable_groups()
    if not prunable:
        why = "; ".join(f"{'+'.join(g['producers'])}: {g['why']}" for g in graph.summary()["fixed"][:3])
        raise UserError(f"channel_prune: no channel group of this model can shrink ({why or 'no conv/Dense layers'})")
    if not wanted:
        return {_key(g) for g in prunable}
    layers = {l.name: type(l).__name__ for l in graph.model.layers}
    for entry in wanted:
        if entry not in layers and entry not in layers.values():
            raise UserError(f"channel_prune: no layer named or of type '{entry}'")
    chosen = {_key(g) for g in prunable if any(p in wanted or layers[p] in wanted for p in g.producers)}
    if not chosen:
        raise UserError(f"channel_prune: none of {', '.join(wanted)} produces prunable channels "
                        "(their channels reach an input/output or a layer optkit cannot resize)")
    return chosen


def _split_epochs(total, rounds):
    base, extra = divmod(max(0, total), rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def _targets(original: Dict, groups: Dict, scores: Dict, share: float, scope: str) -> Dict:
    """Channels each group keeps after removing `share` of the original channels."""
    if scope == "layer":
        return {k: max(1, original[k] - int(math.floor(share * original[k] + 1e-9))) for k in groups}
    floor = {k: max(1, math.ceil(MIN_KEEP * original[k])) for k in groups}
    total_keep = sum(original[k] for k in groups) - int(math.floor(share * sum(original[k] for k in groups) + 1e-9))
    # Every channel above its group's floor competes on normalised importance.
    candidates = []
    for k, s in scores.items():
        norm = s / max(float(np.mean(s)), 1e-12)
        order = np.argsort(-norm, kind="stable")
        candidates += [(float(norm[i]), k) for i in order[floor[k]:]]
    candidates.sort(key=lambda c: -c[0])
    keep = dict(floor)
    for _, k in candidates[:max(0, total_keep - sum(floor.values()))]:
        keep[k] += 1
    return {k: min(keep[k], groups[k].channels) for k in groups}


def _gradients(model, data, ctx) -> Dict[str, Dict[str, np.ndarray]]:
    """∂loss/∂w for every weight, summed over TAYLOR_SAMPLES training samples."""
    tf = keras_io.tf()
    train.compile_with_settings(model)
    loss_fn = model.loss
    x, y = data.x_train[:TAYLOR_SAMPLES], data.y_train[:TAYLOR_SAMPLES]
    owners = [(layer.name, w) for layer in model.layers for w in layer.trainable_weights]
    total = [None] * len(owners)
    for start in range(0, len(x), ctx.batch_size):
        xb, yb = x[start:start + ctx.batch_size], y[start:start + ctx.batch_size]
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=False))
        grads = tape.gradient(loss, [w for _, w in owners])
        for i, g in enumerate(grads):
            if g is not None:
                total[i] = g.numpy() if total[i] is None else total[i] + g.numpy()
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for (name, w), g in zip(owners, total):
        if g is not None:
            out.setdefault(name, {})[w.name] = g
    return out


def inspect(model) -> Optional[dict]:
    """What `optkit inspect` says about channel pruning: the groups that can shrink, and why the
    others cannot."""
    try:
        summary = channel_graph.ChannelGraph(keras_io.as_keras3(model)).summary()
    except UserError as exc:
        return {"prunable_groups": 0, "note": str(exc)}
    return summary


STEP = Step(
    name="channel_prune",
    help="Structured pruning: remove whole filters (Conv/Separable/Transpose/Dense), dependency-aware "
         "across residual adds, concatenations, BN and depthwise convs; fine-tuned with early stopping.",
    apply=apply,
    options=Options,
    kind="compression",
)
