"""The `env` fingerprint stored in every report.json: where the numbers were measured.

CPU model, cores, OS, Python (optkit.device) and the versions of the packages that decide latency. Versions come
from installed distribution metadata (importlib.metadata), so this never imports TensorFlow and
works on a device that has only numpy and one runtime.
"""
from __future__ import annotations

from importlib import metadata
from typing import Dict, Optional

from optkit import __version__, device

# Distributions whose version changes what a benchmark measures. Missing ones are left out.
PACKAGES = (
    "numpy", "tensorflow", "tensorflow-cpu", "tf_keras", "keras", "tensorflow-model-optimization",
    "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu", "onnx", "tf2onnx",
    "tensorrt", "coremltools",
)


def package_versions(names=PACKAGES) -> Dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def fingerprint(threads: Optional[int] = None) -> dict:
    """The env block of report.json. `threads` is the count the run set explicitly (if one).

    The hardware part is optkit.device's fingerprint (CPU, cores, governor, Jetson power mode):
    one implementation, shared with the gate and the remote bench.
    """
    env = device.fingerprint(threads=threads)
    env["optkit"] = __version__
    env["packages"] = package_versions()
    return env
