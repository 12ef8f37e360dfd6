"""`optkit zoo list [--json]` and `optkit zoo build NAME -o FILE [--input-shape H,W,C] [--classes N]`.

Parsing and rendering only; the architectures live in optkit.zoo. `zoo list` reads the
registry metadata and never imports TensorFlow.
"""
from __future__ import annotations

import json
import os

import click

from optkit.errors import UserError


@click.group("zoo")
def zoo():
    """List and build the course's architectures (random weights; nothing is downloaded)."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True,
              help='Print [{"name", "lesson", "task", "default_input_shape"}, ...] on stdout.')
def list_cmd(as_json):
    """List the architectures with their lesson, task and default input shape."""
    from optkit import zoo as zoo_mod

    entries = zoo_mod.list_models()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    rows = [("name", "lesson", "task", "input", "classes")]
    rows += [(e.name, e.lesson, e.task, "x".join(map(str, e.default_input_shape)), str(e.default_classes))
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@zoo.command("build")
@click.argument("name")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the model (a Keras 3 .keras file).")
@click.option("--input-shape", metavar="H,W,C", help="Input shape without the batch dimension "
              "(default: the architecture's).")
@click.option("--classes", type=int, metavar="N", help="Number of output classes (default: the architecture's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the random initial weights.")
def build_cmd(name, output, input_shape, classes, seed):
    """Build architecture NAME with random weights and save it as a Keras 3 .keras file."""
    from optkit import zoo as zoo_mod

    if not output.endswith(".keras"):
        raise UserError(f"-o {output}: zoo build writes Keras 3 .keras files; give a path ending in .keras")
    if os.path.isdir(output):
        raise UserError(f"-o {output} is a directory")
    entry = zoo_mod.get(name)   # unknown names fail before TensorFlow is imported
    shape = zoo_mod.resolve_input_shape(entry, parse_shape(input_shape)) if input_shape else None
    if classes is not None and classes < 1:
        raise UserError(f"--classes must be >= 1, got {classes}")

    from optkit import keras_io

    model = zoo_mod.build(name, input_shape=shape, num_classes=classes, seed=seed)
    keras_io.save(model, output)
    shown = tuple(int(d) for d in model.inputs[0].shape[1:])
    click.echo(f"wrote {output}: {name}, {model.count_params():,} parameters, input {shown}, "
               f"output {tuple(model.outputs[0].shape[1:])}")


def parse_shape(text: str):
    """'64,64,3' (or '64x64x3') -> (64, 64, 3); anything else is a UserError."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"--input-shape expects H,W,C integers, got '{text}'") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape expects three positive integers H,W,C, got '{text}'")
    return shape
