"""The accuracy-aware int8 flags (optkit.quant_debug) shared by `export` and `optimize`: they
become per-format options of the tflite and onnx exporters. No TensorFlow at import."""
from __future__ import annotations

import click

from optkit.errors import UserError
from optkit.quant_debug import INT8_FORMATS, METHODS, check_targets, format_options


def int8_options(goal: bool = True):
    """Decorator adding the int8 flags; `goal=False` leaves out --max-accuracy-drop (optimize
    already uses that name for its search)."""
    flags = [
        click.option("--quant-report", is_flag=True, default=None,
                     help="int8: measure each layer's error against float (SNR dB, RMSE), worst first."),
        click.option("--keep-float", metavar="LAYER[,LAYER]", help="int8: keep these Keras layers in float."),
        click.option("--max-accuracy-drop", "int8_max_drop", type=float, metavar="PCT",
                     help="int8: keep the worst layers float, one at a time, until accuracy (or, without "
                     "labels, top-1 agreement with float) is within PCT points; exit 1 if it cannot be."),
        click.option("--calibration-samples", type=click.IntRange(min=1), metavar="N",
                     help="int8: representative samples for calibration (default 100)."),
        click.option("--calibration-method", type=click.Choice(METHODS),
                     help="int8 ONNX: activation range calibration (default minmax)."),
        click.option("--per-channel/--per-tensor", "per_channel", default=None,
                     help="int8 ONNX: per-channel weight scales (default per-tensor)."),
    ]
    if not goal:
        flags.pop(2)

    def decorate(fn):
        for decorator in reversed(flags):
            fn = decorator(fn)
        return fn

    return decorate


def int8_settings(flags) -> dict:
    """The flags given, under the exporter option names (optkit.quant_debug)."""
    keys = {"int8_max_drop": "max_accuracy_drop"}
    return {keys.get(k, k): v for k, v in flags.items() if v not in (None, False)}


def flag_names(settings) -> str:
    return ", ".join("--" + k.replace("_", "-") for k in settings)


def add_int8_options(options, names, quantize, flags):
    """Put the int8 flags into the per-format options of tflite/onnx; refuse them where they mean
    nothing (another precision, no int8 format, an ONNX-only flag without onnx)."""
    settings = int8_settings(flags)
    if not settings:
        return options
    if quantize != "int8":
        raise UserError(f"{flag_names(settings)} apply to --quantize int8")
    check_targets(settings, [n for n in names if n in INT8_FORMATS], "--to")
    for name in names:
        if name in INT8_FORMATS:
            options.setdefault(name, {}).update(format_options(name, settings))
    return options
