"""`optkit inspect MODEL`: what a model is made of and which rewrites apply."""
from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers (runs code stored in the file).")
def inspect_cmd(model, as_json, unsafe):
    """Parameters, FLOPs (multiply-adds), layers, flavour, inputs/outputs and applicable rewrites."""
    from optkit import inspect_model, keras_io

    info = inspect_model.summarize(keras_io.load(model, unsafe=unsafe))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(render(info))


def render(info: dict) -> str:
    def fmt(n):
        return "n/a" if n is None else f"{n:,}"

    lines = [
        f"model      {info.get('name', '')} ({info['flavour']}) from {info['path']}",
        f"params     {fmt(info['params'])} (trainable {fmt(info['trainable_params'])})",
        f"FLOPs      {fmt(info['flops'])} multiply-adds per sample",
    ]
    for kind in ("inputs", "outputs"):
        for spec in info[kind]:
            shape = "x".join("?" if d is None else str(d) for d in spec["shape"])
            lines.append(f"{kind[:-1]:<10} {spec['name']}: {shape} {spec['dtype']}")
    if info["layers"]:
        lines.append("layers     " + ", ".join(f"{k} {v}" for k, v in info["layers"].items()))
    rw = info["rewrites"]
    lines.append(f"rewrites   separable: {rw['separable']} Conv2D eligible (stem excluded); "
                 f"pooling: {'Flatten->Dense head can become global pooling' if rw['pooling'] else 'not applicable'}")
    cp = info.get("channel_pruning")
    if cp:
        tied = sum(1 for g in cp.get("groups", []) if g.get("tied"))
        lines.append(f"channels   channel_prune can shrink {cp['prunable_groups']} groups "
                     f"({cp.get('prunable_channels', 0):,} channels, {tied} tied across layers)")
        for fixed in cp.get("fixed", [])[:3]:
            lines.append(f"           fixed: {'+'.join(fixed['producers'])} ({fixed['why']})")
    return "\n".join(lines)
