"""Rebuild a Keras 3 Sequential or functional model with some layers replaced (used by the rewrites).

The edit works on the model's *config* (the same description a `.keras` file stores), not on live
layer objects: a replaced layer's entry is swapped for the entries of its replacement chain, the
tensors that pointed at the old layer are re-pointed at the chain's last layer, and Keras rebuilds
the graph with `from_config`. That keeps residual adds, concatenations, shared inputs and nested
models intact without hand-walking the graph. Every layer of the result is a new object (training the
rewritten model never touches the original); untouched layers get their weights copied unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from optkit import keras_io
from optkit.errors import UserError


def check_rebuildable(model) -> None:
    """UserError naming the culprit if `model` is not a graph of built-in Keras 3 layers."""
    if keras_io.flavour_of(model) != keras_io.KERAS3:
        raise UserError("graph rewrites work on Keras 3 models; convert with keras_io.to_keras3 first")
    if not keras_io.is_graph_model(model):
        raise UserError(f"model '{model.name}' is a subclassed {type(model).__name__}: its call() is Python code, "
                        "so optkit cannot rewrite its graph (rebuild it as a functional or Sequential model)")
    for layer in walk_layers(model):
        if keras_io.is_graph_model(layer):
            continue
        if not keras_io.is_builtin(layer):
            raise UserError(f"layer '{layer.name}' is a custom layer ({keras_io.class_path(layer)}); "
                            "optkit can only rewrite graphs made of built-in Keras layers")



def walk_layers(model) -> Iterable:
    """Every layer, descending into nested models, in the model's own (topological) order."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from walk_layers(layer)


@dataclass
class Topology:
    """The wiring of a model's top level, read from its config (the same source `rebuild` edits).

    Live layer objects are not used for this: a layer's `_inbound_nodes` also counts calls made
    while a Sequential model is built or converted, and would report unshared layers as shared."""

    calls: Dict[str, int]                 # layer name -> times called in this model
    consumers: Dict[str, List[str]]       # layer name -> names of layers reading its output
    input_shapes: Dict[str, object]       # layer name -> build input shape (None if unknown)


def topology(model) -> Topology:
    config = model.get_config()
    entries = config["layers"]
    calls, consumers, shapes = {}, {}, {}
    names = [e.get("name") or e.get("config", {}).get("name") for e in entries]
    sequential = "input_layers" not in config
    for i, (name, entry) in enumerate(zip(names, entries)):
        shapes[name] = (entry.get("build_config") or {}).get("input_shape")
        consumers.setdefault(name, [])
        if sequential:
            calls[name] = calls.get(name, 0) + 1
            if i + 1 < len(names):
                consumers[name].append(names[i + 1])
            continue
        calls[name] = len(entry.get("inbound_nodes") or [])
        for source in _referenced_layers(entry.get("inbound_nodes")):
            consumers.setdefault(source, []).append(name)
    return Topology(calls, consumers, shapes)


