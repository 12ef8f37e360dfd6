"""Plain Keras CNNs exported to TFLite (float32 and full int8) and ONNX, for the benchmarks.

    python benchmarks/cnn_models.py OUT_DIR SPEC.json

builds every model in SPEC.json (a list of {"name", "size", "width", "blocks", "formats"}) into
OUT_DIR. The benchmarks call `build(out_dir, specs)`, which runs this file in a subprocess so their
own process never imports TensorFlow (as on a device) and measures only the runtime under test.
Files that already exist are kept, so `--cache-dir` makes reruns skip the conversions.

A model is: input size x size x 3 -> Conv 3x3 (width) -> `blocks` x [Conv 3x3 width->width, ReLU]
-> global average pool -> Dense 10. Every block costs the same, so adding blocks makes a model
slower by a predictable fraction: what benchmarks/gate_power.py uses for its candidates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

FORMATS = ("tflite", "int8.tflite", "onnx")


def paths_for(out_dir: str, spec: dict) -> Dict[str, str]:
    return {fmt: os.path.join(out_dir, f"{spec['name']}.{fmt}") for fmt in spec.get("formats", ("tflite",))}


def build(out_dir: str, specs: List[dict], timeout: float = 900) -> List[Dict[str, str]]:
    """Build what is missing in a TensorFlow subprocess; returns each spec's {format: path}."""
    os.makedirs(out_dir, exist_ok=True)
    wanted = [paths_for(out_dir, s) for s in specs]
    if not all(os.path.exists(p) for w in wanted for p in w.values()):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), out_dir, json.dumps(specs)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError("building the benchmark models failed:\n" + proc.stdout[-3000:])
    return wanted


def _keras_model(keras, spec):
    keras.utils.set_random_seed(spec.get("seed", 0))
    inp = keras.Input((spec["size"], spec["size"], 3), name="image")
    h = keras.layers.Conv2D(spec["width"], 3, padding="same", activation="relu")(inp)
    for _ in range(spec["blocks"]):
        h = keras.layers.Conv2D(spec["width"], 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def _export(spec, paths):
    import numpy as np
    import tensorflow as tf
    import keras

    model = _keras_model(keras, spec)
    size = spec["size"]
    rng = np.random.default_rng(0)
    for fmt, path in paths.items():
        if os.path.exists(path):
            continue
        tmp = path + ".tmp"
        if fmt == "onnx":
            import tf2onnx

            fn = tf.function(lambda image: model(image, training=False),
                             input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image")])
            tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17, output_path=tmp)
        else:
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            if fmt == "int8.tflite":
                def representative():
                    for _ in range(32):
                        yield [rng.uniform(0, 1, (1, size, size, 3)).astype(np.float32)]

                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
            with open(tmp, "wb") as fh:
                fh.write(conv.convert())
        os.replace(tmp, path)


def main(argv=None):
    out_dir, specs = (argv or sys.argv[1:])[:2]
    for spec in json.loads(specs):
        _export(spec, paths_for(out_dir, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
