"""Built-in recipes for `optkit optimize --recipe NAME`, and user recipes from TOML files.

A recipe is data, not code: a mode, an ordered list of `--step` specs and the formats to export.
The pipeline (optkit.optimize) runs every recipe the same way, so a user's TOML recipe is as
capable as a built-in one. Nothing here imports TensorFlow.

Modes
- ``chain``:  baseline -> step 1 -> step 2 ...; every intermediate model is a variant, and each
  variant is exported to every format in ``to`` (a format a variant cannot take becomes a
  ``skipped`` row with its reason, e.g. a QAT model to ONNX).
- ``ladder``: the Lesson 14 ladder (optkit.ladder.rungs: Naive -> Pooling -> Separable -> +JIT ->
  +AMP -> +Fusing -> Tuned), each rung a plan variant; ``to`` exports Naive and Separable.
- ``search``: accuracy-aware search (optkit.search) within ``--max-accuracy-drop``; ``objective``
  says what "best" means among the candidates that keep accuracy (``size`` or ``latency``).

User recipe file (TOML)::

    description = "prune hard, then int8"
    mode = "chain"                  # chain (default) | ladder | search
    to = ["tflite:int8", "onnx"]
    epochs = 2                      # optional defaults, overridden by the command line
    [[step]]
    name = "prune"
    sparsity = 0.8
    [[step]]
    name = "qat"
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from optkit.errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    help: str
    mode: str = "chain"                      # chain | ladder | search
    steps: Tuple[str, ...] = ()              # `--step` specs, in order
    to: Tuple[str, ...] = ()                 # export specs FORMAT[:QUANTIZE]
    objective: str = "size"                  # search only: size | latency
    max_accuracy_drop: Optional[float] = None   # search only: default goal (points of top-1)
    defaults: Dict[str, Any] = field(default_factory=dict)   # epochs, batch_size, ...
    source: str = "built-in"


MODES = ("chain", "ladder", "search")

BUILTIN: Dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "lesson14",
            "The Lesson 14 ladder (Naive -> Pooling -> Separable -> +JIT -> +AMP -> +Fusing), "
            "then int8 TFLite and ONNX of the baseline and the ladder's final model.",
            mode="ladder",
            to=("tflite:int8", "onnx"),
        ),
        Recipe(
            "edge-int8",
            "Global pooling + 50% magnitude pruning + quantization-aware training -> int8 TFLite and ONNX.",
            steps=("pooling", "prune:sparsity=0.5", "qat"),
            to=("tflite:int8", "onnx:int8"),
        ),
        Recipe(
            "max-compression",
            "Pruning + weight clustering + sparsity-and-cluster-preserving QAT (PCQAT) -> int8 TFLite.",
            # qat picks the PCQAT scheme itself because prune and cluster came before it.
            steps=("prune:sparsity=0.75", "cluster:clusters=16", "qat"),
            to=("tflite:int8",),
        ),
        Recipe(
            "fast-cpu",
            "The fastest artifact on this machine within the accuracy budget (default 1 point): "
            "searches rewrites, precisions and runtimes, measuring each here.",
            mode="search",
            objective="latency",
            max_accuracy_drop=1.0,
        ),
    )
}


def names():
    return sorted(BUILTIN)


def get(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a user recipe from a `.toml` file."""
    if name_or_path.endswith(".toml") or os.path.sep in name_or_path:
        return load_toml(name_or_path)
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    close = difflib.get_close_matches(name_or_path, BUILTIN, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown recipe '{name_or_path}'{hint}; built-in recipes: {', '.join(names())}, "
                    "or a path to a .toml recipe")


def _toml():
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError("reading a TOML recipe on Python < 3.11 needs the 'tomli' package "
                            "(pip install tomli)") from None
    return tomllib


_TOML_KEYS = {"name", "description", "mode", "step", "to", "objective", "max_accuracy_drop",
              "epochs", "batch_size", "seed"}


def load_toml(path: str) -> Recipe:
    tomllib = _toml()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"recipe file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read recipe {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"recipe {path} is not valid TOML: {exc}") from None

    unknown = sorted(set(doc) - _TOML_KEYS)
    if unknown:
        raise UserError(f"recipe {path}: unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(_TOML_KEYS))})")
    mode = doc.get("mode", "chain")
    if mode not in MODES:
        raise UserError(f"recipe {path}: mode must be one of {', '.join(MODES)}, got '{mode}'")
    raw_steps = doc.get("step", [])
    if not isinstance(raw_steps, list):
        raise UserError(f"recipe {path}: 'step' must be an array of tables ([[step]])")
    specs = []
    for i, entry in enumerate(raw_steps, 1):
        if not isinstance(entry, dict) or "name" not in entry:
            raise UserError(f"recipe {path}: step {i} needs a 'name'")
        opts = ",".join(f"{k}={_toml_value(v)}" for k, v in entry.items() if k != "name")
        specs.append(entry["name"] + (f":{opts}" if opts else ""))
    if mode == "chain" and not specs:
        raise UserError(f"recipe {path}: a chain recipe needs at least one [[step]]")
    to = doc.get("to", [])
    if isinstance(to, str):
        to = [t for t in to.split(",") if t]
    defaults = {k: doc[k] for k in ("epochs", "batch_size", "seed") if k in doc}
    return Recipe(
        name=doc.get("name") or os.path.splitext(os.path.basename(path))[0],
        help=doc.get("description", ""),
        mode=mode,
        steps=tuple(specs),
        to=tuple(to),
        objective=doc.get("objective", "size"),
        max_accuracy_drop=doc.get("max_accuracy_drop"),
        defaults=defaults,
        source=os.path.abspath(path),
    )


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):   # e.g. layers = ["conv1", "conv2"] -> the step's own list syntax
        return "|".join(str(v) for v in value)
    return str(value)
