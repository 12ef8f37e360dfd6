"""Runtimes: what loads an artifact and runs it (`optkit bench --runtime NAME`), found by a registry.

A runtime only loads and calls (`predictor(*arrays) -> [np.ndarray]`); how it is timed is
optkit.runner's one procedure. A module in this package defines `RUNTIME = Runtime(...)` (or
`RUNTIMES = [...]`); an exporter module whose artifacts only it can run (TensorRT engines, Core ML
packages) defines `RUNTIME` in its own file. Adding a runtime is one file plus its tests: bench's
names, aliases, default per format, its tables and the CLI help all come from here.

A runtime may be load-only (keras, keras-predict, tf-xla run a model file optkit did not export).
Nothing here imports TensorFlow: runtimes import what they need inside `load`.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

from optkit.errors import UserError


@dataclass(frozen=True)
class Runtime:
    name: str                        # what users type: --runtime NAME
    formats: Tuple[str, ...]         # artifact formats it runs (optkit.runner.artifact_format)
    load: Callable                   # load(path, *, threads) -> optkit.runner.Predictor
    help: str
    aliases: Tuple[str, ...] = ()
    default_for: Tuple[str, ...] = ()   # formats it runs when no --runtime is given
    needs_tensorflow: bool = False   # bench reports TensorFlow's import time apart from load time


def registry() -> Dict[str, Runtime]:
    """Every runtime by name: the modules of this package, then exporters that declare one."""
    found: Dict[str, Runtime] = {}
    modules = [importlib.import_module(f"{__name__}.{i.name}") for i in sorted(pkgutil.iter_modules(__path__),
                                                                               key=lambda i: i.name)
               if not i.name.startswith("_")]
    try:
        import exporters

        modules += list(exporters.registry().values())
    except ModuleNotFoundError:      # a build without the exporters package
        pass
    for module in modules:
        declared = getattr(module, "RUNTIMES", None) or ([module.RUNTIME] if hasattr(module, "RUNTIME") else [])
        for runtime in declared:
            if runtime.name in found:
                raise TypeError(f"runtime '{runtime.name}' is declared twice ({module.__name__})")
            found[runtime.name] = runtime
    # TF-free runtimes first (what `optkit bench` runs without TensorFlow), in declaration order.
    return dict(sorted(found.items(), key=lambda item: item[1].needs_tensorflow))


def names() -> List[str]:
    return list(registry())


def aliases() -> Dict[str, str]:
    return {alias: r.name for r in registry().values() for alias in r.aliases}


def get(name: str) -> Runtime:
    """The runtime called `name` (or one of its aliases); UserError with a did-you-mean otherwise."""
    runtimes = registry()
    alias = aliases()
    key = name.strip().lower()
    key = alias.get(key, key)
    if key not in runtimes:
        close = difflib.get_close_matches(key, list(runtimes) + list(alias), n=1)
        hint = f" (did you mean '{alias.get(close[0], close[0])}'?)" if close else ""
        raise UserError(f"unknown runtime '{name}'{hint}; known: {', '.join(runtimes)}")
    return runtimes[key]


def default_for(fmt: str):
    """The runtime that runs a `fmt` artifact when none is asked for (None if no runtime does)."""
    return next((r for r in registry().values() if fmt in r.default_for), None)


def formats() -> List[str]:
    """Every artifact format some runtime runs by default."""
    return sorted({f for r in registry().values() for f in r.default_for})


def help_text() -> str:
    """'litert, onnxruntime, keras, ...' for the CLI's --runtime help."""
    return ", ".join(registry())
