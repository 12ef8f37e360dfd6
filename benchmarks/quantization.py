"""Accuracy-aware int8 side by side: full int8, selective int8, calibration variants and QAT.

    python benchmarks/quantization.py [--models wide_channel,hardswish_mobilenet,large_residual]
        [--epochs N] [--qat-epochs N] [--goal PCT] [--threads N] [--min-time S] [--json OUT]

Builds three small models that full-integer quantization hurts (tests/quant_models.py: a CNN
with one wide-range channel, MobileNetV3-style hard-swish blocks with an outlier bottleneck
channel, a residual net whose residual stream carries one large channel), trains each briefly on
a faint-patch synthetic task, then exports, in this one run, with optkit's own exporters:

    float                 float32 TFLite (the reference accuracy)
    int8 full             TFLite int8, min/max calibration (what `--quantize int8` gives)
    int8 selective        TFLite int8 with `max_accuracy_drop=GOAL`: worst layers kept float
    ORT int8 <method>     ONNX QDQ int8 calibrated with minmax / entropy / percentile, and
                          minmax with per-channel weights
    ORT int8 selective    ONNX with `max_accuracy_drop=GOAL` (tries the calibrations first)
    QAT int8              optkit's qat step (fine-tune with fake quantization), TFLite int8

Every row: accuracy on the held-out test split (measured by the artifact's runtime: LiteRT or
onnxruntime), its drop in points from float, file size, p50 latency at batch 1 with a fixed
thread count (LiteRT for .tflite, onnxruntime for .onnx; compare rows of one runtime), and the
layers kept float. Timing on a shared, loaded 2-core machine: ratios within a run, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))   # the model builders live with the tests

BUILDERS = {"wide_channel": "wide_channel_cnn", "hardswish_mobilenet": "hardswish_mobilenet",
            "large_residual": "large_residual"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(BUILDERS), help="comma list of " + ", ".join(BUILDERS))
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: each builder's)")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--goal", type=float, default=1.0, help="max accuracy drop (points) of the selective rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed runs per row")
    ap.add_argument("--json", dest="json_out", help="also write the rows as JSON here")
    return ap.parse_args(argv)


def log(msg):
    print(f"[quantization] {msg}", file=sys.stderr, flush=True)


# (row label, format, quantize, exporter options)
def rows_for(goal):
    return [
        ("float", "tflite", "none", {}),
        ("int8 full", "tflite", "int8", {"quant_report": True}),
        ("int8 selective", "tflite", "int8", {"max_accuracy_drop": goal}),
        ("ORT int8 minmax", "onnx", "int8", {"calibration_method": "minmax"}),
        ("ORT int8 entropy", "onnx", "int8", {"calibration_method": "entropy"}),
        ("ORT int8 percentile", "onnx", "int8", {"calibration_method": "percentile"}),
        ("ORT int8 minmax per-channel", "onnx", "int8", {"calibration_method": "minmax", "per_channel": True}),
        ("ORT int8 selective", "onnx", "int8", {"max_accuracy_drop": goal}),
    ]


def measure(label, fmt, model, quantize, options, data, workdir, args):
    import exporters
    from optkit import metrics, runner

    path = os.path.join(workdir, label.replace(" ", "_") + exporters.get(fmt).SUFFIX)
    row = {"technique": label, "format": fmt, "quantize": quantize, "options": options}
    t0 = time.perf_counter()
    from exporters import _common

    try:
        with _common.quiet_stdout():   # onnxruntime's entropy/percentile calibrators print progress
            details = exporters.get(fmt).export(model, path, quantize=quantize, data=data, **options)
    except Exception as exc:  # noqa: BLE001 - a row that fails says why; the table goes on
        q = getattr(exc, "quantization", None) or {}
        row.update(status="failed", reason=str(exc).splitlines()[0][:300],
                   float_layers=q.get("float_layers"), goal=q.get("goal"))
        return row
    row["export_s"] = round(time.perf_counter() - t0, 1)
    q = details.get("quantization") or {}
    predictor = runner.load_predictor(path, threads=args.threads)
    result = metrics.evaluate(predictor, data.x_test, data.y_test)
    sample = data.x_test[:1]
    # Time the runtime call alone: input set (and quantized) once, outputs left unread.
    stats = runner.measure(predictor.prepare(sample), warmup=10, min_time=args.min_time, min_runs=50)
    row.update(status="ok", size_bytes=os.path.getsize(path), accuracy=result["accuracy"], n=result["n"],
               latency_ms={"p50": stats["p50"], "runtime": predictor.runtime, "threads": predictor.threads},
               float_layers=q.get("float_layers"), calibration=q.get("calibration"),
               worst_layers=[r["name"] for r in q.get("layers", [])[:3]], goal=q.get("goal"))
    return row


def qat_row(model, data, workdir, args):
    """optkit's qat step on the same trained model, exported to int8 TFLite."""
    from optkit import steps
    from optkit.steps import StepContext

    step = steps.get("qat")
    ctx = StepContext(data=data, epochs=args.qat_epochs, batch_size=32, progress=False, seed=0)
    t0 = time.perf_counter()
    try:
        result = step.apply(model, ctx, **step.parse_options({"convert": "false"}))
    except Exception as exc:  # noqa: BLE001
        return {"technique": "QAT int8", "format": "tflite", "status": "failed", "reason": str(exc)[:300]}
    row = measure("QAT int8", "tflite", result.model, "int8", {}, data, workdir, args)
    row["fine_tune_s"] = round(time.perf_counter() - t0, 1)
    return row


