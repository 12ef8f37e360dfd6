"""Export formats: one module per format, each knowing how to write its artifact AND how to run it.

A module in this package is an exporter when it defines:

    NAME          the format name users type (`--to NAME`)
    SUFFIX        what the artifact path ends with (".tflite"; a directory format ends without a dot)
    PRECISIONS    the `quantize` values it supports ("none", "dynamic", "float16", "int8")
    available()   -> (bool, reason): can this machine write the artifact? (False = `skipped: reason`)
    export(model, out_path, *, quantize="none", data=None, **options) -> dict of details
    load(path, *, threads=None, **options) -> a Predictor (float32 numpy in, list of numpy out);
                  raises optkit.errors.Unavailable where it cannot run (Core ML off macOS)

and optionally `NAMES_OUTPUTS = True` when the artifact itself stores the output names
`output_0, output_1, ...` (then validation checks them).

Adding a format is one new file here; nothing else is edited. Nothing in this package imports
TensorFlow at module level: converters are imported inside `export()`/`load()` through
optkit.keras_io, so listing formats (`optkit export --help`, the registry) stays cheap.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from types import ModuleType
from typing import Dict

from optkit.errors import UserError

_REQUIRED = ("NAME", "SUFFIX", "PRECISIONS", "available", "export", "load")


def registry() -> Dict[str, ModuleType]:
    """Every exporter module, by format name (private `_*.py` helpers are skipped)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
        if missing:
            # A half-written exporter is a bug in this package, not a user error: say which file.
            raise TypeError(f"exporters/{info.name}.py is missing {', '.join(missing)}")
        found[module.NAME] = module
    return found


def names():
    return sorted(registry())


def get(name: str) -> ModuleType:
    """The exporter for `name`; an unknown name is a UserError with a did-you-mean hint."""
    formats = registry()
    key = name.strip().lower()
    if key not in formats:
        close = difflib.get_close_matches(key, formats, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown export format '{name}'{hint}; known: {', '.join(sorted(formats))}")
    return formats[key]
