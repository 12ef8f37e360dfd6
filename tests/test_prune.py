"""`prune` step: target sparsity reached per layer, layer selection, structured 2:4, Keras 3 in and out."""
import numpy as np
import pytest

from optkit import compression, keras_io, steps
from optkit.errors import UserError

from test_compression_helpers import base, data, context, nested_cnn, quadrant_task, small_cnn, trained_cnn  # noqa: F401 (fixtures)

# tfmot rounds the number of weights it prunes per tensor; the bar is +-1 point.
SPARSITY_TOL = 0.01




def prune(model, data, **options):
    step = steps.get("prune")
    return step.apply(model, context(data), **step.parse_options(options))


@pytest.mark.parametrize("schedule", ["polynomial", "constant"])
def test_target_sparsity_is_reached_in_every_pruned_layer(base, data, schedule):
    # The base was trained at lr 3e-3; fine-tuning a 4k-weight model at 75% needs the same pace.
    result = prune(base, data, sparsity="0.75", schedule=schedule, lr="3e-3")
    info = result.info
    assert info["pruned_layers"] == ["stem", "body", "head"]
    measured = compression.sparsity_per_layer(result.model)
    for name in info["pruned_layers"]:
        assert measured[name] == pytest.approx(0.75, abs=SPARSITY_TOL), name
    assert info["target_reached"] is True
    assert info["sparsity_per_layer"] == measured
    # The frequency is derived from the fine-tune length, never the tfmot default of 100.
    assert info["frequency"] <= info["fine_tune"]["steps"]
    # Zeros compress: same raw bytes, much smaller gzip.
    assert info["size_after"]["bytes"] == info["size_before"]["bytes"]
    assert info["size_after"]["gzip_bytes"] < 0.6 * info["size_before"]["gzip_bytes"]
    # The fine-tune recovers the easy task.
    assert info["accuracy_before"] >= 0.9
    assert info["accuracy_after"] >= info["accuracy_before"] - 0.05


def test_the_input_model_is_left_untouched(base, data):
    before = [w.copy() for w in base.get_weights()]
    prune(base, data, sparsity="0.5", schedule="constant")
    after = base.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert compression.overall_sparsity(base) == 0.0


def test_result_is_a_plain_model_without_pruning_wrappers(base, data):
    result = prune(base, data, sparsity="0.5")
    assert keras_io.flavour_of(result.model) == "tf_keras"
    assert not any("prune" in type(l).__name__.lower() for l in result.model.layers)


def test_skip_first_and_last_leave_stem_and_head_dense(base, data):
    result = prune(base, data, sparsity="0.6", skip_first="true", skip_last="true")
    measured = compression.sparsity_per_layer(result.model)
    assert result.info["pruned_layers"] == ["body"]
    assert measured["stem"] == 0.0 and measured["head"] == 0.0
    assert measured["body"] == pytest.approx(0.6, abs=SPARSITY_TOL)


def test_two_four_structure_zeroes_two_of_every_four_weights(base, data):
    result = prune(base, data, m_by_n="2:4", layers="body+head")
    assert result.info["pruned_layers"] == ["body", "head"]
    for name in ("body", "head"):
        kernel = result.model.get_layer(name).kernel.numpy()
        # tfmot groups 4 consecutive weights along the input-channel axis (the one a matmul
        # reduces over), which is what 2:4 sparse tensor cores and kernels consume.
        cin_last = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
        zeros_per_group = (cin_last == 0).sum(axis=1)
        assert (zeros_per_group >= 2).all(), name
        assert compression.sparsity_per_layer(result.model)[name] == pytest.approx(0.5, abs=SPARSITY_TOL)


def test_bad_m_by_n_is_a_user_error(base, data):
    with pytest.raises(UserError, match="M:N"):
        prune(base, data, m_by_n="2-4")


