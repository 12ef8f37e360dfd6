"""`--option tflite:sparse=true`: keep zero weights sparse in the .tflite, but only if it runs.

The converter's EXPERIMENTAL_SPARSITY optimization stores weights with enough exact zeros
(magnitude pruning) in a compressed block-sparse encoding. What that buys depends on the
runtime, and it is measured here rather than assumed (ai-edge-litert 2.3.0, x86):
- float32: LiteRT inserts DENSIFY ops that expand the weights when the model loads, so the file
  is smaller and the kernels are XNNPACK's dense ones (same latency). XNNPACK's truly sparse
  kernels need 1x1 convolutions in the structure tfmot's PruneForLatencyOnXNNPack checks and
  target ARM/WebAssembly.
- dynamic-range or int8: XNNPACK fails to prepare the sparse graph ("failed to delegate
  CONV_2D"), and a default LiteRT interpreter then cannot even allocate the model.

So the sparse file is tried in a default LiteRT interpreter (XNNPACK on); if that fails, the
dense conversion is written instead and the details say why; if it runs, both are timed
interleaved in this process and the details give sizes, p50s and the ratio.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from typing import Callable, Dict, Tuple

# Below this share of change in p50 the two are reported as equally fast: the machines this
# runs on are noisy (tens of percent between repeated runs), interleaving narrows it to a few.
SAME_SPEED = 0.05
TIMING_S = 0.5   # per model: enough interleaved calls for a stable median on small vision models


def keep_if_it_runs(sparse: bytes, convert_dense: Callable[[], bytes], *, ops_of: Callable[[str], list],
                    threads: int = 1) -> Tuple[bytes, Dict]:
    """(flatbuffer to write, details): the sparse one if LiteRT with XNNPACK runs it, else the dense one.
    `ops_of(path)` lists a .tflite file's ops (the tflite exporter's own reader: no import back)."""
    from optkit import gate, runner

    with tempfile.TemporaryDirectory(prefix="optkit-sparse-") as tmp:
        sparse_path, dense_path = os.path.join(tmp, "sparse.tflite"), os.path.join(tmp, "dense.tflite")
        dense = convert_dense()
        for path, blob in ((sparse_path, sparse), (dense_path, dense)):
            with open(path, "wb") as fh:
                fh.write(blob)
        size, gz = runner.file_sizes(sparse_path)
        dense_size, dense_gz = runner.file_sizes(dense_path)
        details = {"requested": True, "size_bytes": size, "dense_size_bytes": dense_size,
                   "gzip_bytes": gz, "dense_gzip_bytes": dense_gz, "densify": _has_densify(sparse_path, ops_of)}
        if size >= dense_size:
            details.update(applied=False, reason="no weight tensor was sparse enough for the sparse encoding "
                                                 "(prune first); wrote the dense model")
            return dense, details
        try:
            runner.load_predictor(sparse_path, runtime="litert", threads=threads)
        except (runner.RunnerError, RuntimeError, ValueError) as exc:   # LiteRT raises bare RuntimeError
            details.update(applied=False, reason=f"LiteRT's XNNPACK delegate cannot run the sparse encoding "
                                                 f"({_first_line(exc)}); wrote the dense model")
            return dense, details
        dense_s, sparse_s = gate.measure_artifacts(dense_path, sparse_path, threads=threads,
                                                   min_time=TIMING_S, min_runs=30)
    p50, dense_p50 = statistics.median(sparse_s.samples_ms), statistics.median(dense_s.samples_ms)
    ratio = p50 / dense_p50 if dense_p50 > 0 else None
    if ratio is None or abs(ratio - 1.0) <= SAME_SPEED:
        speed = "no faster than the dense model"
    elif ratio < 1.0:
        speed = f"{1 / ratio:.2f}x faster than the dense model"
    else:
        speed = f"{ratio:.2f}x SLOWER than the dense model"
    how = ("weights are expanded by DENSIFY ops when the model loads, so XNNPACK runs dense kernels"
           if details["densify"] else "XNNPACK runs the sparse weights")
    details.update(applied=True, p50_ms=round(p50, 4), dense_p50_ms=round(dense_p50, 4),
                   latency_ratio=None if ratio is None else round(ratio, 3), threads=threads,
                   timing="interleaved in one process (gate.measure_artifacts), LiteRT with XNNPACK",
                   note=f"{size / dense_size:.2f}x the dense file; {speed} at {threads} thread(s): {how}")
    return sparse, details


def _has_densify(path, ops_of) -> bool:
    return "DENSIFY" in ops_of(path)


def _first_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
