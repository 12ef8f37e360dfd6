"""How much does optkit's timing harness add? optkit vs a bare perf_counter loop, side by side.

    python benchmarks/harness_overhead.py [MODEL.tflite|MODEL.onnx ...] [--rounds 30] [--calls 200]

Both measure the same predictor object on the same input in one process. Each round runs the
two methods back to back, alternating which goes first (A B, B A, ...), so drift in machine
load hits both equally. Prints each method's median latency over all samples and their ratio;
the target is optkit / bare <= 1.05 (exit 1 when it is exceeded).

Without a MODEL it builds a small ONNX MLP (256 -> 512 -> 10, float32) with the `onnx` package,
so it runs in a second without TensorFlow.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from optkit import runner

TARGET = 1.05


def tiny_onnx(path: str) -> str:
    """A 256 -> 512 -> 10 MLP: small enough that harness overhead would show if there were any."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (256, 512)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.05, (512, 10)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bare_loop(fn, calls: int):
    """What a careful person writes by hand."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def compare(predictor, rounds: int = 30, calls: int = 200, warmup: int = 50) -> dict:
    x = runner.random_inputs(predictor.inputs, batch=1, seed=0)
    fn = lambda: predictor(*x)  # noqa: E731 - the same callable for both methods
    for _ in range(warmup):
        fn()
    ours, bare, round_ratios = [], [], []
    for r in range(rounds):
        def run_ours():
            return runner.measure(fn, warmup=0, min_time=0.0, min_runs=calls, max_runs=calls)["samples_ms"]

        def run_bare():
            return [s * 1000.0 for s in bare_loop(fn, calls)]

        if r % 2 == 0:
            a, b = run_ours(), run_bare()
        else:
            b, a = run_bare(), run_ours()
        ours += a
        bare += b
        round_ratios.append(statistics.median(a) / statistics.median(b))
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    return {"optkit_median_ms": m_ours, "bare_median_ms": m_bare, "ratio": m_ours / m_bare,
            "median_round_ratio": statistics.median(round_ratios), "samples_each": len(ours)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help=".tflite/.onnx files (default: a generated ONNX MLP)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=200, help="timed calls per method per round")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    models = list(args.models)
    tmp = None
    if not models:
        tmp = tempfile.mkdtemp(prefix="optkit-overhead-")
        models = [tiny_onnx(os.path.join(tmp, "mlp.onnx"))]
    worst = 0.0
    print(f"{'model':<28} {'runtime':<12} {'optkit p50':>12} {'bare p50':>12} {'ratio':>7} {'round-median':>13}")
    for path in models:
        predictor = runner.load_predictor(path, threads=args.threads)
        res = compare(predictor, rounds=args.rounds, calls=args.calls)
        worst = max(worst, res["ratio"])
        print(f"{os.path.basename(path):<28} {predictor.runtime:<12} {res['optkit_median_ms']:>10.4f}ms "
              f"{res['bare_median_ms']:>10.4f}ms {res['ratio']:>7.3f} {res['median_round_ratio']:>13.3f}")
    verdict = "ok" if worst <= TARGET else "OVER TARGET"
    print(f"harness overhead: worst ratio {worst:.3f} (target <= {TARGET}) {verdict}; "
          f"{args.rounds} interleaved rounds x {args.calls} calls per method, threads={args.threads}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
