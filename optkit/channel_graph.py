"""Which output channels of a Keras 3 model can be removed, and which must be removed together.

Structured (channel) pruning deletes whole filters, so every layer that reads those channels
must lose the matching input slices, and channels that meet in a residual Add, a Multiply, a
BatchNormalization, a depthwise convolution or a Concatenate are one and the same channel
seen from several layers (Torch-Pruning's "dependency graph", here built from the model's
config, the same description a `.keras` file stores).

How it is built: every tensor's last axis (channels_last) is described by a *layout*, an ordered
list of segments, each segment a run of channels of one *channel space*, repeated `repeat` times
(a Flatten of an H×W×C map repeats the C channels H·W times). A layer that makes new channels
(Conv2D, SeparableConv2D by its pointwise output, Conv2DTranspose, Dense) starts a new space;
element-wise layers pass the layout through; Add/Multiply/... merge the spaces of their inputs
(union-find: merged spaces are one group); Concatenate joins the segments. A space that reaches
a model input or output, or a layer this module does not understand, is *fixed*: its channels
stay. Every other space is a prunable group.

Pruning a group keeps a subset of its channels; every layer is then rebuilt from its config with
its weights sliced: producers lose output filters, consumers lose input rows, BatchNormalization
and depthwise convolutions lose their per-channel entries, and a Reshape to (1, 1, C) (a
squeeze-excite block) gets its new C. Inputs and outputs keep their shapes by construction.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from optkit import graph_edit, keras_io
from optkit.errors import UserError

# Layers that make new channels, and the weight/axis holding them.
PRODUCERS = ("Conv2D", "Conv1D", "SeparableConv2D", "Conv2DTranspose", "Dense")
# Element-wise or spatial-only layers: channel c out is channel c in.
PASS_THROUGH = {
    "Activation", "ReLU", "ELU", "LeakyReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D",
}
# Layers whose inputs are the same channels (merged into one group).
MERGES = {"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"}
# Per-channel layers whose vectors are sliced with the group.
MEMBERS = {"BatchNormalization", "LayerNormalization", "DepthwiseConv2D"}
# Activations that mix channels (a softmax over a shrunk axis changes the kept values).
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


@dataclass(frozen=True)
class Layout:
    """The channels along a tensor's last axis: `repeat` × the concatenation of `segments`,
    each segment (space id, length)."""

    segments: Tuple[Tuple[int, int], ...]
    repeat: int = 1

    @property
    def width(self):
        return sum(n for _, n in self.segments)


@dataclass
class Group:
    """Channels that are removed together."""

    id: int
    channels: int
    producers: List[str] = field(default_factory=list)   # layers whose filters these are
    members: List[str] = field(default_factory=list)     # BN / depthwise / LN sliced alongside
    consumers: List[str] = field(default_factory=list)   # layers losing input rows
    fixed: List[str] = field(default_factory=list)       # why the channels must stay (empty: prunable)

    @property
    def prunable(self):
        return not self.fixed and bool(self.producers) and self.channels > 1

    def to_json(self):
        return {"id": self.id, "channels": self.channels, "producers": self.producers,
                "members": self.members, "consumers": self.consumers, "prunable": self.prunable,
                "fixed": self.fixed[:3]}


class _Spaces:
    """Union-find over channel spaces; a merged space is fixed if any part was."""

    def __init__(self):
        self.parent: List[int] = []
        self.length: List[Optional[int]] = []
        self.fixed: List[List[str]] = []

    def new(self, length, fixed=None):
        self.parent.append(len(self.parent))
        self.length.append(length)
        self.fixed.append([fixed] if fixed else [])
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        self.parent[rb] = ra
        self.fixed[ra] += self.fixed[rb]
        if self.length[ra] is None:
            self.length[ra] = self.length[rb]
        return ra

    def fix(self, s, reason):
        self.fixed[self.find(s)].append(reason)


@dataclass
class _Role:
    name: str
    cls: str
    kind: str                       # producer | member | reshape | other
    in_layout: Optional[Layout] = None
    out_space: Optional[int] = None


class ChannelGraph:
    """The channel dependencies of one Keras 3 model (see the module docstring)."""

    def __init__(self, model):
        graph_edit.check_rebuildable(model)
        self.model = model
        self.spaces = _Spaces()
        self.roles: Dict[str, _Role] = {}
        self._tensors: Dict[Tuple[str, int, int], Layout] = {}
        self._build()
        self.groups = self._collect_groups()

    # ------------------------------------------------------------------ building

    def _fixed_layout(self, width, reason):
        return Layout(((self.spaces.new(width, reason), width),)) if width else Layout(((self.spaces.new(None, reason), 0),))

    def _fix_layout(self, layout, reason):
        for space, _ in layout.segments:
            self.spaces.fix(space, reason)

    def _build(self):
        config = self.model.get_config()
        entries = config["layers"]
        sequential = "input_layers" not in config
        previous = None
        for entry in entries:
            name = entry.get("name") or entry["config"]["name"]
            if sequential:
                inbound = [[(previous, 0, 0)]] if previous else []
                previous = name
            else:
                inbound = [list(_tensor_refs(node)) for node in entry.get("inbound_nodes") or []]
            self._visit(entry, name, inbound)
        outputs = [(n, 0, 0) for n in [previous]] if sequential else _refs_list(config["output_layers"])
        for ref in outputs:
            self._fix_layout(self._layout(ref), "model output")

    def _layout(self, ref):
        if ref not in self._tensors:   # a tensor we never described (e.g. second output of a layer)
            self._tensors[ref] = self._fixed_layout(0, f"output {ref[2]} of '{ref[0]}'")
        return self._tensors[ref]

    def _live(self, name):
        try:
            return self.model.get_layer(name)
        except ValueError:
            return None

    def _visit(self, entry, name, inbound):
        cls = entry["class_name"]
        cfg = entry.get("config") or {}
        if cls == "InputLayer" or not inbound:
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape") or [None]
            self._tensors[(name, 0, 0)] = self._fixed_layout(shape[-1], "model input")
            return
        if len(inbound) > 1:   # a shared layer: its weights serve several tensors at once
            for node_index, refs in enumerate(inbound):
                for ref in refs:
                    self._fix_layout(self._layout(ref), f"'{name}' is shared")
                self._tensors[(name, node_index, 0)] = self._fixed_layout(0, f"'{name}' is shared")
            return
        refs = inbound[0]
        layouts = [self._layout(r) for r in refs]
        live = self._live(name)
        out = None
        if keras_io.is_op_config(entry):
            out = self._op(name, cls, entry, layouts)
        elif cfg.get("data_format", "channels_last") != "channels_last":
            out = None
        elif cls in PRODUCERS and len(layouts) == 1 and cfg.get("groups", 1) == 1 \
                and (layouts[0].repeat == 1 or cls == "Dense"):
            width = cfg.get("filters") or cfg.get("units")
            # A softmax over its own filters ties them all, but its inputs can still shrink.
            space = self.spaces.new(width, None if _mixes_no_channels(cfg) else f"'{name}' ends in a softmax")
            self.roles[name] = _Role(name, cls, "producer", layouts[0], space)
            out = Layout(((space, width),))
        elif cls == "DepthwiseConv2D" and len(layouts) == 1 and cfg.get("depth_multiplier", 1) == 1 \
                and _mixes_no_channels(cfg) and layouts[0].repeat == 1:
            self.roles[name] = _Role(name, cls, "member", layouts[0])
            out = layouts[0]
        elif cls in ("BatchNormalization", "LayerNormalization") and len(layouts) == 1 \
                and _last_axis(cfg.get("axis"), live):
            self.roles[name] = _Role(name, cls, "member", layouts[0])
            out = layouts[0]
        elif cls in PASS_THROUGH and len(layouts) == 1 and _mixes_no_channels(cfg):
            out = layouts[0]
        elif cls == "Rescaling" and len(layouts) == 1 and np.ndim(cfg.get("scale", 1.0)) == 0 \
                and np.ndim(cfg.get("offset", 0.0)) == 0:
            out = layouts[0]
        elif cls in MERGES and len(layouts) >= 2:
            out = self._merge(layouts)
        elif cls == "Concatenate" and len(layouts) >= 2:
            out = self._concatenate(cfg.get("axis", -1), live, layouts)
        elif cls == "Flatten" and len(layouts) == 1 and live is not None:
            out = self._flatten(live, layouts[0])
        elif cls == "Reshape" and len(layouts) == 1 and live is not None:
            out = self._reshape(name, cfg, live, layouts[0])
        if out is None:   # not understood: what goes in and what comes out stays as it is
            reason = f"'{name}' ({cls}) is not channel-aware here"
            for layout in layouts:
                self._fix_layout(layout, reason)
            width = _last_dim(live)
            out = self._fixed_layout(width, reason)
        self._tensors[(name, 0, 0)] = out

    def _op(self, name, cls, entry, layouts):
        """Keras 3 functional graphs record `a + b` / `x * 2` as bare operations."""
        (node,) = entry["inbound_nodes"]
        args = node.get("args", [])
        constants = [a for a in args if not _is_tensor(a)]
        if cls in ("Add", "Subtract", "Multiply", "Maximum", "Minimum") and len(layouts) >= 2 and not constants:
            return self._merge(layouts)
        if cls in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide") and len(layouts) == 1 \
                and all(isinstance(c, (int, float)) for c in constants):
            return layouts[0]
        return None

    def _merge(self, layouts):
        first = layouts[0]
        for other in layouts[1:]:
            if other.repeat != first.repeat or [n for _, n in other.segments] != [n for _, n in first.segments]:
                return None   # channels line up differently (e.g. concat + plain tensor): leave them
        for other in layouts[1:]:
            for (a, _), (b, _) in zip(first.segments, other.segments):
                self.spaces.union(a, b)
        return first

    def _concatenate(self, axis, live, layouts):
        rank = len(live.output.shape) if live is not None else None
        if axis in (-1, (rank - 1) if rank else None) and all(l.repeat == 1 for l in layouts):
            return Layout(tuple(seg for l in layouts for seg in l.segments))
        return self._merge(layouts)   # joined along another axis: the channels are shared

    def _flatten(self, live, layout):
        shape = tuple(live.input.shape)
        if layout.repeat != 1 or any(d is None for d in shape[1:]):
            return None
        return Layout(layout.segments, int(np.prod(shape[1:-1], dtype=np.int64)) if len(shape) > 2 else 1)

    def _reshape(self, name, cfg, live, layout):
        # Only (…, C) -> (1, …, 1, C): the squeeze-excite reshape, which keeps channels last.
        in_shape, target = tuple(live.input.shape), list(cfg.get("target_shape") or [])
        if layout.repeat != 1 or not target or target[-1] != in_shape[-1] \
                or any(d != 1 for d in in_shape[1:-1]) or any(d != 1 for d in target[:-1]):
            return None
        self.roles[name] = _Role(name, "Reshape", "reshape", layout)
        return layout

    def _collect_groups(self):
        groups: Dict[int, Group] = {}

        def group_of(space):
            root = self.spaces.find(space)
            if root not in groups:
                groups[root] = Group(root, self.spaces.length[root] or 0, fixed=list(dict.fromkeys(self.spaces.fixed[root])))
            return groups[root]

        for space in range(len(self.spaces.parent)):
            group_of(space)
        for role in self.roles.values():
            if role.kind == "producer":
                group_of(role.out_space).producers.append(role.name)
            if role.in_layout is not None:
                for space, _ in role.in_layout.segments:
                    target = group_of(space)
                    bucket = target.consumers if role.kind == "producer" else target.members
                    if role.name not in bucket:
                        bucket.append(role.name)
        return [g for g in groups.values() if g.producers]

    # ------------------------------------------------------------------ queries

    def prunable_groups(self) -> List[Group]:
        return [g for g in self.groups if g.prunable]

    def summary(self) -> dict:
        prunable = self.prunable_groups()
        fixed = [g for g in self.groups if not g.prunable]
        return {
            "prunable_groups": len(prunable),
            "prunable_channels": int(sum(g.channels for g in prunable)),
            "groups": [{"producers": g.producers, "channels": g.channels, "tied": len(g.producers) > 1
                        or any(self.roles[m].cls == "DepthwiseConv2D" for m in g.members)} for g in prunable],
            "fixed": [{"producers": g.producers, "channels": g.channels, "why": g.fixed[0] if g.fixed else "one channel"}
                      for g in fixed],
        }

    def group_of_layer(self, name) -> Optional[Group]:
        for g in self.groups:
            if name in g.producers:
                return g
        return None

    # ------------------------------------------------------------------ importance

    def importance(self, group: Group, method: str, gradients: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> np.ndarray:
        """One score per channel of `group` (higher = keep), summed over the layers that hold it.

        l1 / l2: norm of each producer's filter. bn_gamma: |γ| of the group's BatchNormalizations
        (network slimming; l2 where the group has none). taylor: |Σ w·∂L/∂w| over each filter and
        the BN scale/shift (first-order estimate of the loss change when the channel goes)."""
        scores = np.zeros(group.channels, dtype=np.float64)
        if method == "bn_gamma":
            bns = [m for m in group.members if self.roles[m].cls == "BatchNormalization"]
            for name in bns:
                weights = _named_weights(self.model.get_layer(name))
                if "gamma" in weights:
                    scores += np.abs(self._member_rows(name, group, weights["gamma"]))
            if scores.any():
                return scores
            method = "l2"
        for name in group.producers:
            layer = self.model.get_layer(name)
            weights = _named_weights(layer)
            key = "pointwise_kernel" if "pointwise_kernel" in weights else "kernel"
            kernel = _filters_last(self.roles[name].cls, weights[key])
            if method == "l1":
                scores += np.abs(kernel).sum(axis=0)
            elif method == "l2":
                scores += np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=0))
            elif method == "taylor":
                grads = (gradients or {}).get(name, {})
                if key in grads:
                    scores += np.abs((kernel * _filters_last(self.roles[name].cls, grads[key])).sum(axis=0))
                if "bias" in weights and "bias" in grads:
                    scores += np.abs(weights["bias"] * grads["bias"])
            else:
                raise ValueError(method)
        if method == "taylor":
            for name in group.members:
                grads = (gradients or {}).get(name, {})
                weights = _named_weights(self.model.get_layer(name))
                for key in ("gamma", "beta"):
                    if key in grads and key in weights:
                        scores += np.abs(self._member_rows(name, group, weights[key] * grads[key]))
        return scores

    def _member_rows(self, name, group, vector):
        """The entries of a per-channel vector that belong to `group` (a member may span a concat)."""
        layout = self.roles[name].in_layout
        idx = _layout_indices(layout, {}, self.spaces, only=group.id)
        return vector[idx].reshape(layout.repeat, -1).sum(axis=0)

    # ------------------------------------------------------------------ pruning

    def prune(self, keep: Dict[int, Sequence[int]]):
        """A new Keras 3 model keeping, for each group id in `keep`, the listed channel indices.

        Groups not in `keep` stay whole. The original model is not modified."""
        keep = {gid: np.asarray(sorted(set(int(i) for i in idx)), dtype=np.int64) for gid, idx in keep.items()}
        by_id = {g.id: g for g in self.groups}
        for gid, idx in keep.items():
            group = by_id.get(gid)
            if group is None or not group.prunable:
                raise ValueError(f"group {gid} cannot be pruned")
            if len(idx) == 0 or idx.min() < 0 or idx.max() >= group.channels:
                raise ValueError(f"group {gid}: channel indices must be within 0..{group.channels - 1}, at least one")
        config_changes, new_weights = {}, {}
        for name, role in self.roles.items():
            layer = self.model.get_layer(name)
            in_idx = _layout_indices(role.in_layout, keep, self.spaces) if role.in_layout else None
            out_idx = keep.get(self.spaces.find(role.out_space)) if role.out_space is not None else None
            if role.kind == "reshape":
                if in_idx is not None and len(in_idx) != role.in_layout.width:
                    config_changes[name] = {"target_shape": list(layer.get_config()["target_shape"][:-1]) + [len(in_idx)]}
                continue
            weights = _named_weights(layer)
            sliced = _slice_layer(role.cls, layer, weights, in_idx, out_idx)
            if sliced is None:
                continue
            new_weights[name] = [sliced[w.name] for w in layer.weights]
            if out_idx is not None:
                config_changes[name] = {"units" if role.cls == "Dense" else "filters": int(len(out_idx))}
        return graph_edit.rebuild_with_config_changes(self.model, config_changes, new_weights)


# ---------------------------------------------------------------------- helpers

def _mixes_no_channels(cfg):
    return str(cfg.get("activation", "linear")) not in CHANNEL_MIXING_ACTIVATIONS


def _last_axis(axis, live):
    if axis in (-1, [-1]):
        return True
    rank = len(live.input.shape) if live is not None else None
    return rank is not None and axis in (rank - 1, [rank - 1])


def _last_dim(live):
    try:
        dim = live.output.shape[-1]
        return int(dim) if dim is not None else None
    except (AttributeError, ValueError, TypeError):
        return None


def _is_tensor(value):
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _tensor_refs(node):
    if _is_tensor(node):
        yield tuple(node["config"]["keras_history"])
    elif isinstance(node, dict):
        for key in ("args", "kwargs"):
            if key in node:
                yield from _tensor_refs(node[key])
        if "args" not in node and "kwargs" not in node:
            for value in node.values():
                yield from _tensor_refs(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _tensor_refs(value)


def _refs_list(refs):
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [tuple(r) for r in refs]


def _named_weights(layer):
    return {w.name: np.asarray(w.numpy()) for w in layer.weights}


def _filters_last(cls, kernel):
    """Kernel as (fan-in, filters)."""
    if cls == "Conv2DTranspose":   # (kh, kw, filters, in)
        kernel = np.moveaxis(kernel, -2, -1)
    return kernel.reshape(-1, kernel.shape[-1])


def _layout_indices(layout, keep, spaces, only=None):
    """Positions along the last axis that survive: each segment keeps its space's kept channels
    (all of them when its group is not pruned); `only` restricts to one group's positions."""
    per_block, offset = [], 0
    for space, length in layout.segments:
        root = spaces.find(space)
        if only is None or root == only:
            kept = keep.get(root)
            per_block.append(offset + (np.arange(length) if kept is None else kept))
        offset += length
    block = np.concatenate(per_block) if per_block else np.zeros(0, dtype=np.int64)
    if layout.repeat == 1:
        return block
    return (np.arange(layout.repeat)[:, None] * offset + block[None, :]).reshape(-1)


