"""The Keras-flavour boundary: loading every file kind users hold, and Keras 3 <-> tf_keras
round trips with outputs equal to float rounding (1e-5: both flavours run the same TF kernels on
the same weights, so anything larger means a layer was rebuilt differently)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from optkit import keras_io, zoo
from optkit.errors import UserError
from tests.legacy_models import legacy_sequential_h5, tiny_tf_keras_sequential

ATOL = 1e-5

# Builds that take more than a few seconds on 2 cores run with the slow tests.
HEAVY = {"resnet50", "inception_v3", "xception", "densenet121", "nasnet_mobile", "convnext_tiny",
         "vgg16", "alexnet", "efficientnet_b0", "deeplabv3_plus", "mobilenet_v3_large"}


def _small_shape(entry):
    size = max(entry.min_size, 32)
    if entry.size_multiple > 1:
        size = -(-size // entry.size_multiple) * entry.size_multiple
    return (size, size, entry.default_input_shape[2])


def _zoo_params():
    for entry in zoo.list_models():
        marks = [pytest.mark.slow] if entry.name in HEAVY else []
        yield pytest.param(entry, id=entry.name, marks=marks)


@pytest.mark.parametrize("entry", list(_zoo_params()))
def test_zoo_model_round_trips_keras3_tf_keras_keras3(entry):
    model = zoo.build(entry.name, input_shape=_small_shape(entry), num_classes=5)
    x = np.random.default_rng(0).random((2,) + tuple(model.input_shape[1:]), dtype=np.float32)
    reference = keras_io.predict(model, x)

    twin = keras_io.to_tf_keras(model)
    assert keras_io.flavour_of(twin) == "tf_keras"
    assert twin.count_params() == model.count_params()
    np.testing.assert_allclose(keras_io.predict(twin, x), reference, atol=ATOL, rtol=0)

    back = keras_io.to_keras3(twin)
    assert keras_io.flavour_of(back) == "keras3"
    assert back.count_params() == model.count_params()
    np.testing.assert_allclose(keras_io.predict(back, x), reference, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def k3_model():
    keras = keras_io.keras3()
    inp = keras.Input((10, 10, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = keras.layers.BatchNormalization()(x)
    x = keras.layers.Add()([x, y])
    x = x * 0.5 + 1.0           # bare Keras 3 operations, rebuilt as Rescaling in tf_keras
    x = keras.layers.Activation("hard_silu")(x)   # an activation tf_keras lacks
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inp, out)


def test_conversion_does_not_touch_the_source_model(k3_model):
    before = [w.copy() for w in k3_model.get_weights()]
    twin = keras_io.to_tf_keras(k3_model)
    twin.layers[1].set_weights([w * 0 for w in twin.layers[1].get_weights()])
    for a, b in zip(before, k3_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_operations_and_keras3_only_activations_convert(k3_model):
    x = np.random.default_rng(1).random((3, 10, 10, 3), dtype=np.float32)
    twin = keras_io.to_tf_keras(k3_model)
    np.testing.assert_allclose(keras_io.predict(twin, x), keras_io.predict(k3_model, x), atol=ATOL)
    back = keras_io.to_keras3(twin)
    np.testing.assert_allclose(keras_io.predict(back, x), keras_io.predict(k3_model, x), atol=ATOL)


def test_keras3_keras_file_loads_as_keras3(tmp_path, k3_model):
    path = tmp_path / "m.keras"
    k3_model.save(path)
    loaded = keras_io.load(path)
    assert loaded.flavour == "keras3"
    assert loaded.model.count_params() == k3_model.count_params()


def test_tf_keras_keras_and_h5_files_load_as_tf_keras(tmp_path):
    tfk = keras_io.tf_keras()
    model = tiny_tf_keras_sequential(tfk)
    for name in ("m.keras", "m.h5"):
        model.save(tmp_path / name)
        loaded = keras_io.load(tmp_path / name)
        assert loaded.flavour == "tf_keras", name
        assert loaded.model.count_params() == model.count_params()


def test_legacy_sequential_h5_without_input_layer_loads_with_its_weights(tmp_path):
    tfk = keras_io.tf_keras()
    path = tmp_path / "legacy.h5"
    original = legacy_sequential_h5(tfk, path)
    loaded = keras_io.load(path)
    assert loaded.flavour == "tf_keras"
    x = np.random.default_rng(2).random((2, 12, 12, 3), dtype=np.float32)
    np.testing.assert_allclose(keras_io.predict(loaded.model, x), keras_io.predict(original, x), atol=ATOL)
    # ... and the user gets it back as Keras 3
    back = keras_io.to_keras3(loaded.model)
    np.testing.assert_allclose(keras_io.predict(back, x), keras_io.predict(original, x), atol=ATOL)


def test_saved_model_directories_load(tmp_path, k3_model):
    x = np.random.default_rng(3).random((2, 10, 10, 3), dtype=np.float32)
    keras_io.save(k3_model, tmp_path / "k3_export")            # Keras 3 export(): inference only
    loaded = keras_io.load(tmp_path / "k3_export")
    assert loaded.flavour == "saved_model"
    assert loaded.model.count_params() == k3_model.count_params()
    np.testing.assert_allclose(keras_io.predict(loaded.model, x), keras_io.predict(k3_model, x), atol=ATOL)

    tfk_model = tiny_tf_keras_sequential(keras_io.tf_keras())
    keras_io.save(tfk_model, tmp_path / "tfk_sm")              # tf_keras SavedModel: a Keras model again
    loaded = keras_io.load(tmp_path / "tfk_sm")
    assert loaded.flavour == "tf_keras"
    assert loaded.model.count_params() == tfk_model.count_params()


def test_saving_a_tf_keras_model_as_keras_gives_plain_keras3(tmp_path):
    model = tiny_tf_keras_sequential(keras_io.tf_keras())
    path = keras_io.save(model, tmp_path / "out.keras")
    keras = keras_io.keras3()
    plain = keras.saving.load_model(path)       # plain Keras 3, no optkit
    assert plain.count_params() == model.count_params()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory):
    keras = keras_io.keras3()
    path = tmp_path_factory.mktemp("lambda") / "lambda.keras"
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp))
    model.save(path)
    return path


def test_lambda_model_is_refused_unless_unsafe(lambda_file):
    with pytest.raises(UserError, match="Lambda layer .*double"):
        keras_io.load(lambda_file)
    assert keras_io.load(lambda_file, unsafe=True).flavour == "keras3"


def test_lambda_in_legacy_h5_is_refused_too(tmp_path):
    tfk = keras_io.tf_keras()
    inp = tfk.Input((4,))
    model = tfk.Model(inp, tfk.layers.Lambda(lambda t: t * 2.0, name="double")(inp))
    model.save(tmp_path / "l.h5")
    with pytest.raises(UserError, match="Lambda"):
        keras_io.load(tmp_path / "l.h5")


@pytest.mark.parametrize("content,expected", [
    (b"", "empty"),
    (b"hello, not a model", "not a Keras model"),
    (b"PK\x03\x04truncated", "truncated or corrupt"),
    (b"\x89HDF\r\n\x1a\n\x00\x00", "truncated or corrupt HDF5"),
])
def test_bad_files_are_one_line_user_errors(tmp_path, content, expected):
    path = tmp_path / "bad.keras"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        keras_io.load(path)


def test_truncated_real_keras_file_is_a_user_error(tmp_path, k3_model):
    good = tmp_path / "good.keras"
    k3_model.save(good)
    bad = tmp_path / "cut.keras"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        keras_io.load(bad)


def test_missing_file_and_weights_only_file(tmp_path, k3_model):
    with pytest.raises(UserError, match="no such file"):
        keras_io.load(tmp_path / "nope.keras")
    weights = tmp_path / "w.weights.h5"
    k3_model.save_weights(weights)
    with pytest.raises(UserError, match="weights-only"):
        keras_io.load(weights)


def test_tfmot_import_leaves_environment_as_it_was():
    code = ("import os; from optkit import keras_io; keras_io.tfmot(); "
            "print(os.environ.get('TF_USE_LEGACY_KERAS'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "None"


def test_tf_start_up_noise_is_held_back_from_stderr():
    out = subprocess.run([sys.executable, "-c", "from optkit import keras_io; keras_io.tf()"],
                         capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "OPTKIT_DEBUG"})
    assert "absl" not in out.stderr and "cuda" not in out.stderr.lower()
