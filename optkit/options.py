"""Typed options: a step or an exporter declares what it takes as a frozen dataclass.

    @dataclass(frozen=True)
    class Options:
        sparsity: float = option(0.5, "fraction of weights set to zero", min=0.0, max=1.0, max_open=True)
        schedule: str = option("polynomial", "how sparsity grows", choices=("constant", "polynomial"))

`parse(Options, {"sparsity": "0.8"}, owner="step 'prune'")` turns `k=v` strings (or already typed
values, e.g. from plan.json) into an instance, checking types, choices and ranges, so a bad value
is a UserError when the plan is built (`--dry-run` included), never after an hour of training.
Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence

from optkit.errors import UserError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For a step or exporter that takes no options."""


def option(default: Any, help: str, *, choices: Optional[Sequence[Any]] = None, min: Optional[float] = None,
           max: Optional[float] = None, min_open: bool = False, max_open: bool = False):
    """A dataclass field carrying its help text, allowed values and range (bounds inclusive unless
    `min_open` / `max_open`)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
            "min_open": min_open, "max_open": max_open}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    name: str
    type: type
    default: Any
    help: str
    choices: Optional[tuple] = None
    min: Optional[float] = None
    max: Optional[float] = None
    min_open: bool = False
    max_open: bool = False

    def describe(self) -> str:
        """'sparsity (float, default 0.5, in [0, 1)): fraction of weights set to zero'"""
        kind = "any" if self.type in (object, Any) else self.type.__name__
        bits = [kind, f"default {self.default!r}"]
        if self.choices:
            bits.append("one of " + " | ".join(str(c) for c in self.choices))
        if self.min is not None or self.max is not None:
            bits.append(_span(self))
        return f"{self.name} ({', '.join(bits)}): {self.help}"


def fields(cls) -> List[OptionInfo]:
    """The declared options of an options dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        typ = hints[f.name]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if typing.get_origin(typ) is typing.Union and len(args) == 1:   # Optional[bool] -> bool
            typ = args[0]
        out.append(OptionInfo(name=f.name, type=typ, default=f.default, help=meta.get("help", ""),
                              choices=meta.get("choices"), min=meta.get("min"), max=meta.get("max"),
                              min_open=meta.get("min_open", False), max_open=meta.get("max_open", False)))
    return out


def defaults(cls) -> Dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


def parse(cls, raw: Mapping[str, Any], *, owner: str):
    """`raw` ({name: "string" or typed value}) -> an instance of `cls`; UserError names `owner`
    ("step 'prune'", "tflite") and the option for unknown keys, bad types, choices and ranges."""
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise UserError(f"{owner} has no option '{key}' (options: {', '.join(sorted(known)) or 'none'})")
        values[key] = check(known[key], convert(known[key], value, owner), owner)
    return cls(**values)


def _positive_int(info: OptionInfo) -> bool:
    return info.type is int and info.min == 1 and not info.min_open and info.max is None


def convert(info: OptionInfo, value: Any, owner: str) -> Any:
    typ = info.type
    if typ in (object, Any):     # free-form (e.g. a list or a '+'-separated string): the owner reads it
        return value
    if info.default is None and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
        return None      # an option whose default None means "decide from the model"
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() in TRUE:
                    return True
                if text.lower() in FALSE:
                    return False
                raise ValueError(text)
            return typ(text)
        except ValueError:
            if _positive_int(info):
                raise UserError(f"{owner}: {info.name} must be a positive integer, got {value!r}") from None
            raise UserError(f"{owner}: option '{info.name}' expects {typ.__name__}, got '{value}'") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        if _positive_int(info):
            raise UserError(f"{owner}: {info.name} must be a positive integer, got {value!r}")
        raise UserError(f"{owner}: option '{info.name}' expects {typ.__name__}, got {value!r}")
    return value


def check(info: OptionInfo, value: Any, owner: str) -> Any:
    if value is None:
        return value
    if info.choices is not None and value not in info.choices:
        raise UserError(f"{owner}: {info.name} must be one of {', '.join(str(c) for c in info.choices)}, "
                        f"got '{value}'")
    low_bad = info.min is not None and (value <= info.min if info.min_open else value < info.min)
    high_bad = info.max is not None and (value >= info.max if info.max_open else value > info.max)
    if low_bad or high_bad:
        if _positive_int(info):
            raise UserError(f"{owner}: {info.name} must be a positive integer, got {value!r}")
        raise UserError(f"{owner}: {info.name} must be {_span(info)}, got {value}")
    return value


def _span(info: OptionInfo) -> str:
    """'>= 1', '< 1', 'in [0, 1)'"""
    if info.max is None:
        return f"{'>' if info.min_open else '>='} {info.min:g}"
    if info.min is None:
        return f"{'<' if info.max_open else '<='} {info.max:g}"
    return f"in {'(' if info.min_open else '['}{info.min:g}, {info.max:g}{')' if info.max_open else ']'}"


def as_dict(instance) -> Dict[str, Any]:
    return dataclasses.asdict(instance)


def names(cls) -> List[str]:
    """The option names of an options dataclass (or of a legacy tuple of names)."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return list(cls or ())


def validate(cls, given: Mapping[str, Any], *, owner: str) -> None:
    """Check `given` (typed values, e.g. from `--option FMT:K=V`) against `cls` without changing it:
    unknown keys, types, choices, ranges. None means "the default" and is not checked."""
    if dataclasses.is_dataclass(cls):
        parse(cls, {k: v for k, v in given.items() if v is not None}, owner=owner)
