"""Model -> model transforms (rewrites, speed settings, compression), found by a registry.

Each module in this package that defines `STEP = Step(...)` is a step; adding a technique is
one new file. Nothing here imports TensorFlow: modules are imported on first lookup, and a
step's `apply` imports what it needs through optkit.keras_io.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from optkit import options as options_mod
from optkit.errors import UserError


@dataclass
class StepContext:
    """What a step may use besides the model. `data` is an optkit.data.Dataset (or None)."""

    data: Any = None
    epochs: int = 2
    batch_size: int = 32
    progress: bool = True
    workdir: Optional[str] = None
    seed: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)   # e.g. distribution strategy


@dataclass
class StepResult:
    """What a step hands back. `info` is free-form detail for the report (JSON-able); the typed
    fields are what the pipeline acts on."""

    model: Any
    info: Dict[str, Any] = field(default_factory=dict)
    # The one export this model can take (e.g. "tflite:int8" for a QAT model); None: any.
    export_only: Optional[str] = None
    # What the step decided at run time, appended to the variant's name (the tuned rung: "JIT+AMP").
    label: Optional[str] = None


@dataclass(frozen=True)
class NoOptions:
    """A step that takes no options."""


@dataclass
class Step:
    name: str
    help: str
    apply: Callable[..., StepResult]
    # The options `apply` takes: a frozen dataclass whose fields use optkit.options.option (type,
    # default, help, choices, range). `--step name:k=v` values are parsed and checked against it
    # when the plan is built. (A {name: (type, default, help)} table is still accepted and turned
    # into such a class, without choices or ranges.)
    options: Any = NoOptions
    kind: str = "compression"   # rewrite | speed | train | compression
    # model -> why this step cannot apply to it (None: it can). Asked before any training, so an
    # explicit `--step` that cannot apply is refused up front and a recipe skips it with the reason.
    check: Optional[Callable[[Any], Optional[str]]] = None

    def why_not(self, model) -> Optional[str]:
        return self.check(model) if self.check is not None else None

    def __post_init__(self):
        if isinstance(self.options, dict):
            self.options = _options_class(self.name, self.options)

    def parse_options(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """Every option typed and defaulted, checked against its declaration: the dict `apply`
        takes as keyword arguments (and the plan records). Unknown keys, bad types, values outside
        the choices or range are UserErrors."""
        return options_mod.as_dict(options_mod.parse(self.options, raw, owner=f"step '{self.name}'"))

    def option_infos(self):
        return options_mod.fields(self.options)


def _options_class(step_name: str, table: Dict[str, Tuple[type, Any, str]]):
    fields = [(key, typ, options_mod.option(default, text)) for key, (typ, default, text) in table.items()]
    return make_dataclass(f"{step_name.title().replace('_', '')}Options", fields, frozen=True)


def registry() -> Dict[str, Step]:
    """All steps, by name (imports each step module; none imports TensorFlow at module level)."""
    steps = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "STEPS", None) or ([module.STEP] if hasattr(module, "STEP") else [])
        for step in declared:
            steps[step.name] = step
    return steps


def get(name: str) -> Step:
    steps = registry()
    if name not in steps:
        import difflib

        close = difflib.get_close_matches(name, steps, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown step '{name}'{hint}; known: {', '.join(sorted(steps))}")
    return steps[name]


def parse_step_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """'prune:sparsity=0.5,schedule=constant' -> ('prune', {'sparsity': '0.5', 'schedule': 'constant'})."""
    name, _, rest = spec.partition(":")
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise UserError(f"bad step option '{part}' in '{spec}': expected key=value")
        options[key.strip()] = value.strip()
    return name.strip(), options
