"""Every registered format, exported from real Keras models and run back through its runtime,
against the live Keras model as the oracle (no stored tensors)."""
import json
import os
import platform

import numpy as np
import pytest

import exporters
from optkit import keras_io
from optkit.export import artifact_path, export_model, export_one, validate_artifact


def validated(art) -> bool:
    """`ok`, or `unverified` exactly where this machine cannot prove the artifact: Core ML off
    macOS, and a quantized artifact checked on random inputs only (no --data)."""
    cannot = (art.format == "coreml" and platform.system() != "Darwin") or \
        (art.quantize != "none" and art.parity is not None and art.parity.inputs == "random")
    return art.status == ("unverified" if cannot else "ok") and art.parity is not None and art.parity.ok is not False

FORMATS = sorted(exporters.registry())
INPUT = (16, 16, 3)


def _keras3_sequential():
    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(INPUT, name="image"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        # A wide final layer spreads the logits so arg-max is decisive on random inputs, as it
        # is for a trained classifier; an untrained net's near-ties would make top-1 noise.
        keras.layers.Dense(10, activation="softmax",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1)),
    ], name="seq")


def _keras3_residual():
    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input(INPUT, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    # Flatten, not global pooling: averaging random-noise images gives every input the same
    # features, and the oracle would predict one class for everything.
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    outputs = keras.layers.Dense(10, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1))(x)
    return keras.Model(inputs, outputs, name="residual")


def _tf_keras_sequential():
    tfk = keras_io.tf_keras()
    tfk.utils.set_random_seed(0)
    return tfk.Sequential([
        tfk.Input(INPUT, name="image"),
        tfk.layers.Conv2D(8, 3, activation="relu"),
        tfk.layers.Flatten(),
        tfk.layers.Dense(10, activation="softmax",
                         kernel_initializer=tfk.initializers.RandomNormal(stddev=0.3, seed=1)),
    ], name="tfk_seq")


def _two_outputs(kmod):
    """Two heads of different widths: a runtime that returns outputs out of order fails on shape."""
    kmod.utils.set_random_seed(0)
    inputs = kmod.Input(INPUT, name="image")
    x = kmod.layers.Conv2D(8, 3, activation="relu")(inputs)
    # Layer names sort opposite to the output order, so name-sorted outputs would be wrong too.
    probs = kmod.layers.Dense(10, activation="softmax", name="z_probs",
                              kernel_initializer=kmod.initializers.RandomNormal(stddev=0.3, seed=1))(
        kmod.layers.Flatten()(x))
    box = kmod.layers.Dense(4, name="a_box")(kmod.layers.GlobalAveragePooling2D()(x))
    return kmod.Model(inputs, [probs, box], name="two_outputs")


MODELS = {"sequential": _keras3_sequential, "residual": _keras3_residual, "tf_keras": _tf_keras_sequential,
          "two_outputs": lambda: _two_outputs(keras_io.keras3()),
          "tf_keras_two_outputs": lambda: _two_outputs(keras_io.tf_keras())}


