"""`optkit bench ARTIFACT...`: latency (and accuracy) of artifacts, here or on a device.

The logic lives in optkit.bench (local), optkit.remote (ssh) and optkit.adb (Android); this
module parses options and renders. Benching .tflite/.onnx needs no TensorFlow.
Exit codes: 0 every result ok, 1 a result skipped or failed, 2 bad input.
"""
from __future__ import annotations

import json

import click

from optkit import runtimes


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME",
              help=f"{runtimes.help_text()} (repeatable; default: by file type).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads, set explicitly on every runtime [default: all available cores].")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Untimed calls after the cold one.")
@click.option("--min-time", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Keep timing for at least this many seconds...")
@click.option("--min-runs", type=click.IntRange(1), default=50, show_default=True,
              help="...and at least this many calls (optkit gate needs 30 a side).")
@click.option("--data", "data_src", default=None, metavar="SRC",
              help="Labelled data for accuracy (image folder, .npz, tfds:NAME, synthetic:NAME). "
                   "Without it: output agreement with the first artifact.")
@click.option("--preprocess", default=None, metavar="MODE",
              help="With --data: how pixels become the artifacts' inputs (unit, raw, tf, torch, caffe, "
                   "scale=A,offset=B[,bgr]) [default: the contract stored with each artifact, else unit].")
@click.option("--offline", is_flag=True, help="Never download --data (keras:/tfds: sources).")
@click.option("--reference", default=None, metavar="ARTIFACT",
              help="Compare outputs against this artifact instead of the first one.")
@click.option("--remote", default=None, metavar="USER@HOST[:PORT]",
              help="Run on another machine over ssh (copies runner.py when optkit is absent there).")
@click.option("--ssh-identity", default=None, type=click.Path(dir_okay=False), metavar="KEY",
              help="With --remote: private key for ssh -i.")
@click.option("--known-hosts", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="With --remote: known_hosts file to check the host key against.")
@click.option("--remote-python", default="python3", show_default=True, metavar="CMD",
              help="With --remote: the Python to run the benchmark with on the remote machine.")
@click.option("--adb", "adb_serial", default=None, metavar="SERIAL",
              help="Run on an Android device over adb (repeated short benchmark_model runs, three "
                   "timed calls each, until --min-runs and --min-time: per-run samples for the gate).")
@click.option("--benchmark-binary", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="With --adb: TFLite's benchmark_model binary to push and run.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Also write the JSON report to FILE (input for `optkit report`/`gate`).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.pass_context
def bench_cmd(ctx, artifacts, runtimes, threads, batch, warmup, min_time, min_runs, data_src,
              preprocess, offline, reference, remote, ssh_identity, known_hosts, remote_python, adb_serial,
              benchmark_binary, output, as_json):
    """Measure latency of ARTIFACT(s): load, cold call, warm-up, then timed runs until both
    --min-time and --min-runs; prints p50/p90/p99/mean/std/n, load and cold times, peak RSS."""
    from optkit import report as report_mod
    from optkit.errors import UserError

    def say(msg):
        click.echo(msg, err=True)

    if remote and adb_serial:
        raise UserError("--remote and --adb are exclusive: pick one device")
    if benchmark_binary and not adb_serial:
        raise UserError("--benchmark-binary only applies with --adb")
    if (ssh_identity or known_hosts) and not remote:
        raise UserError("--ssh-identity/--known-hosts only apply with --remote")
    if (remote or adb_serial) and (data_src or reference):
        raise UserError("--data and --reference run locally only; drop them with --remote/--adb")
    runtime = runtimes[0] if runtimes else None
    if (remote or adb_serial) and len(runtimes) > 1:
        raise UserError("a device bench takes one --runtime")

    if remote:
        from optkit import remote as remote_mod

        doc = remote_mod.bench_remote(list(artifacts), remote, threads=threads, batch=batch,
                                      warmup=warmup, min_time=min_time, min_runs=min_runs,
                                      runtime=runtime, identity=ssh_identity,
                                      known_hosts=known_hosts, python=remote_python, progress=say)
    elif adb_serial:
        from optkit import adb as adb_mod

        if not benchmark_binary:
            raise UserError("--adb needs --benchmark-binary PATH (TFLite's benchmark_model for the device)")
        if batch != 1:
            raise UserError("--adb runs benchmark_model at the model's own batch size; drop --batch")
        # benchmark_model takes one model per run: one result each, merged into one report.
        doc = None
        for path in artifacts:
            one = adb_mod.bench_adb(path, adb_serial, benchmark_binary, threads=threads,
                                    warmup=warmup, min_time=min_time, min_runs=min_runs, progress=say)
            if doc is None:
                doc = one
            else:
                doc["results"].extend(one.get("results", []))
    else:
        from optkit import bench as bench_mod

        if preprocess is not None:
            from optkit import contract

            contract.parse(preprocess)
        if offline:
            import os

            os.environ["OPTKIT_OFFLINE"] = "1"
        doc = bench_mod.bench(list(artifacts), runtimes=runtimes, threads=threads, batch=batch,
                              warmup=warmup, min_time=min_time, min_runs=min_runs,
                              data=data_src, reference=reference, progress=say, preprocess=preprocess)
    if output:
        report_mod.write_text(json.dumps(doc, indent=1) + "\n", output)
        say(f"bench: wrote {output}")
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(report_mod.render(doc, "table"), nl=False)
    bad = [r for r in doc.get("results", []) if r.get("status", "ok") != "ok"]
    for r in bad:
        say(f"optkit: {r.get('status')}: {r.get('path')} on {r.get('runtime')}: {r.get('reason', '')}")
    ctx.exit(1 if bad else 0)
