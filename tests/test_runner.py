"""The TF-free runner: load .tflite/.onnx, float32 in and out, explicit threads, the timing loop.

The tiny artifacts are converted from a live Keras model in a subprocess (so this test process
never imports TensorFlow, like a device wouldn't); the Keras outputs computed there are the oracle.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from optkit import runner

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Builds a 8x8x3 -> 5 classifier (Conv/ReLU/GAP/Dense), exports float and full-int8 TFLite,
# ONNX and .keras, and saves the Keras outputs on fixed inputs as the oracle.
_BUILD = textwrap.dedent(r"""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, keras, tensorflow as tf
    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    logits = keras.layers.Dense(5, name="logits")(h)
    model = keras.Model(inp, logits)
    model.save(os.path.join(out, "tiny.keras"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    np.savez(os.path.join(out, "oracle.npz"), x=x, y=model.predict(x, verbose=0))

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    open(os.path.join(out, "tiny.tflite"), "wb").write(conv.convert())

    def rep():
        for i in range(32):
            yield [rng.uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    open(os.path.join(out, "tiny_int8.tflite"), "wb").write(conv.convert())

    import tf2onnx
    fn = tf.function(lambda image: model(image, training=False),
                     input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="image")])
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=17,
                                  output_path=os.path.join(out, "tiny.onnx"))
