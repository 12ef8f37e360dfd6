"""LiteRT and onnxruntime: optkit.runner's own predictors (TF-free; what runs on devices too)."""
from __future__ import annotations

from optkit.runtimes import Runtime


def _runner_loader(runtime):
    def load(path, *, threads=None):
        from optkit import runner

        return runner.load_predictor(path, runtime=runtime, threads=threads)

    return load


RUNTIMES = [
    Runtime("litert", ("tflite",), _runner_loader("litert"),
            "LiteRT (ai_edge_litert, else tflite_runtime, else tf.lite) with XNNPACK",
            aliases=("tflite",), default_for=("tflite",)),
    Runtime("onnxruntime", ("onnx",), _runner_loader("onnxruntime"),
            "onnxruntime, CPU provider, explicit intra-op threads",
            aliases=("ort", "onnx"), default_for=("onnx",)),
]
