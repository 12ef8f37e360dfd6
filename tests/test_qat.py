"""`qat` step: QAT, PQAT, CQAT and PCQAT models convert to full-integer TFLite, run in LiteRT and
match their own fake-quant Keras model; earlier sparsity / clustering survives into the int8 weights."""
import numpy as np
import pytest

import exporters
from optkit import keras_io, runner, steps
from optkit.errors import UserError

from test_compression_helpers import base, data, context, nested_cnn, quadrant_task, small_cnn, trained_cnn  # noqa: F401 (fixtures)
from test_compression_helpers import run_step as run

# A full-integer model differs from its fake-quant Keras twin by rounding: each int8 step of
# the output is `scale` wide, and a few steps of disagreement accumulate through 3 layers.
# STACK.md measured 0.05-0.10 max |diff| on logits of this size; 4 output steps covers it.
OUTPUT_STEPS = 4
TOP1_AGREEMENT = 0.9




def to_int8_tflite(model, data, path):
    details = exporters.get("tflite").export(model, str(path), quantize="int8", data=data)
    return details, runner.load_predictor(str(path))


def assert_litert_matches_keras(model, data, path):
    """The int8 model runs in LiteRT and computes what its fake-quant Keras model computes."""
    details, predictor = to_int8_tflite(model, data, path)
    assert [t["dtype"] for t in details["inputs"]] == ["int8"]
    assert [t["dtype"] for t in details["outputs"]] == ["int8"]
    x = data.x_test[:128]
    got = np.concatenate([predictor(x[i:i + 1])[0] for i in range(len(x))])
    want = keras_io.predict(model, x)
    scale = details["outputs"][0]["quantization"][0]
    assert np.abs(got - want).max() <= OUTPUT_STEPS * scale + 1e-6
    assert np.mean(got.argmax(1) == want.argmax(1)) >= TOP1_AGREEMENT
    assert np.mean(got.argmax(1) == data.y_test[:128]) >= 0.85
    return details


