"""`separable`: k×k Conv2D -> depthwise-separable convolution, initialised from the original kernel.

For input channel c the kernel slice W[:, :, c, :] is a (k·k) × C_out matrix. Its best rank-r
approximation (truncated SVD, Eckart-Young) U_r S_r V_rᵀ is a sum of r products "spatial filter ×
channel mix", which is exactly what a SeparableConv2D with depth_multiplier r computes: depthwise
filter (c, j) = U[:, j]·√s_j, pointwise row (c·r + j) = √s_j·V[:, j]. So the rewritten layer starts
as the closest separable convolution to the original instead of from random weights, and
r = min(k·k, C_out) reproduces the original exactly.

One SeparableConv2D keeps the original layer's name, strides, padding, dilation, data format,
activation (after the pointwise conv, as before), bias and dtype policy; TFLite and ONNX lower it
to depthwise + 1×1 convolutions.

Eligible: plain Conv2D (not a subclass), kernel with more than one tap, groups == 1, called once,
at the top level of the model. The stem (the first convolution) is skipped by default: it sees the
3 image channels, so factorising it saves almost nothing and costs accuracy.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from dataclasses import dataclass

from optkit import graph_edit, keras_io
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult, _rewrite_eval


def factorize(kernel: np.ndarray, rank: int):
    """Conv2D kernel (kh, kw, C_in, C_out) -> (depthwise (kh, kw, C_in, r), pointwise (1, 1, C_in·r, C_out))."""
    kh, kw, c_in, c_out = kernel.shape
    if not 1 <= rank <= min(kh * kw, c_out):
        raise ValueError(f"rank must be in 1..{min(kh * kw, c_out)}, got {rank}")
    per_channel = np.transpose(kernel.astype(np.float64), (2, 0, 1, 3)).reshape(c_in, kh * kw, c_out)
    u, s, vt = np.linalg.svd(per_channel, full_matrices=False)      # batched over input channels
    root = np.sqrt(s[:, :rank])                                       # split each singular value evenly
    depthwise = u[:, :, :rank] * root[:, None, :]                     # (C_in, k·k, r)
    pointwise = vt[:, :rank, :] * root[:, :, None]                    # (C_in, r, C_out)
    depthwise = np.transpose(depthwise.reshape(c_in, kh, kw, rank), (1, 2, 0, 3))
    pointwise = pointwise.reshape(1, 1, c_in * rank, c_out)           # row c·r + j, Keras' channel order
    return depthwise.astype(kernel.dtype), pointwise.astype(kernel.dtype)


def separable_param_count(kh, kw, c_in, c_out, rank, use_bias=True):
    return kh * kw * c_in * rank + c_in * rank * c_out + (c_out if use_bias else 0)


def conv_param_count(kh, kw, c_in, c_out, use_bias=True):
    return kh * kw * c_in * c_out + (c_out if use_bias else 0)


def candidates(model) -> List[Dict]:
    """Every Conv2D with why it is or is not eligible: [{"layer", "eligible", "reason", "stem"}]."""
    out, stem_seen = [], False
    top = {id(l) for l in model.layers}
    calls = graph_edit.topology(model).calls
    for layer in graph_edit.walk_layers(model):
        if type(layer).__name__ != "Conv2D":
            continue
        stem = not stem_seen
        stem_seen = True
        kh, kw = layer.kernel_size
        reason = ""
        if id(layer) not in top:
            reason = "inside a nested model"
        elif kh * kw == 1:
            reason = "1×1 kernel: already pointwise"
        elif getattr(layer, "groups", 1) != 1:
            reason = f"grouped convolution (groups={layer.groups})"
        elif calls.get(layer.name, 1) > 1:
            reason = "shared layer (called more than once)"
        out.append({"layer": layer, "eligible": not reason, "reason": reason, "stem": stem})
    return out


def eligible_count(model) -> int:
    """How many convolutions the default options would rewrite (for `optkit inspect`)."""
    try:
        return sum(1 for c in candidates(model) if c["eligible"] and not c["stem"])
    except Exception:
        return 0


def rewrite(model, *, rank: int = 1, layers: Optional[List[str]] = None, skip_stem: bool = True,
            init: str = "svd"):
    """Keras 3 model -> (rewritten Keras 3 model, per-layer info). The original is not modified."""
    if init not in ("svd", "random"):
        raise UserError(f"separable: init must be 'svd' or 'random', got '{init}'")
    if rank < 1:
        raise UserError(f"separable: rank must be >= 1, got {rank}")
    graph_edit.check_rebuildable(model)
    keras = keras_io.keras3()
    found = candidates(model)
    wanted = set(layers or [])
    if wanted:
        known = {c["layer"].name for c in found} | {"Conv2D"}
        unknown = wanted - known
        if unknown:
            raise UserError(f"separable: no Conv2D layer named {', '.join(sorted(unknown))} "
                            f"(Conv2D layers: {', '.join(c['layer'].name for c in found) or 'none'})")
    replace, weights, report = {}, {}, []
    for cand in found:
        layer = cand["layer"]
        picked = (layer.name in wanted or "Conv2D" in wanted) if wanted else not (skip_stem and cand["stem"])
        if not picked:
            report.append({"layer": layer.name, "rewritten": False, "reason": "stem (skip_stem)" if cand["stem"] else "not selected"})
            continue
        if not cand["eligible"]:
            report.append({"layer": layer.name, "rewritten": False, "reason": cand["reason"]})
            continue
        kernel, *rest = layer.get_weights()
        kh, kw, c_in, c_out = kernel.shape
        r = min(rank, kh * kw, c_out)       # beyond min(k·k, C_out) the factorisation is already exact
        cfg = layer.get_config()
        new = keras.layers.SeparableConv2D(
            filters=cfg["filters"], kernel_size=cfg["kernel_size"], strides=cfg["strides"],
            padding=cfg["padding"], data_format=cfg["data_format"], dilation_rate=cfg["dilation_rate"],
            depth_multiplier=r, activation=cfg["activation"], use_bias=cfg["use_bias"],
            depthwise_regularizer=cfg["kernel_regularizer"], pointwise_regularizer=cfg["kernel_regularizer"],
            bias_regularizer=cfg["bias_regularizer"], activity_regularizer=cfg["activity_regularizer"],
            depthwise_constraint=cfg["kernel_constraint"], pointwise_constraint=cfg["kernel_constraint"],
            bias_constraint=cfg["bias_constraint"], trainable=cfg["trainable"], dtype=layer.dtype_policy,
            name=layer.name)
        replace[layer.name] = [new]
        if init == "svd":
            depthwise, pointwise = factorize(kernel, r)
            weights[layer.name] = [depthwise, pointwise, *rest]
        report.append({
            "layer": layer.name, "rewritten": True, "kernel": [kh, kw], "in_channels": c_in, "out_channels": c_out,
            "rank": r, "exact": r == min(kh * kw, c_out),
            "params_before": conv_param_count(kh, kw, c_in, c_out, cfg["use_bias"]),
            "params_after": separable_param_count(kh, kw, c_in, c_out, r, cfg["use_bias"]),
        })
    if not replace:
        why = "; ".join(f"{r['layer']}: {r['reason']}" for r in report) or "the model has no Conv2D layers"
        raise UserError(f"separable: no convolution to rewrite ({why})")
    return graph_edit.rebuild(model, replace, weights), report


@dataclass(frozen=True)
class Options:
    rank: int = option(1, "depth multiplier r = rank of the per-channel approximation; min(k·k, C_out) is exact",
                       min=1)
    layers: str = option("", "Conv2D layer names to rewrite, '+'-separated (default: every eligible one)")
    skip_stem: bool = option(True, "leave the first convolution (it sees the image channels) alone")
    init: str = option("svd", "svd (from the original kernel) or random (Keras' default initialisers)",
                       choices=("svd", "random"))
    epochs: int = option(-1, "fine-tuning epochs (-1: the run's --epochs; 0: none)", min=-1)


def apply(model, ctx, *, rank=1, layers="", skip_stem=True, init="svd", epochs=-1):
    """The step: rewrite, measure the output error, fine-tune on ctx.data, measure again."""
    source = keras_io.as_keras3(model)
    # '+' like prune/cluster's `layers=` (commas already separate step options); '|' kept working.
    names = [n for n in layers.replace("|", "+").split("+") if n] if isinstance(layers, str) else list(layers or [])
    new, per_layer = rewrite(source, rank=rank, layers=names, skip_stem=skip_stem, init=init)
    info = {"init": init, "rank": rank, "layers": per_layer,
            "layers_rewritten": sum(1 for r in per_layer if r["rewritten"]),
            "params_before": int(source.count_params()), "params_after": int(new.count_params())}
    info.update(_rewrite_eval.measure_and_finetune(source, new, ctx, epochs))
    return StepResult(new, info)


STEP = Step(
    name="separable",
    help="Replace k×k Conv2D layers by depthwise-separable convolutions initialised by per-channel SVD "
         "of the original kernel, then fine-tune.",
    apply=apply,
    options=Options,
    kind="rewrite",
)