def _assert_decisive(model):
    """Guard against a vacuous oracle: an untrained deep net can output the same probabilities
    for every input (MobileNetV2's logits collapse to ~1e-11), and then every artifact "matches"."""
    x = np.random.default_rng(7).uniform(size=(32,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)
    out = keras_io.predict(model, x)
    probs = out[0] if isinstance(out, list) else out
    assert probs.max(-1).mean() > 0.15, "model outputs are near-uniform: a useless oracle"
    assert len(set(probs.argmax(-1).tolist())) >= 2, "model predicts one class for every input"


@pytest.fixture(scope="module")
def models():
    built = {name: build() for name, build in MODELS.items()}
    for model in built.values():
        _assert_decisive(model)
    return built


def _expect_ok(art):
    """The status each format must reach on this machine, with its own reason when it cannot run."""
    module = exporters.get(art.format)
    ok, reason = module.available()
    if not ok:
        assert art.status == "skipped" and art.reason == reason
        return False
    assert validated(art), art.reason
    assert os.path.exists(art.path) and art.size_bytes > 0 and 0 < art.gzip_bytes
    if art.format == "coreml" and platform.system() != "Darwin":
        assert art.parity.ok is None and art.parity.reason.startswith("unverified: needs macOS")
        return False
    assert art.parity.ok is True
    return True


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_float_export_round_trips_within_float32_tolerance(models, tmp_path, fmt, model_name):
    model = models[model_name]
    (art,) = export_model(model, fmt, tmp_path)
    if _expect_ok(art):
        assert art.parity.max_abs <= 1e-4
        assert art.parity.top1_agreement >= 0.97
        # The batch dim stayed dynamic: validated at all 32 samples and again one at a time.
        assert art.parity.batch_sizes == [32, 1]


def _two_inputs(kmod):
    """Inputs whose names sort opposite to their order: runtimes that key inputs by name must
    still feed each array to the right one (and different shapes make a swap fail loudly)."""
    kmod.utils.set_random_seed(0)
    image = kmod.Input(INPUT, name="z_image")
    meta = kmod.Input((4,), name="a_meta")
    x = kmod.layers.Flatten()(kmod.layers.Conv2D(4, 3, activation="relu")(image))
    y = kmod.layers.Dense(8, activation="relu")(meta)
    out = kmod.layers.Dense(10, activation="softmax")(kmod.layers.Concatenate()([x, y]))
    return kmod.Model([image, meta], out, name="two_inputs")


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_multi_input_models_keep_their_input_order(tmp_path, flavour):
    kmod = keras_io.keras_module(flavour)
    model = _two_inputs(kmod)
    formats = [f for f in FORMATS if f != "tensorrt"]
    for art in export_model(model, formats, tmp_path):
        _expect_ok(art)
    predictor = exporters.get("saved_model").load(artifact_path(str(tmp_path), "two_inputs",
                                                                exporters.get("saved_model"), "none"))
    assert [s.name for s in predictor.inputs] == ["z_image", "a_meta"]


def test_int8_tflite_has_int8_tensors_and_validates(models, tmp_path):
    (art,) = export_model(models["sequential"], "tflite", tmp_path, quantize="int8")
    assert validated(art), art.reason
    d = art.details
    assert d["inputs"][0]["dtype"] == "int8" and d["outputs"][0]["dtype"] == "int8"
    scale, zero_point = d["inputs"][0]["quantization"]
    # [0, 1] inputs on 256 levels: scale 1/255, zero point at -128.
    assert scale == pytest.approx(1 / 255, rel=1e-3) and zero_point == -128
    assert d["int8_tensors"] >= 6
    assert "random uniform" in d["calibration_source"]
    assert art.parity.max_abs <= 0.35 and art.parity.top1_agreement >= 0.8
    # int8 is smaller than float32 (weights are a quarter of the size).
    (float_art,) = export_model(models["sequential"], "tflite", tmp_path)
    assert art.size_bytes < 0.6 * float_art.size_bytes


def test_int8_tflite_with_float_io_keeps_float32_interface(models, tmp_path):
    (art,) = export_model(models["residual"], "tflite", tmp_path, quantize="int8",
                          options={"tflite": {"int8_io": False}})
    assert validated(art), art.reason
    assert art.details["inputs"][0]["dtype"] == "float32"
    assert art.details["int8_tensors"] > 0


def test_int8_calibrates_on_given_data(models, tmp_path):
    rng = np.random.default_rng(3)
    data = rng.uniform(0.2, 0.8, size=(40,) + INPUT).astype(np.float32)
    (art,) = export_model(models["sequential"], "tflite", tmp_path, quantize="int8", data=data)
    assert validated(art), art.reason
    assert art.details["calibration_source"] == "data (40 samples)"
    assert art.details["validation_source"] == "data (32 samples)"


@pytest.mark.parametrize("quantize", ["dynamic", "float16"])
def test_tflite_reduced_precisions_validate(models, tmp_path, quantize):
    (art,) = export_model(models["residual"], "tflite", tmp_path, quantize=quantize)
    assert validated(art), art.reason
    assert 0 < art.parity.max_abs <= {"dynamic": 0.2, "float16": 0.05}[quantize]


def test_tflite_reports_ops_and_xnnpack(models, tmp_path):
    (art,) = export_model(models["residual"], "tflite", tmp_path)
    assert {"CONV_2D", "ADD", "FULLY_CONNECTED", "SOFTMAX"} <= set(art.details["ops"])
    assert art.details["xnnpack"]["applied"] is True and art.details["xnnpack"]["partitions"] >= 1


@pytest.mark.parametrize("quantize", ["dynamic", "int8", "float16"])
def test_onnx_quantized_exports_validate(models, tmp_path, quantize):
    (art,) = export_model(models["sequential"], "onnx", tmp_path, quantize=quantize)
    assert validated(art), art.reason
    if quantize == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(art.details["ops"])
        assert art.details["reduce_range"] is True and art.details["quant_format"] == "QDQ"
    if quantize == "dynamic":
        assert art.details["int8_initializers"] > 0
    assert art.details["outputs"] == ["output_0"]


def test_onnx_opset_option_is_used(models, tmp_path):
    (art,) = export_model(models["sequential"], "onnx", tmp_path, options={"onnx": {"opset": 13}})
    assert validated(art), art.reason
    assert art.details["opsets"]["ai.onnx"] == 13


def test_unknown_converter_option_is_rejected_before_any_conversion(models, tmp_path):
    from optkit.errors import UserError

    with pytest.raises(UserError, match="unknown option"):
        export_model(models["sequential"], "tflite,onnx", tmp_path, options={"onnx": {"opset_version": 13}})
    assert list(tmp_path.iterdir()) == []   # tflite was not written either


def test_validation_catches_an_artifact_of_a_different_model(models, tmp_path):
    """A wrong artifact (here: the residual model's) must fail against the sequential model."""
    module = exporters.get("onnx")
    path = artifact_path(str(tmp_path), "residual", module, "none")
    module.export(models["residual"], path)
    x = np.random.default_rng(0).uniform(size=(32,) + INPUT).astype(np.float32)
    parity = validate_artifact(module, path, lambda xs: [keras_io.predict(models["sequential"], xs[0])], [x], "none")
    assert parity.ok is False and "[values]" in parity.reason


def test_an_artifact_that_cannot_run_fails_validation(models, tmp_path):
    module = exporters.get("onnx")
    path = artifact_path(str(tmp_path), "seq", module, "none")
    module.export(models["sequential"], path)
    wrong = np.zeros((4, 8, 8, 3), np.float32)    # the model takes 16x16 images
    parity = validate_artifact(module, path, lambda xs: [np.zeros((4, 10), np.float32)], [wrong], "none")
    assert parity.ok is False and parity.reason.startswith("artifact failed to run at batch 4")


def test_unsupported_precision_is_skipped_with_reason(models, tmp_path):
    art = export_one(exporters.get("saved_model"), models["sequential"], str(tmp_path / "m"), quantize="int8")
    assert art.status == "skipped" and "no 'int8'" in art.reason and art.path is None


def test_coreml_package_is_checked_structurally(models, tmp_path):
    (art,) = export_model(models["residual"], "coreml", tmp_path)
    assert validated(art), art.reason
    d = art.details
    assert [i["name"] for i in d["inputs"]] == ["image"]
    assert d["inputs"][0]["shape"][1:] == list(INPUT)
    assert d["inputs"][0]["shape_range"][0] == [1, 64]           # flexible batch
    assert [o["name"] for o in d["outputs"]] == ["output_0"]
    assert {"conv", "add", "softmax"} <= set(d["ops"])
    assert d["compute_precision"] == "FLOAT32"


def test_coreml_int8_compresses_weights(models, tmp_path):
    (art,) = export_model(models["residual"], "coreml", tmp_path, quantize="int8",
                          options={"coreml": {"weight_threshold": 64}})
    assert validated(art), art.reason
    assert any(op.startswith("constexpr") for op in art.details["ops"]), art.details["ops"]


def test_coreml_palettize_and_prune_options(models, tmp_path):
    (art,) = export_model(models["residual"], "coreml", tmp_path,
                          options={"coreml": {"palettize_bits": 4, "prune_sparsity": 0.5, "weight_threshold": 64}})
    assert validated(art), art.reason
    assert art.details["palettized_bits"] == 4 and art.details["pruned_sparsity"] == 0.5
    assert any("lut" in op or "sparse" in op for op in art.details["ops"]), art.details["ops"]


@pytest.mark.skipif(platform.system() != "Darwin", reason="needs macOS (Core ML prediction)")
def test_coreml_predicts_like_keras_on_macos(models, tmp_path):
    (art,) = export_model(models["residual"], "coreml", tmp_path)
    assert art.status == "ok" and art.parity.ok is True


def test_saved_model_serves_named_signature(models, tmp_path):
    (art,) = export_model(models["tf_keras"], "saved_model", tmp_path)
    assert validated(art), art.reason
    predictor = exporters.get("saved_model").load(art.path)
    assert [s.name for s in predictor.inputs] == ["image"]
    assert [s.name for s in predictor.outputs] == ["output_0"]


def test_a_saved_model_directory_exports_again(models, tmp_path):
    """A SavedModel that is not a Keras model (keras_io loads it as a callable) still exports."""
    (sm,) = export_model(models["sequential"], "saved_model", tmp_path / "a")
    source = keras_io.load(sm.path)
    assert source.flavour == keras_io.SAVED_MODEL
    artifacts = export_model(source.model, "tflite,onnx,saved_model", tmp_path / "b", stem="again")
    assert [(a.format, a.status) for a in artifacts] == [("tflite", "ok"), ("onnx", "ok"), ("saved_model", "ok")]


def test_keras_artifact_from_tf_keras_loads_in_plain_keras3(models, tmp_path):
    (art,) = export_model(models["tf_keras"], "keras", tmp_path)
    assert validated(art), art.reason
    assert art.details["converted_from_tf_keras"] is True
    keras = keras_io.keras3()
    reloaded = keras.models.load_model(art.path, compile=False)
    x = np.random.default_rng(0).uniform(size=(4,) + INPUT).astype(np.float32)
    np.testing.assert_allclose(reloaded(x).numpy(), keras_io.predict(models["tf_keras"], x), atol=1e-5)


def test_qat_tf_keras_model_converts_to_int8_tflite(tmp_path):
    """The compression steps export quantization-aware tf_keras models through this exporter."""
    tfmot = keras_io.tfmot()
    qat = tfmot.quantization.keras.quantize_model(_tf_keras_sequential())
    assert any("QuantizeWrapper" in type(l).__name__ for l in qat.layers)
    (art,) = export_model(qat, "tflite", tmp_path, quantize="int8")
    assert validated(art), art.reason
    assert art.details["inputs"][0]["dtype"] == "int8"
    assert art.parity.top1_agreement >= 0.8
    # A format that cannot take this model fails on its own row; the others still export.
    keras_art, sm_art = export_model(qat, "keras,saved_model", tmp_path)
    assert keras_art.status == "failed" and "tensorflow-model-optimization" in keras_art.reason
    assert not os.path.exists(artifact_path(str(tmp_path), qat.name, exporters.get("keras"), "none"))
    assert validated(sm_art), sm_art.reason


# -- files users hold: legacy .h5 and Keras 3 .keras, through keras_io.load ------------------


@pytest.mark.parametrize("kind", ["legacy_h5", "keras3_keras"])
def test_model_files_export_to_every_format(models, tmp_path, kind):
    if kind == "legacy_h5":
        path = str(tmp_path / "legacy.h5")
        models["tf_keras"].save(path)
    else:
        path = str(tmp_path / "model.keras")
        models["residual"].save(path)
    loaded = keras_io.load(path)
    artifacts = export_model(loaded.model, FORMATS, tmp_path / "out", stem="m")
    assert [a.format for a in artifacts] == FORMATS
    for art in artifacts:
        _expect_ok(art)


# -- keras.applications MobileNetV2 at a small input ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_mobilenetv2_round_trips(tmp_path, fmt, mobilenet):
    (art,) = export_model(mobilenet, fmt, tmp_path)
    if _expect_ok(art):
        assert art.parity.max_abs <= 1e-4


@pytest.fixture(scope="module")
def mobilenet():
    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    # Fresh BatchNorm statistics (mean 0, variance 1) let activations shrink layer after layer
    # until the logits are ~1e-11 and every input gives 0.1 everywhere. Set each BN's moving
    # statistics to the batch statistics of one training-mode pass (momentum 0), as a short
    # training run would, so the model's outputs depend on its input.
    norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(np.random.default_rng(5).uniform(size=(64, 32, 32, 3)).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    _assert_decisive(model)
    return model


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_file(models, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "net.keras")
    models["sequential"].save(path)
    return path


def test_cli_export_json_lists_validated_artifacts(keras_file, tmp_path):
    from click.testing import CliRunner
    from optkit.cli import cli

    result = CliRunner().invoke(cli, ["export", keras_file, "--to", "tflite,onnx", "--quantize", "int8",
                                      "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    arts = json.loads(result.stdout)["artifacts"]
    # No --data: int8 is checked on random inputs only, which cannot prove it: unverified, never ok.
    assert [(a["format"], a["status"], a["quantize"]) for a in arts] == [("tflite", "unverified", "int8"),
                                                                          ("onnx", "unverified", "int8")]
    for a in arts:
        assert os.path.exists(a["path"]) and a["path"].startswith(str(tmp_path))
        assert os.path.basename(a["path"]).startswith("net_int8.")
        assert a["parity"]["ok"] is None and a["parity"]["inputs"] == "random" and a["parity"]["top1_agreement"] >= 0.8
        assert a["gzip_bytes"] > 0 and set(a) >= {"size_bytes", "reason", "latency_ms", "accuracy"}


def test_cli_data_calibrates_and_validates_int8(keras_file, tmp_path):
    pytest.importorskip("optkit.data", reason="optkit.data (the --data loader) is not in this build yet")
    from click.testing import CliRunner
    from optkit.cli import cli

    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    np.savez(npz, x=rng.uniform(0, 255, size=(60,) + INPUT).astype(np.uint8), y=rng.integers(0, 10, size=60))
    result = CliRunner().invoke(cli, ["export", keras_file, "--to", "tflite", "--quantize", "int8",
                                      "--data", str(npz), "-o", str(tmp_path / "out"), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (art,) = json.loads(result.stdout)["artifacts"]
    assert art["status"] == "ok"
    assert "random" not in art["details"]["calibration_source"]
    assert "random" not in art["details"]["validation_source"]


def test_cli_table_output(keras_file, tmp_path):
    from click.testing import CliRunner
    from optkit.cli import cli

    result = CliRunner().invoke(cli, ["export", keras_file, "--to", "keras", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "keras" in result.stdout and " ok " in result.stdout and "net.keras" in result.stdout


def test_cli_tensorrt_unavailable_exits_nonzero_with_one_clear_line(keras_file, tmp_path):
    from click.testing import CliRunner
    from exporters import tensorrt
    from optkit.cli import cli

    ok, reason = tensorrt.available()
    if ok:
        pytest.skip("this machine can build TensorRT engines")
    result = CliRunner().invoke(cli, ["export", keras_file, "--to", "tensorrt", "-o", str(tmp_path)])
    assert result.exit_code == 1
    lines = [l for l in result.stderr.splitlines() if l.startswith("optkit:")]
    # the input contract is said once, then the one line about TensorRT
    assert lines[0].startswith("optkit: input contract: unit") and lines[1:] == [f"optkit: tensorrt skipped: {reason}"]
    assert not os.path.exists(tmp_path / "net.engine")


def test_cli_rejects_a_precision_the_format_lacks(keras_file, tmp_path, capsys):
    from optkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", keras_file, "--to", "tflite,saved_model", "--quantize", "int8", "-o", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("optkit: error: --quantize int8: saved_model has no 'int8'") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_cli_typo_in_format_suggests_the_right_name(keras_file, tmp_path, capsys):
    from optkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", keras_file, "--to", "onxx", "-o", str(tmp_path)])
    assert info.value.code == 2
    assert "did you mean 'onnx'" in capsys.readouterr().err
