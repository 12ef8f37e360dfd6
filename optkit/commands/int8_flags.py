"""The accuracy-aware int8 flags (optkit.quant_debug) shared by `export` and `optimize`: they
become per-format options of the tflite and onnx exporters. No TensorFlow at import."""
from __future__ import annotations

import click

from optkit.errors import UserError
from optkit.quant_debug import METHODS


def int8_options(fn):
    """The accuracy-aware int8 flags (optkit.quant_debug), shared by export and optimize."""
    for decorator in reversed([
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
    ]):
        fn = decorator(fn)
    return fn


def add_int8_options(options, names, quantize, flags):
    """Put the int8 flags into the per-format options of tflite/onnx; refuse them where they mean
    nothing (another precision, no int8 format, an ONNX-only flag without onnx)."""
    given = {k: v for k, v in flags.items() if v not in (None, False)}
    if not given:
        return options
    spelled = {"int8_max_drop": "--max-accuracy-drop"}
    flag_list = ", ".join(spelled.get(k, "--" + k.replace("_", "-")) for k in given)
    if quantize != "int8":
        raise UserError(f"{flag_list} apply to --quantize int8")
    targets = [n for n in names if n in ("tflite", "onnx")]
    if not targets:
        raise UserError(f"{flag_list} apply to int8 tflite or onnx; --to has neither")
    onnx_only = [k for k in ("calibration_method", "per_channel") if k in given]
    if onnx_only and "onnx" not in targets:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in onnx_only)} apply to onnx; --to has no onnx")
    keys = {"int8_max_drop": "max_accuracy_drop"}
    for name in targets:
        for k, v in given.items():
            if k in onnx_only and name != "onnx":
                continue
            options.setdefault(name, {})[keys.get(k, k)] = v
    return options
