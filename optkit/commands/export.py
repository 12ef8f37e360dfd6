"""`optkit export`: write MODEL in each requested format, validate each artifact, print a table
(or `{"artifacts": [...]}` with --json).

Parsing and rendering only; the work is optkit.export. Format names and precisions are checked
before TensorFlow is imported, so a typo costs milliseconds, not seconds.
Exit codes: 0 every artifact ok · 1 an artifact failed, or a requested format cannot run here
(e.g. TensorRT without an NVIDIA GPU; one line says why) · 2 bad input.
"""
from __future__ import annotations

import json
import os

import click

import exporters

from optkit.commands.int8_flags import add_int8_options, int8_options
from optkit.errors import UserError
from optkit.records import PRECISIONS as QUANTIZE


@click.command("export")
@click.argument("model", type=click.Path())
@click.option("--to", "formats", required=True, metavar="FMT[,FMT]",
              help=f"Formats: {', '.join(exporters.names())} (comma-separated).")
@click.option("--quantize", type=click.Choice(QUANTIZE), default="none", show_default=True,
              help="Precision of the exported artifacts.")
@click.option("--data", metavar="SRC", help="Calibration/validation data (folder, .npz, tfds:NAME, synthetic:NAME). "
              "Without it int8 calibrates on random [0, 1] inputs, and the artifact says so.")
@click.option("-o", "--output", "out_dir", default=".", show_default=True, type=click.Path(),
              help="Directory for the artifacts.")
@click.option("--option", "raw_options", multiple=True, metavar="FMT:KEY=VALUE",
              help="A converter option, e.g. onnx:opset=13 or tflite:int8_io=false (repeatable).")
@click.option("--threads", type=int, help="Runtime threads used for validation (default: all available cores).")
@click.option("--json", "as_json", is_flag=True, help='Print {"artifacts": [...]} on stdout.')
@click.option("--unsafe", is_flag=True, help="Allow loading models with Lambda layers (runs their code).")
@int8_options()
@click.pass_context
def export_cmd(ctx, model, formats, quantize, data, out_dir, raw_options, threads, as_json, unsafe, **int8):
    """Export MODEL (.keras, .h5 or SavedModel dir) and validate every artifact against MODEL."""
    from optkit import export as export_mod

    names = export_mod.parse_formats(formats)
    unsupported = [f"{n} has no '{quantize}' (it offers {', '.join(exporters.get(n).PRECISIONS)})"
                   for n in names if quantize not in exporters.get(n).PRECISIONS]
    if unsupported:
        raise UserError(f"--quantize {quantize}: " + "; ".join(unsupported))
    options = parse_options(raw_options, names)
    add_int8_options(options, names, quantize, int8)
    if threads is not None and threads < 1:
        raise UserError("--threads must be >= 1")

    from optkit import keras_io

    loaded = keras_io.load(model, unsafe=unsafe)
    dataset = _load_data(data, loaded.model) if data else None
    stem = os.path.splitext(os.path.basename(os.path.normpath(model)))[0] or "model"

    def progress(line):
        if not as_json:
            click.echo(line, err=True)

    artifacts = export_mod.export_model(loaded.model, names, out_dir, quantize=quantize, data=dataset,
                                        stem=stem, threads=threads, options=options, progress=progress)
    if as_json:
        click.echo(json.dumps({"artifacts": [a.to_json() for a in artifacts]}, indent=2))
    else:
        click.echo(render_table(artifacts))
        from optkit import report

        for label, q in report.quantized_artifacts({"artifacts": [a.to_json() for a in artifacts]}):
            click.echo(f"\nint8 layers, worst first ({label}):\n" + report.quant_table(q))
    code = 0
    for art in artifacts:
        if art.status == "skipped":
            click.echo(f"optkit: {art.format} skipped: {art.reason}", err=True)
            code = 1
        elif art.status == "failed":
            click.echo(f"optkit: {art.format} failed: {art.reason}", err=True)
            code = 1
    if code:
        ctx.exit(code)


def parse_options(raw, names):
    """('onnx:opset=13', ...) -> {'onnx': {'opset': 13}}; values become bool/int/float when they look like one."""
    out = {}
    for item in raw:
        fmt, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not key.strip():
            raise UserError(f"bad --option '{item}': expected FMT:KEY=VALUE, e.g. onnx:opset=13")
        fmt = fmt.strip().lower()
        if fmt not in names:
            raise UserError(f"--option '{item}' is for '{fmt}', which is not in --to ({', '.join(names)})")
        out.setdefault(fmt, {})[key.strip()] = _value(value.strip())
    return out


def _value(text):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _load_data(src, model):
    try:
        from optkit.data import load_data
    except ImportError:
        raise UserError("--data needs optkit.data, which is not part of this build") from None
    from optkit import keras_io

    shape = keras_io.input_specs(model)[0][1]
    return load_data(src, input_shape=tuple(int(d) for d in shape[1:]))


def _mb(n):
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def render_table(artifacts):
    rows = [("format", "quantize", "status", "size", "gzip", "max |diff|", "top-1", "path / reason")]
    for a in artifacts:
        p = a.parity
        max_abs = "-" if p is None or p.max_abs is None else f"{p.max_abs:.2g}"
        top1 = "-" if p is None or p.top1_agreement is None else f"{p.top1_agreement:.3f}"
        where = a.path or ""
        if a.reason:
            where = f"{where} ({a.reason})" if where else a.reason
        elif p is not None and p.ok is None:
            where = f"{where} ({p.reason})"
        rows.append((a.format, a.quantize, a.status, _mb(a.size_bytes), _mb(a.gzip_bytes), max_abs, top1, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    for a in artifacts:   # --option tflite:sparse=true: whether the sparse encoding was kept, and what it bought
        sparse = (a.details or {}).get("sparse")
        if sparse:
            lines.append(f"{a.format} {a.quantize} sparse: " + (sparse.get("note") if sparse.get("applied")
                                                                else "not applied: " + sparse.get("reason", "")))
    return "\n".join(lines)
