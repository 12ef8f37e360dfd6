"""optkit.compression: layer selection, measurements on weights, and the history that picks the
collaborative QAT scheme. Also holds the tiny task and models the prune/cluster/qat tests share
(imported by them as `test_compression_helpers`)."""
from types import SimpleNamespace

import numpy as np
import pytest

from optkit import compression, keras_io
from optkit.errors import UserError
from optkit.steps import StepContext

SHAPE = (16, 16, 3)
CLASSES = 4


def quadrant_task(n_train=768, n_val=128, n_test=256, seed=0):
    """Four classes: a bright patch in one image quadrant, on noise. A small CNN learns it in a
    few epochs, so accuracy before/after compression means something."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, CLASSES, n).astype(np.int64)
        x = rng.random((n,) + SHAPE, dtype=np.float32) * 0.4
        for i, label in enumerate(y):
            r, c = divmod(int(label), 2)
            x[i, r * 8 + 2:r * 8 + 6, c * 8 + 2:c * 8 + 6, :] += 0.6
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = make(n_train), make(n_val), make(n_test)
    return SimpleNamespace(x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys,
                           num_classes=CLASSES, input_shape=SHAPE, class_names=[str(i) for i in range(CLASSES)])


def small_cnn(flavour="tf_keras", seed=0, extra=None):
    """Conv-BN-ReLU-Pool-Conv-GAP-Dense. BN momentum 0.9: short trainings leave 0.99 unconverged
    (STACK.md)."""
    K = keras_io.keras_module(flavour)
    K.utils.set_random_seed(seed)
    inp = K.Input(SHAPE)
    h = K.layers.Conv2D(16, 3, padding="same", name="stem")(inp)
    h = K.layers.BatchNormalization(momentum=0.9, name="stem_bn")(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    h = K.layers.MaxPooling2D(name="pool")(h)
    h = K.layers.Conv2D(32, 3, padding="same", activation="relu", name="body")(h)
    if extra is not None:
        h = extra(K, h)
    h = K.layers.GlobalAveragePooling2D(name="gap")(h)
    out = K.layers.Dense(CLASSES, name="head")(h)
    return K.Model(inp, out)


def nested_cnn(flavour="keras3"):
    """A functional model whose conv stack is a nested Sequential (a common backbone pattern)."""
    K = keras_io.keras_module(flavour)
    K.utils.set_random_seed(0)
    backbone = K.Sequential([K.Input(SHAPE), K.layers.Conv2D(8, 3, name="c1"), K.layers.ReLU(),
                             K.layers.Conv2D(16, 3, name="c2")], name="backbone")
    inp = K.Input(SHAPE)
    h = K.layers.GlobalAveragePooling2D()(backbone(inp))
    return K.Model(inp, K.layers.Dense(CLASSES, name="head")(h))


def trained_cnn(data, flavour="tf_keras", epochs=4):
    from optkit.train import fit

    model = small_cnn(flavour)
    fit(model, data, epochs=epochs, batch_size=32, learning_rate=3e-3, progress=False)
    return model


def context(data, epochs=2, history=None):
    ctx = StepContext(data=data, epochs=epochs, batch_size=32, progress=False)
    if history is not None:
        ctx.extra["history"] = history
    return ctx


def run_step(name, model, data, history=None, epochs=1, **options):
    """Apply a registered step the way the pipeline does: options parsed from k=v strings."""
    from optkit import steps

    step = steps.get(name)
    return step.apply(model, context(data, epochs=epochs, history=history), **step.parse_options(options))


# Shared by the prune/cluster/qat test modules (imported there by name, module-scoped in each).
@pytest.fixture(scope="module")
def data():
    return quadrant_task()


@pytest.fixture(scope="module")
def base(data):
    return trained_cnn(data, "tf_keras")


# ------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def cnn():
    return small_cnn("tf_keras")


def test_weight_layers_are_the_ones_holding_matrices_in_model_order(cnn):
    names = [l.name for l in compression.weight_layers(cnn)]
    assert names == ["stem", "body", "head"]   # BN holds only vectors


def test_select_layers_skips_first_and_last(cnn):
    assert compression.select_layers(cnn, skip_first=True) == ["body", "head"]
    assert compression.select_layers(cnn, skip_first=True, skip_last=True) == ["body"]


def test_select_layers_by_type_or_name_with_plus_separator(cnn):
    assert compression.select_layers(cnn, layers="Conv2D") == ["stem", "body"]
    assert compression.select_layers(cnn, layers="head+stem") == ["stem", "head"]


def test_select_layers_rejects_an_unknown_name_with_the_known_ones(cnn):
    with pytest.raises(UserError, match="no layer named or of type 'Conv3D'.*stem, body, head"):
        compression.select_layers(cnn, layers="Conv3D")


def test_select_layers_refuses_an_empty_selection(cnn):
    with pytest.raises(UserError, match="no weight layers left"):
        compression.select_layers(cnn, layers="head", skip_last=True)


def test_sparsity_and_unique_values_are_measured_on_the_kernels(cnn):
    model = keras_io.clone(cnn)
    kernel = model.get_layer("body").kernel
    values = kernel.numpy()
    values[..., :8] = 0.0            # 8 of 32 output channels -> 25% zeros
    kernel.assign(values)
    sparsity = compression.sparsity_per_layer(model)
    assert sparsity["body"] == pytest.approx(0.25, abs=1e-4)
    assert sparsity["stem"] == 0.0
    unique = compression.unique_values_per_kernel(model)
    assert unique["body"] == int(np.unique(values).size)
    assert unique["head"] == model.get_layer("head").kernel.numpy().size


def test_gzip_size_drops_when_weights_are_zeroed_but_raw_size_does_not(cnn):
    model = keras_io.clone(cnn)
    before = compression.weights_file_sizes(model)
    for layer in compression.weight_layers(model):
        layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
    after = compression.weights_file_sizes(model)
    assert after["bytes"] == before["bytes"]
    assert after["gzip_bytes"] < before["gzip_bytes"] / 2


def test_history_comes_from_the_pipeline_when_it_is_recorded(cnn):
    ctx = context(None, history=["separable", {"name": "prune"}])
    got = compression.detect_history(cnn, ctx)
    assert (got.pruned, got.clustered, got.source) == (True, False, "pipeline")


def test_history_is_detected_from_weights_without_a_record(cnn):
    model = keras_io.clone(cnn)
    assert compression.detect_history(model).to_json() == {"pruned": False, "clustered": False, "source": "weights"}
    rng = np.random.default_rng(0)
    for layer in compression.weight_layers(model):
        shape = layer.kernel.shape
        palette = rng.normal(size=8).astype(np.float32)
        palette[0] = 0.0
        # 8 shared values with zero the most common: what prune-then-cluster leaves behind.
        idx = np.where(rng.random(shape) < 0.6, 0, rng.integers(1, 8, shape))
        layer.kernel.assign(palette[idx])
    got = compression.detect_history(model)
    assert (got.pruned, got.clustered) == (True, True)


@pytest.mark.unit
def test_fine_tuning_steps_refuse_to_run_without_data():
    with pytest.raises(UserError, match="needs training data"):
        compression.require_training_data(context(None), "prune")
