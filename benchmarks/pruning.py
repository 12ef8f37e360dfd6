"""Pruning that makes models faster? Magnitude pruning vs channel pruning vs sparse TFLite, side by side.

    python benchmarks/pruning.py [--model NAME|FILE.keras] [--data SRC] [--epochs N] [--ratio R]
        [--sparsity S] [--fine-tune-epochs N] [--tolerance PTS] [--rounds N] [--json OUT]

Trains a zoo model (default: ResNet-20 `resnet_cifar` on synthetic:shapes?classes=6), then makes,
with optkit's own steps and exporter, in this one run:

    baseline                 float32 TFLite of the trained model
    baseline + more epochs   control: the baseline trained as long as the fine-tunes (same early
                             stopping), so an accuracy gain of a pruned row can be told apart from
                             the extra training it got
    magnitude pruned         `prune` (tfmot, S zeros per kernel, fine-tuned), float32 TFLite
    magnitude + sparse       the same model exported with --option tflite:sparse=true
    channel pruned           `channel_prune:ratio=R` (filters removed, fine-tuned with early
                             stopping), float32 TFLite
    ... + PTQ int8           baseline and channel-pruned, full-integer TFLite (channel_prune composes
                             with quantization)

Every row: parameters (and non-zero ones), multiply-adds per image, .tflite size and gzip -9 size,
top-1 accuracy of the .tflite on the test split, LiteRT p50 at batch 1 with 1 and 2 threads.
Latencies are measured interleaved: every round times each artifact for a short slice in a
shuffled order, and p50 is the median over all rounds, so load on the machine hits all rows
alike. The ratios to the baseline are what to read; absolute milliseconds move between runs.

Target (issue 15): the channel-pruned model at <= 0.6x the baseline's parameters, <= 0.75x its
LiteRT p50 (at 1 and 2 threads) and within `--tolerance` points of its accuracy. Exit 1 if not.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np

TARGET_PARAMS = 0.6
TARGET_LATENCY = 0.75


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet_cifar", help="zoo model name or a .keras/.h5 file")
    ap.add_argument("--data", default="synthetic:shapes?classes=6")
    ap.add_argument("--epochs", type=int, default=12, help="training epochs of a zoo model")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the base training")
    ap.add_argument("--ratio", type=float, default=0.5, help="channel_prune ratio")
    ap.add_argument("--importance", default="l2", help="channel_prune importance")
    ap.add_argument("--sparsity", type=float, default=0.8, help="magnitude pruning sparsity")
    ap.add_argument("--fine-tune-epochs", type=int, default=8, help="fine-tune epochs of both prunings")
    ap.add_argument("--patience", type=int, default=4, help="early stopping patience of channel_prune and the control")
    ap.add_argument("--tolerance", type=float, default=3.0, help="accuracy points a technique may lose")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per thread count")
    ap.add_argument("--slice", type=float, default=0.1, help="seconds per artifact per round")
    ap.add_argument("--limit", type=int, default=None, help="at most N samples per split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", help="also write the rows as JSON here")
    return ap.parse_args(argv)


def log(msg):
    print(f"[pruning] {msg}", file=sys.stderr, flush=True)


def _compression_bench():
    """benchmarks/compression.py, for its base-model training (one recipe for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("compression_bench", os.path.join(os.path.dirname(__file__), "compression.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_step(name, model, data, args, **options):
    from optkit import steps
    from optkit.steps import StepContext

    step = steps.get(name)
    ctx = StepContext(data=data, epochs=args.fine_tune_epochs, batch_size=args.batch_size, progress=False,
                      seed=args.seed, extra={"history": []})
    t0 = time.perf_counter()
    result = step.apply(model, ctx, **step.parse_options({k: str(v) for k, v in options.items()}))
    log(f"{name} {options}: {time.perf_counter() - t0:.0f} s")
    return result


def longer_training(model, data, args):
    """The control row: the baseline trained for the fine-tune's epochs (same patience and rate)."""
    from optkit import keras_io, train

    copy = keras_io.clone(model)
    t0 = time.perf_counter()
    train.fit(copy, data, epochs=args.fine_tune_epochs, batch_size=args.batch_size, learning_rate=1e-3,
              early_stopping=args.patience, progress=False, seed=args.seed)
    log(f"baseline +{args.fine_tune_epochs} epochs: {time.perf_counter() - t0:.0f} s")
    return copy


def export_row(label, model, data, workdir, quantize="none", **options):
    import exporters
    from optkit import compression, inspect_model, keras_io, runner

    path = os.path.join(workdir, label.replace(" ", "_").replace("+", "p") + ".tflite")
    details = exporters.get("tflite").export(model, path, quantize=quantize, data=data, **options)
    size, gz = runner.file_sizes(path)
    predictor = runner.load_predictor(path, threads=1)
    preds = np.concatenate([predictor(data.x_test[i:i + 1])[0] for i in range(len(data.x_test))])
    k3 = keras_io.as_keras3(model)
    params = int(k3.count_params())
    zeros = sum(int(np.sum(np.asarray(w) == 0)) for w in compression.kernels(k3).values())
    return {"technique": label, "path": path, "quantize": quantize, "params": params, "nonzero_params": params - zeros,
            "multiply_adds": inspect_model.total_multiply_adds(k3), "size_bytes": size, "gzip_bytes": gz,
            "accuracy": float(np.mean(preds.argmax(axis=1) == data.y_test)),
            "sparse": details.get("sparse"), "xnnpack": details.get("xnnpack")}


def interleaved_p50(paths, threads, rounds, slice_s, seed=0):
    """Median latency (ms) per artifact: each round times every artifact for `slice_s` seconds, in
    a shuffled order, so a load spike costs every row alike."""
    from optkit import runner

    prepared = {}
    for path in paths:
        predictor = runner.load_predictor(path, threads=threads)
        x = runner.random_inputs(predictor.inputs, batch=1, seed=seed)
        prepared[path] = predictor.prepare(*x)
    samples = {p: [] for p in paths}
    order = list(paths)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for path in order:
            stats = runner.measure(prepared[path], warmup=3, min_time=slice_s, min_runs=5)
            samples[path].append(stats["p50"])
    return {p: statistics.median(v) for p, v in samples.items()}


def table(rows, base):
    head = (f"{'technique':<28} {'params':>9} {'nonzero':>9} {'MACs (M)':>9} {'gzip KB':>8} {'acc':>6} {'Δpts':>5} "
            f"{'p50@1 ms':>9} {'x':>5} {'p50@2 ms':>9} {'x':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['technique']:<28} {r['params']:>9,} {r['nonzero_params']:>9,} {r['multiply_adds'] / 1e6:>9.2f} "
                     f"{r['gzip_bytes'] / 1024:>8.1f} {100 * r['accuracy']:>5.1f}% {r['drop_points']:>5.1f} "
                     f"{r['p50_ms'][1]:>9.3f} {r['p50_ms'][1] / base['p50_ms'][1]:>5.2f} "
                     f"{r['p50_ms'][2]:>9.3f} {r['p50_ms'][2] / base['p50_ms'][2]:>5.2f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    model, data, how = _compression_bench().base_model(args)
    log(how)
    magnitude = run_step("prune", model, data, args, sparsity=args.sparsity, skip_first=True, skip_last=True)
    channel = run_step("channel_prune", model, data, args, ratio=args.ratio, importance=args.importance,
                       patience=args.patience)
    control = longer_training(model, data, args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="optkit-pruning-") as workdir:
        rows.append(export_row("baseline", model, data, workdir))
        rows.append(export_row(f"baseline +{args.fine_tune_epochs} epochs", control, data, workdir))
        rows.append(export_row(f"magnitude pruned {args.sparsity:g}", magnitude.model, data, workdir))
        rows.append(export_row("magnitude + sparse tflite", magnitude.model, data, workdir, sparse=True))
        rows.append(export_row(f"channel pruned {args.ratio:g}", channel.model, data, workdir))
        rows.append(export_row("baseline PTQ int8", model, data, workdir, quantize="int8"))
        rows.append(export_row("channel pruned + PTQ int8", channel.model, data, workdir, quantize="int8"))
        for r in rows:
            log(f"{r['technique']}: {r['size_bytes']} bytes, accuracy {r['accuracy']:.3f}")
        p50 = {t: interleaved_p50([r["path"] for r in rows], t, args.rounds, args.slice, args.seed) for t in (1, 2)}
    base = rows[0]
    for r in rows:
        r["p50_ms"] = {t: p50[t][r["path"]] for t in (1, 2)}
        r["drop_points"] = round(100 * (base["accuracy"] - r["accuracy"]), 2)
        r["within_tolerance"] = r["drop_points"] <= args.tolerance
    ch = next(r for r in rows if r["technique"].startswith("channel pruned"))
    checks = {
        f"params <= {TARGET_PARAMS}x": ch["params"] / base["params"] <= TARGET_PARAMS,
        f"LiteRT p50 <= {TARGET_LATENCY}x at 1 thread": ch["p50_ms"][1] / base["p50_ms"][1] <= TARGET_LATENCY,
        f"LiteRT p50 <= {TARGET_LATENCY}x at 2 threads": ch["p50_ms"][2] / base["p50_ms"][2] <= TARGET_LATENCY,
        f"accuracy within {args.tolerance:g} points": ch["within_tolerance"],
    }
    print(f"model: {how}")
    print(f"compared: each row against 'baseline' (the trained model, float32 TFLite), all measured in this run; "
          f"LiteRT ({rows[0]['xnnpack'] and 'XNNPACK ' or ''}default delegate) batch 1, p50 = median over {args.rounds} "
          f"interleaved rounds; accuracy of the .tflite on {len(data.y_test)} test samples")
    print(table(rows, base))
    print()
    sparse = next(r["sparse"] for r in rows if r["technique"] == "magnitude + sparse tflite") or {}
    print("sparse tflite: " + (sparse.get("note") if sparse.get("applied") else f"not applied: {sparse.get('reason')}"))
    for r in rows:
        if not r["within_tolerance"]:
            print(f"outside the {args.tolerance:g}-point tolerance: {r['technique']} ({r['drop_points']:.1f} points lost)")
    info = channel.info
    print(f"channel_prune: params {info['params_ratio']:.2f}x, multiply-adds {info['multiply_adds_ratio']:.2f}x, "
          f"{len(info['groups'])} groups, fine-tune rounds {[r['fine_tune'] for r in info['rounds']]}")
    print("target (issue 15, channel pruned vs baseline): " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s (machine load at start: {load_at_start:.1f}, at end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores)")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"model": how, "args": vars(args), "rows": rows, "checks": checks,
                       "channel_prune": info, "elapsed_s": round(elapsed, 1)}, fh, indent=2, default=str)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
