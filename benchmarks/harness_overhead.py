"""What does `optkit bench` add on top of the runtime? Its p50 against a bare runtime loop.

    python benchmarks/harness_overhead.py [MODEL.tflite|MODEL.onnx ...] [--rounds 5] [--calls 300]
        [--threads 1 2] [--cache-dir DIR]

Two measurements of the same model file in one process, interleaved round by round (A B, B A, ...)
so drift in machine load hits both alike:
  * optkit  - `optkit.bench.bench([model], ...)`, the code path of the `optkit bench` command
              (load, cold call, warm-up, the runner's timing loop), its reported p50;
  * bare    - a loop written here against the runtime itself: LiteRT `Interpreter` with the
              input set once (quantized by hand for int8 I/O) then `invoke()`; onnxruntime
              `InferenceSession.run` on a feed dict built once. Same threads, same warm-up.
Each round gives a ratio optkit p50 / bare p50; the table shows the median over the rounds.
Target <= 1.03 (exit 1 above it).

Without MODEL arguments it builds (TensorFlow, in a subprocess, once per --cache-dir) a small
(32x32, ~0.1 ms) and a larger (64x64, a few ms) CNN as float32 TFLite, full-int8 TFLite and ONNX,
and measures each at every --threads count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from optkit import bench as bench_mod  # noqa: E402

TARGET = 1.03
MODELS = [{"name": "small", "size": 32, "width": 16, "blocks": 2, "formats": ["int8.tflite", "tflite", "onnx"]},
          {"name": "larger", "size": 64, "width": 32, "blocks": 3, "formats": ["int8.tflite", "tflite", "onnx"]}]


def _input(shape, dtype, quantization, seed=0):
    """Uniform [0, 1) floats like the runner's inputs, quantized by hand for an int8/uint8 input."""
    x = np.random.default_rng(seed).uniform(0, 1, [1] + list(shape[1:])).astype(np.float32)
    if np.issubdtype(dtype, np.integer) and quantization and quantization[0]:
        scale, zero = quantization
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def bare_litert(path, threads, warmup, calls):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], _input(d["shape"], d["dtype"], d["quantization"]))
    return _loop(interp.invoke, warmup, calls)


def bare_onnxruntime(path, threads, warmup, calls):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {i.name: _input([1] + [d if isinstance(d, int) else 1 for d in i.shape[1:]], np.float32, None)
            for i in sess.get_inputs()}
    return _loop(lambda: sess.run(None, feed), warmup, calls)


def _loop(fn, warmup, calls):
    """What a careful person writes by hand: p50 in ms of `calls` timed calls after `warmup`."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000.0


def optkit_bench(path, threads, warmup, calls):
    doc = bench_mod.bench([path], threads=threads, warmup=warmup, min_time=0.0, min_runs=calls, max_runs=calls)
    result = doc["results"][0]
    if result.get("status") != "ok":
        raise RuntimeError(f"optkit bench failed on {path}: {result.get('reason')}")
    return result["latency_ms"]["p50"], result.get("timed_call")


def compare(path, threads, rounds, calls, warmup=20, round_s=0.5):
    bare = bare_litert if path.endswith(".tflite") else bare_onnxruntime
    # Short rounds keep load drift between the two methods' blocks small: at most `round_s`
    # seconds of timed calls per method (but at least 50 calls).
    calls = max(50, min(calls, int(round_s / (bare(path, threads, 5, 20) / 1000.0))))
    ratios, ours, theirs, call = [], [], [], None
    for r in range(rounds):
        if r % 2 == 0:
            (a, call), b = optkit_bench(path, threads, warmup, calls), bare(path, threads, warmup, calls)
        else:
            b = bare(path, threads, warmup, calls)
            a, call = optkit_bench(path, threads, warmup, calls)
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
    return {"optkit_p50_ms": statistics.median(ours), "bare_p50_ms": statistics.median(theirs),
            "ratio": statistics.median(ratios), "round_ratios": ratios, "timed_call": call, "calls": calls}


def default_models(cache_dir):
    import cnn_models

    built = cnn_models.build(cache_dir, MODELS)
    return [p for spec in built for p in spec.values()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help=".tflite/.onnx files (default: the built CNN set)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=300,
                   help="timed calls per method per round, at most (fewer for slow models: ~0.5 s a round)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cache-dir", default=None, help="where the default models are built and kept")
    args = p.parse_args(argv)
    models = list(args.models) or default_models(args.cache_dir or tempfile.mkdtemp(prefix="optkit-overhead-"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.rounds} interleaved rounds x up to {args.calls} calls per method; load average {load:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"{'model':<22} {'threads':>7} {'optkit p50':>12} {'bare p50':>12} {'ratio':>7}  {'timed call':<36} "
          "calls  rounds")
    worst = 0.0
    for path in models:
        for threads in args.threads:
            res = compare(path, threads, args.rounds, args.calls)
            worst = max(worst, res["ratio"])
            print(f"{os.path.basename(path):<22} {threads:>7} {res['optkit_p50_ms']:>10.4f}ms "
                  f"{res['bare_p50_ms']:>10.4f}ms {res['ratio']:>7.3f}  {res['timed_call'] or '?':<36} {res['calls']:>5}  "
                  + " ".join(f"{x:.3f}" for x in res["round_ratios"]), flush=True)
    verdict = "ok" if worst <= TARGET else "OVER TARGET"
    print(f"harness overhead: worst ratio {worst:.3f} (target <= {TARGET}) {verdict}; ratio = median over "
          f"rounds of optkit bench p50 / bare runtime loop p50")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
