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
@click.option("--data", metavar="SRC", help="Calibration/validation data as pixels (class folders, images/+masks/, "
              "a folder of images, .npz, keras:NAME, tfds:NAME, synthetic:NAME). Without it int8 calibrates "
              "on random pixels and is `unverified`.")
@click.option("--preprocess", metavar="MODE", default=None,
              help="What the model expects: unit (0-1), raw (0-255), tf (-1..1), torch, caffe, "
                   "scale=A,offset=B[,bgr], or auto (adopt what probing labelled --data finds). "
                   "Default: stored with the model, else its own Rescaling layer, else unit.")
@click.option("--max-drop", type=click.FloatRange(0), default=None, metavar="POINTS",
              help="With labelled --data: the task-metric drop a quantized artifact may show against "
                   "the model [default: 3 for int8/dynamic (5 for a segmentation mIoU), 1 for float16].")
@click.option("--offline", is_flag=True, help="Never download data (keras:/tfds: sources).")
@click.option("-o", "--output", "out_dir", default=".", show_default=True, type=click.Path(),
              help="Directory for the artifacts.")
@click.option("--option", "raw_options", multiple=True, metavar="FMT:KEY=VALUE",
              help="A converter option, e.g. onnx:opset=13 or tflite:int8_io=false (repeatable).")
@click.option("--threads", type=int, help="Runtime threads used for validation (default: all available cores).")
@click.option("--json", "as_json", is_flag=True, help='Print {"artifacts": [...]} on stdout.')
@click.option("--unsafe", is_flag=True, help="Allow loading models with Lambda layers (runs their code).")
@int8_options()
@click.pass_context
def export_cmd(ctx, model, formats, quantize, data, preprocess, max_drop, offline, out_dir, raw_options,
               threads, as_json, unsafe, **int8):
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

    from optkit import contract as contract_mod
    from optkit import keras_io

    if preprocess is not None and preprocess.strip().lower() != "auto":
        contract_mod.parse(preprocess)   # a typo costs milliseconds
    loaded = keras_io.load(model, unsafe=unsafe)
    dataset = _load_data(data, loaded.model, offline) if data else None
    stem = os.path.splitext(os.path.basename(os.path.normpath(model)))[0] or "model"

    def progress(line):
        if not as_json:
            click.echo(line, err=True)

    if max_drop is None and int8.get("int8_max_drop") is not None:
        max_drop = int8["int8_max_drop"]   # the int8 search's goal is also what validation holds it to
    contract, dataset = contract_mod.prepare(preprocess, model=loaded.model, path=model, data=dataset,
                                             say=lambda m: click.echo(f"optkit: {m}", err=True))
    artifacts = export_mod.export_model(loaded.model, names, out_dir, quantize=quantize, data=dataset,
                                        stem=stem, threads=threads, options=options, progress=progress,
                                        contract=contract, max_drop=max_drop)
    if as_json:
        click.echo(json.dumps({"artifacts": [a.to_json() for a in artifacts]}, indent=2))
    else:
        click.echo(render_table(artifacts))
        from optkit import report

        for label, q in report.quantized_artifacts({"artifacts": [a.to_json() for a in artifacts]}):
            click.echo(f"\nint8 layers, worst first ({label}):\n" + report.quant_table(q))
    code = 0
    for art in artifacts:
        if art.status == "unverified":
            click.echo(f"optkit: {art.format} unverified: {art.reason}", err=True)
        elif art.status == "skipped":
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


def _load_data(src, model, offline=False):
    try:
        from optkit.data import load_data
    except ImportError:
        raise UserError("--data needs optkit.data, which is not part of this build") from None
    from optkit import keras_io

    shape = keras_io.input_specs(model)[0][1]
    outputs = keras_io.output_specs(model)
    classes = outputs[0][1][-1] if outputs and outputs[0][1] and outputs[0][1][-1] else None
    return load_data(src, input_shape=tuple(int(d) for d in shape[1:]), offline=offline or None,
                     num_classes=int(classes) if classes and classes > 1 else None)


def _mb(n):
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def render_table(artifacts):
    rows = [("format", "quantize", "status", "size", "gzip", "max |diff|", "top-1", "SNR", "metric vs model (n)",
             "path / reason")]
    for a in artifacts:
        p = a.parity
        max_abs = "-" if p is None or p.max_abs is None else f"{p.max_abs:.2g}"
        top1 = "-" if p is None or p.top1_agreement is None else f"{p.top1_agreement:.3f}"
        snr = "-" if p is None or p.snr_db is None else f"{p.snr_db:.1f} dB"
        m = p.metric if p is not None else None
        metric = "-" if not m else (f"{m['metric']} {100 * m['artifact']:.1f}% vs {100 * m['source']:.1f}% "
                                    f"(n={m['n']})")
        where = a.path or ""
        if a.reason:
            where = f"{where} ({a.reason})" if where else a.reason
        elif p is not None and p.ok is None:
            where = f"{where} ({p.reason})"
        rows.append((a.format, a.quantize, a.status, _mb(a.size_bytes), _mb(a.gzip_bytes), max_abs, top1, snr,
                     metric, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    for a in artifacts:   # --option tflite:sparse=true: whether the sparse encoding was kept, and what it bought
        sparse = (a.details or {}).get("sparse")
        if sparse:
            lines.append(f"{a.format} {a.quantize} sparse: " + (sparse.get("note") if sparse.get("applied")
                                                                else "not applied: " + sparse.get("reason", "")))
    return "\n".join(lines)