def table(model_name, rows):
    base = next((r for r in rows if r["technique"] == "float" and r["status"] == "ok"), None)
    head = (f"{'technique':<28} {'accuracy':>9} {'Δ pts':>7} {'size KB':>8} {'p50 ms':>8} {'runtime':<12} "
            f"{'calibration':<22} layers kept float")
    lines = [f"== {model_name}", head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            kept = ", ".join(r.get("float_layers") or [])
            lines.append(f"{r['technique']:<28} failed: {r['reason']}" + (f" [tried float: {kept}]" if kept else ""))
            continue
        drop = 100 * (base["accuracy"] - r["accuracy"]) if base else float("nan")
        r["accuracy_drop_points"] = round(drop, 2)
        kept = r.get("float_layers")
        kept = "-" if kept is None else (", ".join(kept) or "none")
        cal = r.get("calibration") or {}
        cal = "-" if not cal else cal["method"] + (", per-channel" if cal.get("per_channel") else "")
        lines.append(f"{r['technique']:<28} {100 * r['accuracy']:>8.1f}% {drop:>7.1f} {r['size_bytes'] / 1024:>8.1f} "
                     f"{r['latency_ms']['p50']:>8.3f} {r['latency_ms']['runtime']:<12} {cal:<22} {kept}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import quant_models

    from optkit import env

    started = time.perf_counter()
    data = quant_models.faint_quadrant_task()
    log(f"data: faint-quadrant, {len(data.x_train)} train / {len(data.x_val)} val / {len(data.x_test)} test")
    report = {"env": env.fingerprint(threads=args.threads), "goal_points": args.goal, "models": {}}
    texts = []
    with tempfile.TemporaryDirectory(prefix="optkit-quantization-") as workdir:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name not in BUILDERS:
                print(f"unknown model '{name}' (known: {', '.join(BUILDERS)})", file=sys.stderr)
                return 2
            build = getattr(quant_models, BUILDERS[name])
            t0 = time.perf_counter()
            model = build(data, epochs=args.epochs) if args.epochs else build(data)
            log(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
            rows = []
            for label, fmt, quantize, options in rows_for(args.goal):
                rows.append(measure(label, fmt, model, quantize, options, data, workdir, args))
                log(f"{name} / {label}: {rows[-1]['status']}")
            rows.append(qat_row(model, data, workdir, args))
            log(f"{name} / QAT int8: {rows[-1]['status']}")
            texts.append(table(name, rows))
            print(texts[-1] + "\n", flush=True)
            report["models"][name] = rows
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(f"(test split n={len(data.x_test)}; Δ = points below the float TFLite; p50 at batch 1, "
          f"{args.threads} thread(s); the machine was shared and loaded: compare rows of one runtime "
          f"within one model; {report['elapsed_s']:.0f} s in all)")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