def _referenced_layers(node):
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            yield node["config"]["keras_history"][0]
            return
        for value in node.values():
            yield from _referenced_layers(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _referenced_layers(value)


def rebuild(model, replace: Dict[str, Sequence], weights: Optional[Dict[str, List]] = None):
    """A new model in which each layer named in `replace` is swapped for a chain of new layers.

    `replace`: old layer name -> list of new, unbuilt Keras 3 layers applied one after another to the
    old layer's input; the last one's output takes the old layer's place. A chain may reuse the old
    name. `weights`: new layer name -> weight list to set after the rebuild. Every other layer is
    re-created from its config and receives the original's weights unchanged.
    """
    check_rebuildable(model)
    weights = dict(weights or {})
    top_level = {l.name for l in model.layers}
    calls = topology(model).calls
    for name, chain in replace.items():
        if name not in top_level:
            raise ValueError(f"no top-level layer named '{name}'")
        if not chain:
            raise ValueError(f"empty replacement for '{name}'")
        if calls.get(name, 1) > 1:
            raise UserError(f"layer '{name}' is shared (called {calls[name]} times); "
                            "optkit does not rewrite shared layers")
    _check_names(model, replace)

    config = copy.deepcopy(model.get_config())
    keras = keras_io.keras3()
    if _is_sequential(model, config):
        config["layers"] = _splice_sequential(config["layers"], replace, keras)
    else:
        config = _splice_functional(config, replace, keras)
    return _from_config(model, config, weights, skip=set(replace))


def rebuild_with_config_changes(model, changes: Dict[str, Dict], weights: Dict[str, List]):
    """A new model in which some layers' config entries are changed (e.g. `filters`) and their
    weights replaced; every layer is rebuilt from the tensors it is called on, so a change of
    width propagates to the layers after it (whose new weights must then be given too)."""
    check_rebuildable(model)
    config = copy.deepcopy(model.get_config())
    unknown = set(changes) - {l.name for l in model.layers}
    if unknown:
        raise ValueError(f"no top-level layers named {sorted(unknown)}")
    for entry in config["layers"]:
        cfg = entry.get("config") or {}
        name = entry.get("name") or cfg.get("name")
        cfg.update(changes.get(name, {}))
        # A recorded build shape would build the layer at its old width before it is called.
        entry.pop("build_config", None)
    return _from_config(model, config, dict(weights))


def _is_sequential(model, config):
    return type(model).__name__ == "Sequential" or "input_layers" not in config


def _from_config(model, config, weights, skip=frozenset()):
    keras = keras_io.keras3()
    cls = keras.Sequential if _is_sequential(model, config) else keras.Model
    new = keras_io.from_config_trusted(cls, config)   # the model is already in memory

    top_level = {l.name for l in model.layers}
    for layer in new.layers:
        if layer.name in weights:
            layer.set_weights(weights.pop(layer.name))
        elif layer.name not in skip and layer.name in top_level:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    if weights:
        raise ValueError(f"weights given for layers not in the rebuilt model: {sorted(weights)}")
    _carry_training_config(model, new)
    return new


def _check_names(model, replace):
    taken = {l.name for l in model.layers} - set(replace)
    seen = set()
    for chain in replace.values():
        for layer in chain:
            if layer.name in taken or layer.name in seen:
                raise ValueError(f"replacement layer name '{layer.name}' is already used")
            seen.add(layer.name)


def _entry(layer, keras):
    entry = keras.saving.serialize_keras_object(layer)
    entry.pop("build_config", None)      # built from the tensors it is called on, not the old shapes
    entry["name"] = layer.name
    return entry


def _splice_sequential(entries, replace, keras):
    out = []
    for entry in entries:
        name = entry.get("config", {}).get("name")
        if name in replace:
            out.extend(_entry(layer, keras) for layer in replace[name])
        else:
            out.append(entry)
    return out


def _output_shape(layer, input_shape):
    # Only recorded in the link's tensor description; Keras re-derives the real tensor when it
    # rebuilds, so an unknown shape degrades to "rank unknown" rather than failing.
    try:
        return list(layer.compute_output_shape(tuple(input_shape)))
    except Exception:
        return [None]


def _ref(name, shape=None, dtype="float32"):
    shape = list(shape) if shape is not None else [None]
    return {"class_name": "__keras_tensor__", "config": {"shape": shape, "dtype": dtype, "keras_history": [name, 0, 0]}}


def _splice_functional(config, replace, keras):
    renamed = {}
    layers = []
    inner = set()      # chain links after the first: they point at their own chain, never repointed
    for entry in config["layers"]:
        name = entry["name"]
        if name not in replace:
            layers.append(entry)
            continue
        chain = replace[name]
        previous, shape = None, (entry.get("build_config") or {}).get("input_shape")
        for i, layer in enumerate(chain):
            new_entry = _entry(layer, keras)
            new_entry["inbound_nodes"] = entry["inbound_nodes"] if i == 0 else [{"args": [_ref(previous, shape)], "kwargs": {}}]
            layers.append(new_entry)
            if i > 0:
                inner.add(layer.name)
            previous, shape = layer.name, _output_shape(layer, shape)
        renamed[name] = chain[-1].name
    config["layers"] = layers
    if any(old != new for old, new in renamed.items()):
        for entry in layers:
            if entry["name"] not in inner:
                entry["inbound_nodes"] = _repoint(entry["inbound_nodes"], renamed)
        config["output_layers"] = _repoint(config["output_layers"], renamed)
    return config


def _repoint(node, renamed):
    """Replace references to renamed layers: keras_history triples and [name, node, tensor] refs."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            history = node["config"]["keras_history"]
            if history[0] in renamed:
                node = copy.deepcopy(node)
                node["config"]["keras_history"] = [renamed[history[0]], *history[1:]]
            return node
        return {k: _repoint(v, renamed) for k, v in node.items()}
    if isinstance(node, (list, tuple)):      # Keras' configs mix lists and tuples
        if len(node) == 3 and isinstance(node[0], str) and node[0] in renamed and isinstance(node[1], int):
            return [renamed[node[0]], node[1], node[2]]
        return [_repoint(v, renamed) for v in node]
    return node


def _carry_training_config(old, new):
    # Speed settings ride on the model object (optkit.train); a rewrite must not drop them.
    from optkit import train

    train.copy_training_config(old, new)
