"""`optkit optimize`: resolve a plan, run it, print the summary (or report.json with --json).

Parsing and rendering only; the pipeline is optkit.optimize. Nothing at module level imports
TensorFlow, and `--dry-run` never reaches code that does.
"""
from __future__ import annotations

import json
import os

import click

from optkit import plan as plan_mod
from optkit.commands.int8_flags import int8_options, int8_settings
from optkit.errors import UserError


@click.command("optimize")
@click.argument("model", required=False)
@click.option("--data", metavar="SRC", help="Labelled data: a folder of class sub-folders, a .npz with x/y, "
              "tfds:NAME or synthetic:NAME. Default with no MODEL: synthetic:shapes?classes=6.")
@click.option("--recipe", metavar="NAME|FILE.toml",
              help="lesson14 (default with no MODEL), edge-int8, max-compression, fast-cpu, or a TOML recipe.")
@click.option("--step", "steps", multiple=True, metavar="NAME[:k=v,...]",
              help="A step to apply, in order (repeatable), e.g. --step prune:sparsity=0.5 --step qat.")
@click.option("--to", metavar="FMT[:Q],...", help="Exports of every variant, e.g. tflite:int8,onnx "
              "(Q = none|dynamic|float16|int8).")
@click.option("--epochs", type=int, help="Epochs of baseline training (zoo models) and of each fine-tune.")
@click.option("--batch-size", type=int, help="Training batch size (default 32).")
@click.option("-o", "--output", "out_dir", type=click.Path(),
              help="Run directory (default runs/optimize-<timestamp>).")
@click.option("--resume", is_flag=True, help="Reuse the variants an earlier run finished in -o DIR "
              "(same model, data, steps and options) and run the rest.")
@click.option("--force", is_flag=True, help="Write into a non-empty -o DIR without reusing anything.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json (or the plan with --dry-run) on stdout.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and stop (imports no TensorFlow).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False),
              help="Replay a plan.json written by an earlier run: same variants, same ids.")
@click.option("--max-accuracy-drop", type=float, metavar="PCT",
              help="Points of top-1 accuracy a step may cost (default 1): with --step or a chain recipe, "
                   "steps losing more are rejected; alone, an accuracy-aware search.")
@click.option("--budget", type=float, metavar="MIN", help="Search time budget in minutes (default 10).")
@click.option("--trials", type=int, metavar="N", help="Search: try at most N candidates.")
@click.option("--strategy", type=click.Choice(plan_mod.STRATEGIES),
              help="Fine-tune under tf.distribute MirroredStrategy / MultiWorkerMirroredStrategy.")
@click.option("--unsafe", is_flag=True, help="Allow loading models with Lambda layers (runs their code).")
@click.option("--seed", type=int, help="Seed for data, initialisation and training (default 0).")
@click.option("--preprocess", metavar="MODE", default=None,
              help="What MODEL expects: unit (0-1), raw (0-255), tf (-1..1), torch, caffe, scale=A,offset=B[,bgr], "
                   "or auto (adopt what probing labelled --data finds). Default: stored with MODEL, else its "
                   "own Rescaling layer, else a probe with labelled data, else unit (assumed).")
@click.option("--offline", is_flag=True, help="Never download data (keras:/tfds: sources).")
# Hidden: the tiny schedule (1 epoch, a few hundred samples, short timings) for end-to-end tests.
# Same as OPTKIT_TINY=1 in the environment.
@click.option("--tiny", is_flag=True, default=None, hidden=True)
@int8_options(goal=False)
@click.pass_context
def optimize_cmd(ctx, model, data, recipe, steps, to, epochs, batch_size, out_dir, resume, force, as_json, dry_run,
                 plan_file, max_accuracy_drop, budget, trials, strategy, unsafe, seed, preprocess, offline, tiny,
                 **int8):
    """Rewrite, speed up, compress, export, validate and benchmark MODEL; write a report.

    With no MODEL and no --data: the embedded demo (the zoo Lesson 14 CNN on synthetic shapes,
    the Lesson 14 ladder, then int8 TFLite and ONNX exports of Naive and Separable), under
    10 minutes on 2 CPU cores. A MODEL with no recipe or step is exported (TFLite, int8 TFLite,
    ONNX), validated and timed. A step is kept only when it costs at most --max-accuracy-drop
    points (default 1) of validation accuracy; the run selects the fastest artifact within that
    of the baseline. Exit code 0 when something was selected and nothing failed, 1 otherwise,
    2 for usage errors, 130 when interrupted (finished variants are in report.json; --resume).
    """
    if resume and force:
        raise UserError("use either --resume (reuse finished variants) or --force (start over), not both")
    if resume and not out_dir:
        raise UserError("--resume needs -o DIR, the folder of the run to resume")
    if out_dir and not dry_run and os.path.isdir(out_dir) and os.listdir(out_dir) and not (resume or force):
        raise UserError(f"{out_dir} is not empty: add --resume to reuse the variants finished there, "
                        "or --force to write over it")

    if plan_file:
        given = [flag for flag, value in (("MODEL", model), ("--data", data), ("--recipe", recipe),
                                          ("--step", steps), ("--to", to), ("--epochs", epochs),
                                          ("--batch-size", batch_size), ("--max-accuracy-drop", max_accuracy_drop),
                                          ("--budget", budget), ("--trials", trials), ("--seed", seed))
                 if value not in (None, ())]
        given += ["--" + k.replace("_", "-") for k in int8_settings(int8)]
        if given:
            raise UserError(f"--plan replays a plan as written; drop {', '.join(given)}")
        plan = plan_mod.load(plan_file)
        if strategy:
            plan.strategy = strategy
        if unsafe:
            plan.unsafe = True
        plan.offline = plan.offline or offline
    else:
        if preprocess is not None and preprocess.strip().lower() != "auto":
            from optkit import contract

            contract.parse(preprocess)   # a typo fails before TensorFlow loads
        plan = plan_mod.resolve(model=model, data=data, recipe=recipe, steps=steps, to=to, epochs=epochs,
                                batch_size=batch_size, seed=seed, strategy=strategy,
                                max_accuracy_drop=max_accuracy_drop, budget=budget, trials=trials,
                                int8=int8_settings(int8),
                                unsafe=unsafe, tiny=tiny, preprocess=preprocess, offline=offline)

    if dry_run:
        click.echo(plan_mod.dumps(plan) if as_json else plan.describe())
        return

    from optkit import optimize   # imports TensorFlow lazily, as it needs it
    from optkit import report as report_mod

    out_dir = out_dir or optimize.default_out_dir()
    report = optimize.run(plan, out_dir, progress=True, resume=resume)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(report_mod.optimize_summary(report))
        click.echo(f"\nreport: {out_dir}/report.md, report.html, report.json; replay: "
                   f"optkit optimize --plan {out_dir}/plan.json")
    # Exit 0 only when the run hands over something: a selected artifact and no failures.
    if optimize.failures(report) or not report.get("selected"):
        ctx.exit(1)