def test_keras3_input_comes_back_as_a_keras3_file(data, tmp_path):
    import keras

    model = trained_cnn(data, "keras3", epochs=2)
    result = prune(model, data, sparsity="0.5", schedule="constant")
    path = keras_io.save(result.model, str(tmp_path / "pruned.keras"))
    loaded = keras.saving.load_model(path)          # plain Keras 3, no optkit involved
    assert type(loaded).__module__.startswith("keras")
    kernel = loaded.get_layer("body").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=SPARSITY_TOL)
    x = data.x_test[:16]
    np.testing.assert_allclose(keras_io.predict(loaded, x), keras_io.predict(result.model, x), atol=1e-5)


def test_a_layer_tfmot_cannot_prune_is_named_or_skipped_on_request(data):
    K = keras_io.tf_keras()

    class Mixer(K.layers.Layer):      # a custom layer with a weight matrix, unknown to tfmot
        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1], shape[-1]))

        def call(self, x):
            return x @ self.w

    def extra(K_, h):
        return Mixer(name="mixer")(h)

    model = small_cnn("tf_keras", extra=extra)
    with pytest.raises(UserError, match="cannot handle layer 'mixer' \\(Mixer\\).*skip_unsupported=true"):
        prune(model, data, sparsity="0.5")
    result = prune(model, data, sparsity="0.5", skip_unsupported="true")
    assert result.info["skipped_layers"] == ["mixer"]
    assert "mixer" not in result.info["pruned_layers"]


def test_pruning_without_training_data_is_a_user_error(base):
    step = steps.get("prune")
    with pytest.raises(UserError, match="needs training data"):
        step.apply(base, context(None), **step.parse_options({}))


def test_info_says_how_the_tflite_export_can_use_the_zeros(base, data):
    info = prune(base, data, sparsity="0.75", schedule="constant").info
    assert info["tflite"]["converter_optimizations"] == ["EXPERIMENTAL_SPARSITY"]
    assert info["tflite"]["sparsity"] == pytest.approx(0.75, abs=SPARSITY_TOL)


def _xnnpack_shaped_cnn():
    """The structure XNNPACK sparse inference needs: ZeroPadding + 3x3 stride-2 VALID stem on 3
    channels, then depthwise / 1x1 convolutions."""
    K = keras_io.tf_keras()
    K.utils.set_random_seed(0)
    inp = K.Input((16, 16, 3))
    h = K.layers.ZeroPadding2D(1)(inp)
    h = K.layers.Conv2D(16, 3, strides=2, padding="valid", activation="relu", name="stem")(h)
    h = K.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = K.layers.Conv2D(32, 1, activation="relu", name="pw")(h)
    h = K.layers.GlobalAveragePooling2D(keepdims=True)(h)
    h = K.layers.Flatten()(h)
    return K.Model(inp, K.layers.Dense(4, name="head")(h))


def test_xnnpack_policy_prunes_only_the_1x1_convolutions(data):
    result = prune(_xnnpack_shaped_cnn(), data, sparsity="0.75", policy="xnnpack")
    measured = compression.sparsity_per_layer(result.model)
    assert result.info["pruned_layers"] == ["pw"]
    assert measured["pw"] == pytest.approx(0.75, abs=SPARSITY_TOL)
    assert measured["stem"] == measured["dw"] == measured["head"] == 0.0


def test_xnnpack_policy_explains_why_a_model_does_not_fit(base, data):
    with pytest.raises(UserError, match="policy=xnnpack does not apply to this model: .*Conv2D 3x3"):
        prune(base, data, policy="xnnpack")


def test_a_nested_backbone_is_pruned_layer_by_layer(data):
    result = prune(nested_cnn("keras3"), data, sparsity="0.5", schedule="constant")
    assert result.info["pruned_layers"] == ["backbone", "head"]
    measured = compression.sparsity_per_layer(result.model)
    for name in ("c1", "c2", "head"):
        assert measured[name] == pytest.approx(0.5, abs=SPARSITY_TOL), name