def int8_kernel(path, layer):
    """The int8 weight tensor of a conv/dense layer, as LiteRT holds it."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    for t in interp.get_tensor_details():
        if layer in t["name"] and t["dtype"] == np.int8 and len(t["shape"]) >= 2 and "Relu" not in t["name"]:
            try:
                return interp.get_tensor(t["index"])
            except ValueError:
                continue
    raise AssertionError(f"no int8 weights for {layer}")


def test_qat_model_converts_to_int8_and_matches_in_litert(base, data, tmp_path):
    result = run("qat", base, data)
    info = result.info
    assert info["scheme"] == "qat"
    assert info["quantized_layers"] and not info["left_float"]
    assert info["accuracy_after"] >= info["accuracy_before"] - 0.05
    assert info["tflite_int8"]["inputs"][0]["dtype"] == "int8"
    assert info["tflite_int8"]["int8_tensors"] > 0
    # int8 weights: the converted file is about a quarter of the float weights.
    assert info["tflite_int8"]["bytes"] < info["size_before"]["bytes"] / 2
    assert_litert_matches_keras(result.model, data, tmp_path / "qat.tflite")


def test_qat_parameter_count_is_the_models_weights_not_its_quantizers(base, data):
    from optkit.compression import parameter_count

    result = run("qat", base, data)
    assert parameter_count(base) == base.count_params()
    # The fake-quant model holds extra min/max ranges and step counters; they are not parameters.
    assert result.model.count_params() > base.count_params()
    assert parameter_count(result.model) == base.count_params()


def test_qat_result_says_it_has_no_keras3_form(base, data):
    result = run("qat", base, data, convert="false")
    assert "no Keras 3 form" in result.info["model"]
    assert result.export_only == "tflite:int8"
    with pytest.raises(UserError, match="still wrapped"):
        keras_io.to_keras3(result.model)


@pytest.mark.slow
def test_pqat_keeps_the_zeros_in_the_int8_weights(base, data, tmp_path):
    pruned = run("prune", base, data, epochs=2, sparsity="0.7", schedule="constant", lr="3e-3").model
    result = run("qat", pruned, data, history=["prune"])
    assert result.info["scheme"] == "pqat"
    assert result.info["sparsity_per_layer"]["body"] >= 0.69
    path = tmp_path / "pqat.tflite"
    assert_litert_matches_keras(result.model, data, path)
    kernel = int8_kernel(path, "body")
    assert np.mean(kernel == 0) >= 0.69


@pytest.mark.slow
def test_cqat_keeps_at_most_k_values_per_channel_in_int8(base, data, tmp_path):
    clustered = run("cluster", base, data, clusters="8").model
    # No history: the step must see the clustering in the weights.
    result = run("qat", clustered, data)
    assert result.info["scheme"] == "cqat"
    assert result.info["history"]["source"] == "weights"
    path = tmp_path / "cqat.tflite"
    assert_litert_matches_keras(result.model, data, path)
    kernel = int8_kernel(path, "body")            # TFLite conv weights: (out, h, w, in)
    per_channel = [np.unique(kernel[c]).size for c in range(kernel.shape[0])]
    assert max(per_channel) <= 8


@pytest.mark.slow
def test_pcqat_keeps_zeros_and_clusters_through_int8(base, data, tmp_path):
    pruned = run("prune", base, data, epochs=2, sparsity="0.6", schedule="constant", lr="3e-3").model
    clustered = run("cluster", pruned, data, history=["prune"], clusters="8").model
    result = run("qat", clustered, data, history=["prune", "cluster"])
    assert result.info["scheme"] == "pcqat"
    path = tmp_path / "pcqat.tflite"
    assert_litert_matches_keras(result.model, data, path)
    kernel = int8_kernel(path, "body")
    assert np.mean(kernel == 0) >= 0.59
    assert max(np.unique(kernel[c]).size for c in range(kernel.shape[0])) <= 8 + 1   # + the zero


@pytest.mark.slow
def test_keras3_model_gets_quantization_aware_training(data, tmp_path):
    model = trained_cnn(data, "keras3", epochs=3)
    result = run("qat", model, data, convert="false")
    assert keras_io.flavour_of(result.model) == "tf_keras"
    assert_litert_matches_keras(result.model, data, tmp_path / "k3.tflite")


def test_a_weighted_layer_tfmot_cannot_quantize_is_named_or_left_float(data):
    K = keras_io.tf_keras()

    class Mixer(K.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1], shape[-1]))

        def call(self, x):
            return x @ self.w

    model = small_cnn("tf_keras", extra=lambda K_, h: Mixer(name="mixer")(h))
    with pytest.raises(UserError, match="cannot quantize layer 'mixer' \\(Mixer\\).*skip_unsupported=true"):
        run("qat", model, data, convert="false")
    result = run("qat", model, data, skip_unsupported="true", convert="false")
    assert "mixer" in result.info["left_float"]
    assert "body" in result.info["quantized_layers"]


def test_weightless_preprocessing_stays_float_without_failing(data, tmp_path):
    K = keras_io.tf_keras()
    inp = K.Input((16, 16, 3))
    h = K.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inp)
    h = K.layers.Conv2D(8, 3, activation="relu", name="body")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    model = K.Model(inp, K.layers.Dense(4, name="head")(h))
    from optkit.train import fit

    fit(model, data, epochs=3, batch_size=32, learning_rate=3e-3, progress=False)
    result = run("qat", model, data)
    assert result.info["left_float"] == ["rescale"]
    assert result.info["tflite_int8"]["inputs"][0]["dtype"] == "int8"


def test_unknown_scheme_is_a_user_error(base, data):
    with pytest.raises(UserError, match="scheme must be one of"):
        run("qat", base, data, scheme="int4")


def test_a_nested_model_is_refused_with_its_name(data):
    with pytest.raises(UserError, match="nested inside another \\(layer 'backbone'\\)"):
        run("qat", nested_cnn("keras3"), data, convert="false")


def test_an_activation_tfmot_cannot_quantize_stays_float(data):
    """MobileNetV3's hard_silu: tfmot's registry takes Activation layers but rejects this function."""
    K = keras_io.keras3()
    K.utils.set_random_seed(0)
    inp = K.Input((16, 16, 3))
    h = K.layers.Conv2D(8, 3, name="body")(inp)
    h = K.layers.Activation("hard_silu", name="hswish")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    model = K.Model(inp, K.layers.Dense(4, name="head")(h))
    result = run("qat", model, data)
    assert result.info["left_float"] == ["hswish"]
    assert "body" in result.info["quantized_layers"] and "hswish" not in result.info["quantized_layers"]
    assert result.info["tflite_int8"]["inputs"][0]["dtype"] == "int8"
