"""benchmarks/harness_overhead.py: `optkit bench`'s p50 against a bare runtime loop.

The target (<= 1.03) is the script's own verdict, measured side by side on a quiet machine; here
we check that it runs on a real int8 TFLite and an ONNX model, that its rows are consistent, and
that the bench path timed the runtime's own call (invoke / run), which is what makes it honest.
"""
import os
import re
import subprocess
import sys

from test_runner import tiny  # noqa: F401  (session fixture: tiny .tflite/.onnx)

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "harness_overhead.py")
ROW = re.compile(r"^(\S+)\s+(\d+)\s+([\d.]+)ms\s+([\d.]+)ms\s+([\d.]+)\s+(\S+)\s+(\d+)\s+([\d. ]+)$", re.M)


def test_overhead_script_compares_optkit_bench_with_a_bare_runtime_loop(tiny):
    proc = subprocess.run([sys.executable, SCRIPT, tiny["tflite_int8"], tiny["onnx"], "--rounds", "3",
                           "--calls", "60", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    rows = {m.group(1): m.groups() for m in ROW.finditer(proc.stdout)}
    assert set(rows) == {"tiny_int8.tflite", "tiny.onnx"}, proc.stdout
    assert rows["tiny_int8.tflite"][5] == "Interpreter.invoke"
    assert rows["tiny.onnx"][5] in ("InferenceSession.run", "InferenceSession.run_with_iobinding")
    for name, threads, ours, bare, ratio, _, calls, rounds in rows.values():
        round_ratios = [float(v) for v in rounds.split()]
        assert threads == "1" and float(ours) > 0 and float(bare) > 0 and len(round_ratios) == 3
        assert 50 <= int(calls) <= 60
        assert sorted(round_ratios)[1] == float(ratio)         # the median of the rounds
    assert "harness overhead: worst ratio" in proc.stdout