""")


def build_tiny_artifacts(out_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, "-c", _BUILD, str(out_dir)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    return {
        "dir": str(out_dir),
        "keras": os.path.join(str(out_dir), "tiny.keras"),
        "tflite": os.path.join(str(out_dir), "tiny.tflite"),
        "tflite_int8": os.path.join(str(out_dir), "tiny_int8.tflite"),
        "onnx": os.path.join(str(out_dir), "tiny.onnx"),
        "oracle": dict(np.load(os.path.join(str(out_dir), "oracle.npz"))),
    }


_BUILT = {}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    # test_bench*.py import this fixture, which gives pytest one fixture definition per module;
    # the module-level cache makes the (TF-importing, ~5 s) build happen once per session.
    if "tiny" not in _BUILT:
        _BUILT["tiny"] = build_tiny_artifacts(tmp_path_factory.mktemp("tiny_models"))
    return _BUILT["tiny"]


# --- loading and calling -------------------------------------------------------------------

def test_tflite_float_matches_keras_on_a_new_batch_size(tiny):
    p = runner.load_predictor(tiny["tflite"], threads=1)
    assert p.runtime == "litert" and p.backend == "ai_edge_litert" and p.threads == 1
    assert [s.name for s in p.outputs] and p.inputs[0].shape == (None, 8, 8, 3)
    x, y = tiny["oracle"]["x"], tiny["oracle"]["y"]
    (out,) = p(x)  # the file says batch 1; a batch of 4 must be resized in, not rejected
    assert out.dtype == np.float32 and out.shape == (4, 5)
    # float32 TFLite vs Keras: same math, different kernels -> ~1e-6 (STACK.md measured 6e-6)
    np.testing.assert_allclose(out, y, atol=1e-4)
    (one,) = p(x[:1])  # and back to batch 1
    np.testing.assert_allclose(one, y[:1], atol=1e-4)


def test_int8_io_is_quantized_inside_so_callers_pass_and_get_float32(tiny):
    p = runner.load_predictor(tiny["tflite_int8"], threads=1)
    assert p.inputs[0].dtype == "int8" and p.inputs[0].quantization is not None
    assert p.outputs[0].dtype == "int8"
    x, y = tiny["oracle"]["x"], tiny["oracle"]["y"]
    (out,) = p(x)
    assert out.dtype == np.float32
    # int8 weights+activations: error is a few output quantization steps, not a raw int8 value
    scale = p.outputs[0].quantization[0]
    assert np.max(np.abs(out - y)) < 6 * scale + 0.05
    assert np.array_equal(out.argmax(1), y.argmax(1))


def test_onnx_matches_keras_with_explicit_threads(tiny):
    p = runner.load_predictor(tiny["onnx"], threads=2)
    assert p.runtime == "onnxruntime" and p.threads == 2
    assert p.inputs[0].shape[1:] == (8, 8, 3) and p.inputs[0].dtype == "float32"
    (out,) = p(tiny["oracle"]["x"].astype(np.float64))  # any float input is cast to the model's type
    np.testing.assert_allclose(out, tiny["oracle"]["y"], atol=1e-4)


def test_threads_default_to_the_available_cores_and_are_recorded(tiny):
    p = runner.load_predictor(tiny["onnx"])
    assert p.threads == runner.default_threads() >= 1


def test_tensorspec_unpacks_as_name_shape_dtype(tiny):
    name, shape, dtype = runner.load_predictor(tiny["tflite"]).inputs[0]
    assert shape == (None, 8, 8, 3) and dtype == "float32" and name


@pytest.mark.parametrize("path, message", [
    ("missing.tflite", "no such model file"),
    ("model.pb", "not '.pb'"),
])
def test_bad_paths_raise_runner_error(tmp_path, path, message):
    target = tmp_path / path
    if path.endswith(".pb"):
        target.write_bytes(b"x")
    with pytest.raises(runner.RunnerError, match=message):
        runner.load_predictor(str(target))


def test_corrupt_tflite_raises_runner_error(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(runner.RunnerError, match="cannot load"):
        runner.load_predictor(str(bad))


def test_wrong_number_of_inputs_is_a_runner_error(tiny):
    p = runner.load_predictor(tiny["onnx"], threads=1)
    x = tiny["oracle"]["x"]
    with pytest.raises(runner.RunnerError, match="expects 1 input"):
        p(x, x)


# --- the timing loop --------------------------------------------------------------------------

def test_prepared_litert_call_is_the_bare_invoke_on_inputs_set_once(tiny):
    """The timed call is invoke() alone: the int8 input was quantized and set by prepare, so
    invoking again (no set_tensor in between) still computes on it."""
    p = runner.load_predictor(tiny["tflite_int8"], threads=1)
    x, y = tiny["oracle"]["x"], tiny["oracle"]["y"]
    (expected,) = p(x[2:3])
    run = p.prepare(x[:1])
    assert p.timed_call == "Interpreter.invoke" and run == p._interp.invoke
    for _ in range(3):
        run()
    (out,) = p.read_outputs()
    scale = p.outputs[0].quantization[0]
    assert np.max(np.abs(out - y[:1])) < 6 * scale + 0.05
    assert not np.allclose(out, expected)    # it is x[0]'s result, not the previous call's
    (again,) = p(x[2:3])                      # the predictor still works as before afterwards
    np.testing.assert_array_equal(again, expected)


def test_prepared_onnx_call_picks_run_or_io_binding_and_leaves_the_predictor_usable(tiny):
    p = runner.load_predictor(tiny["onnx"], threads=1)
    x, y = tiny["oracle"]["x"], tiny["oracle"]["y"]
    run = p.prepare(x)
    assert p.timed_call in ("InferenceSession.run", "InferenceSession.run_with_iobinding")
    run()
    (out,) = p(x[:2])
    np.testing.assert_allclose(out, y[:2], atol=1e-4)


def test_bench_result_says_what_was_timed(tiny):
    r = runner.bench_file(tiny["tflite_int8"], threads=1, warmup=1, min_time=0.0, min_runs=5)
    assert r["timed_call"] == "Interpreter.invoke" and r["latency_ms"]["n"] == 5


def test_default_runs_give_the_gate_its_minimum_samples():
    from optkit import bench, gate
    from optkit.commands.bench import bench_cmd

    cli_default = next(o.default for o in bench_cmd.params if o.name == "min_runs")
    assert cli_default == bench.MIN_RUNS == runner.MIN_RUNS >= gate.DEFAULT_MIN_SAMPLES
    assert runner._parse_args(["m.tflite"]).min_runs == runner.MIN_RUNS


def test_measure_runs_until_both_min_time_and_min_runs():
    calls = []
    stats = runner.measure(lambda: calls.append(1), warmup=3, min_time=0.05, min_runs=7)
    assert stats["n"] >= 7 and len(calls) == stats["n"] + 3
    assert sum(stats["samples_ms"]) <= 50 + 5 or stats["n"] > 7
    few = runner.measure(lambda: None, warmup=0, min_time=0.0, min_runs=5)
    assert few["n"] == 5


def test_measure_respects_min_time_with_slow_calls():
    import time
    stats = runner.measure(lambda: time.sleep(0.01), warmup=0, min_time=0.1, min_runs=2)
    assert stats["n"] >= 9  # 0.1 s of 10 ms calls, not stopped at min_runs
    assert 9.5 <= stats["p50"] <= 40 and stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def test_measure_stops_at_max_runs():
    stats = runner.measure(lambda: None, warmup=0, min_time=10.0, min_runs=1, max_runs=50)
    assert stats["n"] == 50


def test_summarize_percentiles_are_in_milliseconds():
    s = runner.summarize([0.001] * 98 + [0.010, 0.020])
    assert s["p50"] == pytest.approx(1.0) and s["n"] == 100
    assert s["p99"] > 9.0 and s["max"] == pytest.approx(20.0)
    assert s["mean"] == pytest.approx((98 + 30) / 100)


# --- the standalone CLI, copied alone to a device ------------------------------------------

def test_runner_file_runs_alone_with_no_optkit_and_prints_bench_json(tiny, tmp_path):
    """Copied to an empty dir and run with `python runner.py`: no optkit package on the path."""
    import shutil
    lone = tmp_path / "device"
    lone.mkdir()
    shutil.copy(runner.__file__, str(lone / "runner.py"))
    args = [tiny["tflite"], "--threads", "1", "--batch", "2", "--warmup", "2",
            "--min-time", "0.05", "--min-runs", "5", "--json"]
    # Block optkit and tensorflow outright: the runner must need neither.
    code = ("import sys; sys.modules['optkit'] = None; sys.modules['tensorflow'] = None; "
            "sys.argv = %r; exec(compile(open('runner.py').read(), 'runner.py', 'exec'), "
            "{'__name__': '__main__'})" % (["runner.py"] + args))
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(lone),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["runtime"] == "litert" and result["threads"] == 1 and result["batch"] == 2
    lat = result["latency_ms"]
    assert lat["n"] >= 5 and len(result["samples_ms"]) == lat["n"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert result["load_ms"] > 0 and result["cold_ms"] > 0 and result["peak_rss_mb"] > 0
    assert result["size_bytes"] > result["gzip_bytes"] > 0
    assert result["env"]["python"] and result["env"]["cores"] >= 1
    assert result["inputs"][0]["shape"] == [None, 8, 8, 3] and result["inputs"][0]["dtype"] == "float32"


def test_runner_cli_reports_a_bad_file_on_one_line_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, runner.__file__, str(tmp_path / "nope.onnx"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "runner: error: no such model file: %s" % (tmp_path / "nope.onnx")
    assert proc.stdout == ""


def test_runner_module_needs_no_more_than_python38():
    """Devices (Jetson images) ship Python 3.8: the grammar AND the stdlib/builtins it uses
    (vermin checks both: e.g. str.removeprefix or dict | dict would be 3.9)."""
    import ast
    src = open(runner.__file__).read()
    ast.parse(src, feature_version=(3, 8))
    assert "import optkit" not in src and "from optkit" not in src
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vermin"), "-t=3.8-", "--no-tips", "--violations",
                           "--eval-annotations", runner.__file__], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