def _slice_layer(cls, layer, w, in_idx, out_idx):
    """The layer's weights with input rows `in_idx` and output filters `out_idx` kept (None: all)."""
    if in_idx is None and out_idx is None:
        return None
    w = dict(w)
    take = lambda a, idx, axis: a if idx is None else np.take(a, idx, axis=axis)   # noqa: E731
    if cls in ("Conv2D", "Conv1D", "Dense"):
        w["kernel"] = take(take(w["kernel"], in_idx, -2), out_idx, -1)
    elif cls == "Conv2DTranspose":
        w["kernel"] = take(take(w["kernel"], in_idx, -1), out_idx, -2)
    elif cls == "SeparableConv2D":
        dm = layer.depth_multiplier
        w["depthwise_kernel"] = take(w["depthwise_kernel"], in_idx, 2)
        pw_in = None if in_idx is None else (in_idx[:, None] * dm + np.arange(dm)[None, :]).reshape(-1)
        w["pointwise_kernel"] = take(take(w["pointwise_kernel"], pw_in, 2), out_idx, 3)
    elif cls == "DepthwiseConv2D":
        w["kernel"] = take(w["kernel"], in_idx, 2)
        if "bias" in w:
            w["bias"] = take(w["bias"], in_idx, 0)
        return w
    elif cls in ("BatchNormalization", "LayerNormalization"):
        return {k: take(v, in_idx, 0) for k, v in w.items()}
    if "bias" in w:
        w["bias"] = take(w["bias"], out_idx, 0)
    return w
