"""How often does `optkit gate` cry wolf, and how often does it catch a real slowdown - here?

On this (noisy, shared) machine, repeat many independent gate decisions:
  * A vs A      - the same predictor against itself: every "regression" is a false positive;
  * A vs A+10 % - the same predictor wrapped in a busy-wait calibrated to add 10 % of its median;
  * A vs A+25 % - the same with 25 %.
Each trial measures baseline and candidate interleaved (optkit.gate.measure_interleaved) and
decides with optkit.gate.decide - the code the CLI runs. The same samples are judged at two
tolerances: --max-slowdown 5 % and 10 %. A slowdown exactly AT the tolerance is a coin toss by
construction (the measured median ratio lands on either side of the limit; here the busy-wait's
own clock calls tip it slightly above), so to catch +10 % reliably, gate with a tolerance below
it: the verdict line uses 5 %. The numpy workload is multi-threaded BLAS and far noisier here.

    python benchmarks/gate_power.py [--trials 50] [--runs 300] [--workload onnx|numpy] [--json OUT]

Targets (issue 7): false positives <= 1 %, detection at +10 % >= 95 %.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from optkit import gate  # noqa: E402

TOLERANCES = (0.05, 0.10)
SCENARIOS = (("A vs A", 0.0), ("A vs A+10%", 0.10), ("A vs A+25%", 0.25))
# The control: the same A-vs-A comparison measured the naive way, all of A then all of B, to show
# what interleaving buys on a machine whose load changes between the two blocks.
SEQUENTIAL = ("A vs A seq.", 0.0)


def onnx_workload(tmpdir, hidden=2048, batch=32):
    """A two-layer MLP in onnxruntime, one thread: a real runtime call of a fraction of a ms."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from optkit.runner import load_predictor

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = os.path.join(tmpdir, "mlp.onnx")
    onnx.save(model, path)
    predictor = load_predictor(path, threads=1)
    x = rng.random((batch, 64), dtype=np.float32)
    return (lambda: predictor(x)), f"onnxruntime MLP 64-{hidden}-10, batch {batch}, 1 thread"


def numpy_workload(n=160):
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    return (lambda: a @ a), f"numpy {n}x{n} float32 matmul"


def with_busy_wait(fn, extra_s):
    """fn plus a spin of `extra_s` seconds: a genuinely slower candidate (a sleep would yield the
    core and measure the scheduler's wake-up latency instead)."""
    if extra_s <= 0:
        return fn
    clock = time.perf_counter

    def slower():
        fn()
        end = clock() + extra_s
        while clock() < end:
            pass

    return slower


def measure_sequential(fn_a, fn_b, runs, warmup=5):
    """All of A, then all of B: what a gate that benches one artifact after the other sees."""
    out = []
    for fn in (fn_a, fn_b):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        out.append(times)
    return out[0], out[1]


def median_s(fn, n=400):
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(trials, runs, workload, alpha=gate.DEFAULT_ALPHA, progress=print):
    with tempfile.TemporaryDirectory() as tmp:
        if workload == "onnx":
            fn, label = onnx_workload(tmp)
        else:
            fn, label = numpy_workload()
        base_median = median_s(fn)
        progress(f"workload: {label}; calibrated median {base_median * 1e3:.4f} ms; "
                 f"{trials} trials x {runs} interleaved runs per side; alpha {alpha}")
        rows = []
        for name, slowdown in SCENARIOS + (SEQUENTIAL,):
            cand = with_busy_wait(fn, slowdown * base_median)
            sequential = (name, slowdown) == SEQUENTIAL
            decisions = {tol: [] for tol in TOLERANCES}
            ratios, significant = [], 0
            t0 = time.time()
            for trial in range(trials):
                if sequential:
                    a, b = measure_sequential(fn, cand, runs)
                else:
                    a, b = gate.measure_interleaved(fn, cand, warmup=5, min_time=0.0, min_runs=runs,
                                                    seed=trial)
                for tol in TOLERANCES:
                    r = gate.decide(a, b, alpha=alpha, max_slowdown=tol, min_samples=30)
                    decisions[tol].append(r.decision)
                ratios.append(r.median_ratio)
                significant += r.p_value is not None and r.p_value < alpha
            row = {"scenario": name, "true_slowdown": slowdown, "trials": trials, "runs": runs,
                   "measurement": "sequential" if sequential else "interleaved",
                   "seconds": round(time.time() - t0, 1),
                   "median_ratio": {"mean": statistics.mean(ratios), "min": min(ratios), "max": max(ratios)},
                   # How often the U test alone (no tolerance) would have called it slower.
                   "significant_rate": significant / trials}
            for tol in TOLERANCES:
                ds = decisions[tol]
                row[f"tol{int(tol * 100)}"] = {
                    "regression_rate": ds.count(gate.REGRESSION) / trials,
                    "inconclusive_rate": ds.count(gate.INCONCLUSIVE) / trials,
                    "pass_rate": ds.count(gate.PASS) / trials,
                }
            rows.append(row)
            progress(_row_text(row))
        return {"workload": label, "calibrated_median_ms": base_median * 1e3, "alpha": alpha,
                "rows": rows, "verdict": _verdict(rows)}


def _row_text(row):
    r = row["median_ratio"]
    cells = "  ".join(f"tol {int(t * 100):>2}%: regression {row[f'tol{int(t * 100)}']['regression_rate']:6.1%} "
                      f"inconclusive {row[f'tol{int(t * 100)}']['inconclusive_rate']:5.1%}" for t in TOLERANCES)
    return (f"{row['scenario']:<12} ratio {r['mean']:.3f} [{r['min']:.3f}, {r['max']:.3f}]  {cells}  "
            f"p<alpha {row['significant_rate']:6.1%}  ({row['seconds']} s)")


def _verdict(rows):
    by = {r["scenario"]: r for r in rows}
    fp = by["A vs A"]["tol5"]["regression_rate"]
    fp_seq = by[SEQUENTIAL[0]]["tol5"]["regression_rate"]
    det10 = by["A vs A+10%"]["tol5"]["regression_rate"]
    det25 = by["A vs A+25%"]["tol5"]["regression_rate"]
    return {"false_positive_rate": fp, "detection_at_10pct": det10, "detection_at_25pct": det25,
            "false_positive_rate_sequential": fp_seq,
            "tolerance": 0.05, "fp_target_met": fp <= 0.01, "detection_target_met": det10 >= 0.95}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--runs", type=int, default=300, help="interleaved runs per side per trial")
    p.add_argument("--workload", choices=("onnx", "numpy"), default="onnx")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    if args.trials < 50:
        print("note: fewer than 50 trials per scenario; rates below are coarse", file=sys.stderr)
    result = run(args.trials, args.runs, args.workload)
    v = result["verdict"]
    print(f"\nat --max-slowdown 5%, alpha {result['alpha']}: false positives {v['false_positive_rate']:.1%} "
          f"(target <= 1%: {'met' if v['fp_target_met'] else 'NOT met'}), detection at +10% "
          f"{v['detection_at_10pct']:.1%} (target >= 95%: {'met' if v['detection_target_met'] else 'NOT met'}), "
          f"detection at +25% {v['detection_at_25pct']:.1%}; "
          f"false positives when measured sequentially instead: {v['false_positive_rate_sequential']:.1%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
