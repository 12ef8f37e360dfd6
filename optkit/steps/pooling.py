"""`pooling`: Flatten -> Dense heads become GlobalAveragePooling2D (or GlobalMaxPooling2D) -> Dense.

A Dense layer after Flatten has one weight per (row, column, channel, unit). After global pooling it
sees one value per channel, so its new weight for (channel, unit) is the old weights summed over all
spatial positions: Σ_{h,w} x[h,w,c]·W[h,w,c,u] = x_c·Σ_{h,w} W[h,w,c,u] whenever the features are
constant over space (then the pooled value x_c equals every x[h,w,c], for average and max alike), so
the new head is exact on such features and a close start otherwise. The flattened Dense is where most
of a naive CNN's parameters sit (Lesson 14: 7.5 M -> 5.9 M).

Between Flatten and Dense only layers that are the identity at inference (Dropout and friends) may
sit; they are kept. Every Dense fed by the Flatten is rewritten. Channels-last only.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from dataclasses import dataclass

from optkit import graph_edit, keras_io
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult, _rewrite_eval

# Identity at inference time, so a Dense behind them still reads the flattened features directly.
PASS_THROUGH = {"Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"}


def heads(model) -> List[Dict]:
    """Each Flatten with the Dense layers it feeds, and why it can or cannot be rewritten."""
    found = []
    top = {id(l) for l in model.layers}
    topo = graph_edit.topology(model)
    for layer in graph_edit.walk_layers(model):
        if type(layer).__name__ != "Flatten":
            continue
        entry = {"flatten": layer, "denses": [], "reason": ""}
        shape = tuple(topo.input_shapes.get(layer.name) or ()) if id(layer) in top else ()
        if id(layer) not in top:
            entry["reason"] = "inside a nested model"
        elif len(shape) != 4:
            entry["reason"] = f"input is not a 2-D feature map (shape {shape})"
        elif (layer.get_config().get("data_format") or "channels_last") != "channels_last":
            entry["reason"] = "channels_first Flatten"
        elif topo.calls.get(layer.name, 1) > 1:
            entry["reason"] = "shared layer"
        else:
            frontier = [model.get_layer(n) for n in topo.consumers.get(layer.name, [])]
            while frontier and not entry["reason"]:
                nxt = frontier.pop()
                kind = type(nxt).__name__
                if kind == "Dense" and topo.calls.get(nxt.name, 1) == 1:
                    entry["denses"].append(nxt)
                elif kind in PASS_THROUGH:
                    frontier.extend(model.get_layer(n) for n in topo.consumers.get(nxt.name, []))
                else:
                    entry["reason"] = f"feeds '{nxt.name}' ({kind}), not only Dense layers"
            if not entry["denses"] and not entry["reason"]:
                entry["reason"] = "feeds no Dense layer"
        entry["spatial"] = shape[1:3] if len(shape) == 4 else None
        found.append(entry)
    return found


def applicable(model) -> bool:
    """True if the model has a Flatten -> Dense head this step can rewrite (for `optkit inspect`)."""
    try:
        return any(not h["reason"] for h in heads(model))
    except Exception:
        return False


def why_not(model):
    """Why the step cannot rewrite `model` (None when it can): the reason per Flatten, or why the
    model cannot be read as Keras 3 at all (a tf_keras model nested in another)."""
    try:
        source = keras_io.as_keras3(model)
    except Exception as exc:   # noqa: BLE001 - conversion failures are the answer here
        text = " ".join(str(exc).split())[:200]
        return f"the model cannot be rebuilt as Keras 3 to rewrite its head ({text})"
    found = heads(source)
    if any(not h["reason"] for h in found):
        return None
    return "no Flatten -> Dense head to rewrite (" + ("; ".join(
        f"{h['flatten'].name}: {h['reason']}" for h in found) or "the model has no Flatten layer") + ")"


def pooled_dense_kernel(kernel: np.ndarray, spatial) -> np.ndarray:
    """(H·W·C, units) Dense kernel after Flatten -> (C, units): summed over the H·W positions."""
    h, w = spatial
    units = kernel.shape[1]
    return kernel.reshape(h, w, -1, units).sum(axis=(0, 1)).astype(kernel.dtype)


def rewrite(model, *, pool: str = "avg"):
    """Keras 3 model -> (rewritten model, per-head info). The original is not modified."""
    if pool not in ("avg", "max"):
        raise UserError(f"pooling: pool must be 'avg' or 'max', got '{pool}'")
    graph_edit.check_rebuildable(model)
    keras = keras_io.keras3()
    replace, weights, report = {}, {}, []
    for head in heads(model):
        flatten = head["flatten"]
        if head["reason"]:
            report.append({"flatten": flatten.name, "rewritten": False, "reason": head["reason"]})
            continue
        cls = keras.layers.GlobalAveragePooling2D if pool == "avg" else keras.layers.GlobalMaxPooling2D
        pool_name = _free_name(model, f"{flatten.name}_{'gap' if pool == 'avg' else 'gmp'}")
        replace[flatten.name] = [cls(name=pool_name, dtype=flatten.dtype_policy)]
        for dense in head["denses"]:
            kernel, *rest = dense.get_weights()
            # Same config, unbuilt: it is rebuilt for C inputs instead of H·W·C.
            replace[dense.name] = [type(dense).from_config(dense.get_config())]
            weights[dense.name] = [pooled_dense_kernel(kernel, head["spatial"]), *rest]
            report.append({"flatten": flatten.name, "pool": pool_name, "dense": dense.name, "rewritten": True,
                           "spatial": list(head["spatial"]),
                           "params_before": int(dense.count_params()),
                           "params_after": int(kernel.shape[1] * (kernel.shape[0] // int(np.prod(head["spatial"])))
                                               + sum(r.size for r in rest))})
    if not replace:
        why = "; ".join(f"{r['flatten']}: {r['reason']}" for r in report) or "the model has no Flatten layer"
        raise UserError(f"pooling: no Flatten -> Dense head to rewrite ({why})")
    return graph_edit.rebuild(model, replace, weights), report


def _free_name(model, wanted):
    names = {l.name for l in graph_edit.walk_layers(model)}
    name, i = wanted, 1
    while name in names:
        i += 1
        name = f"{wanted}_{i}"
    return name


@dataclass(frozen=True)
class Options:
    pool: str = option("avg", "avg (GlobalAveragePooling2D) or max (GlobalMaxPooling2D)", choices=("avg", "max"))
    epochs: int = option(-1, "fine-tuning epochs (-1: the run's --epochs; 0: none)", min=-1)


def apply(model, ctx, *, pool="avg", epochs=-1):
    source = keras_io.as_keras3(model)
    new, per_head = rewrite(source, pool=pool)
    info = {"pool": pool, "heads": per_head,
            "params_before": int(source.count_params()), "params_after": int(new.count_params())}
    info.update(_rewrite_eval.measure_and_finetune(source, new, ctx, epochs))
    return StepResult(new, info)


STEP = Step(
    name="pooling",
    help="Replace Flatten -> Dense heads by global pooling -> Dense, the Dense initialised from the old "
         "weights summed over spatial positions, then fine-tune.",
    apply=apply,
    options=Options,
    kind="rewrite",
    check=why_not,
)
