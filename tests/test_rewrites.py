"""The `separable` and `pooling` rewrites on Sequential and functional graphs."""
from types import SimpleNamespace

import numpy as np
import pytest

from optkit import graph_edit, keras_io, steps, train
from optkit.errors import UserError
from optkit.steps import StepContext, pooling, separable
from optkit.steps._rewrite_eval import relative_output_error


@pytest.fixture(scope="module")
def keras():
    return keras_io.keras3()


def _images(n=32, shape=(12, 12, 3), seed=1):
    return np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)


def _sequential(keras, seed=0):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="stem"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv_a"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(16, 3, strides=2, padding="valid", name="conv_b"),
        L.BatchNormalization(name="bn"),
        L.Flatten(name="flatten"),
        L.Dropout(0.2, name="drop"),
        L.Dense(5, name="head"),
    ])


def _functional(keras, seed=0):
    """Residual add, concatenation, a dilated conv, and one input feeding two branches."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    x = keras.Input((12, 12, 3))
    stem = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    branch = L.Conv2D(8, 3, padding="same", name="branch")(stem)
    res = L.Add(name="res")([stem, branch])
    a = L.Conv2D(6, 3, strides=2, padding="same", name="down")(res)
    b = L.Conv2D(6, 5, dilation_rate=2, padding="same", name="dilated")(res)
    b = L.MaxPooling2D(name="pool")(b)
    cat = L.Concatenate(name="cat")([a, b])
    side = L.Conv2D(4, 1, name="pointwise")(x)                 # the shared input's second consumer
    side = L.MaxPooling2D(name="side_pool")(side)
    flat = L.Flatten(name="flatten")(L.Concatenate(name="cat2")([cat, side]))
    return keras.Model(x, L.Dense(3, name="head")(flat))


def _assert_untouched_identical(before, after, touched):
    for layer in before.layers:
        if layer.name in touched or not layer.get_weights():
            continue
        for w_old, w_new in zip(layer.get_weights(), after.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(w_old, w_new)


# ----------------------------------------------------------------------------- separable

@pytest.mark.parametrize("build", [_sequential, _functional])
def test_separable_preserves_output_shapes_and_rewrites_all_but_the_stem(keras, build):
    model = build(keras)
    new, report = separable.rewrite(model)
    assert new.output_shape == model.output_shape
    kinds = {l.name: type(l).__name__ for l in new.layers}
    assert kinds["stem"] == "Conv2D"
    rewritten = [r["layer"] for r in report if r["rewritten"]]
    assert rewritten and all(kinds[name] == "SeparableConv2D" for name in rewritten)
    assert "pointwise" not in rewritten          # a 1×1 convolution is already pointwise
    assert new.predict(_images(4), verbose=0).shape == model.predict(_images(4), verbose=0).shape


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_separable_parameter_reduction_follows_the_formula(keras, rank):
    model = _sequential(keras)
    new, _ = separable.rewrite(model, rank=rank)
    expected = model.count_params()
    for name in ("conv_a", "conv_b"):
        kh, kw, c_in, c_out = model.get_layer(name).get_weights()[0].shape
        expected += (kh * kw * c_in * rank + c_in * rank * c_out + c_out) - (kh * kw * c_in * c_out + c_out)
    assert new.count_params() == expected < model.count_params()


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_separable_leaves_untouched_layers_bit_identical(keras, build):
    model = build(keras)
    original = [w.copy() for w in model.get_weights()]
    new, report = separable.rewrite(model)
    _assert_untouched_identical(model, new, {r["layer"] for r in report if r["rewritten"]})
    for w_old, w_now in zip(original, model.get_weights()):     # and the original is not modified
        np.testing.assert_array_equal(w_old, w_now)


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_separable_at_full_rank_reproduces_the_original(keras, build):
    model = build(keras)
    new, report = separable.rewrite(model, rank=25)        # clamped per layer to min(k·k, C_out): exact
    assert all(r["exact"] for r in report if r["rewritten"])
    assert relative_output_error(model, new, _images()) < 1e-5


@pytest.mark.unit
def test_truncated_svd_is_the_closest_separable_kernel():
    # Eckart-Young per input channel: no other rank-r depthwise/pointwise pair gets closer.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    for rank in (1, 2, 4):
        dw, pw = separable.factorize(kernel, rank)
        assert dw.shape == (3, 3, 4, rank) and pw.shape == (1, 1, 4 * rank, 8)
        err = np.linalg.norm(_compose(dw, pw) - kernel)
        for _ in range(20):
            rdw = rng.normal(size=dw.shape).astype(np.float32)
            rpw = rng.normal(size=pw.shape).astype(np.float32) * 0.3
            assert err < np.linalg.norm(_compose(rdw, rpw) - kernel)
    dw, pw = separable.factorize(kernel, 8)
    np.testing.assert_allclose(_compose(dw, pw), kernel, atol=1e-5)


def _compose(dw, pw):
    """The full kernel a (depthwise, pointwise) pair applies: W[:,:,c,o] = Σ_j dw[:,:,c,j]·pw[c·r+j, o]."""
    kh, kw, c_in, r = dw.shape
    return np.einsum("hwcj,cjo->hwco", dw, pw.reshape(c_in, r, -1))


def _low_rank_kernels(model, rng):
    """Give every conv the structure trained filters have (a few smooth spatial profiles per channel
    plus noise) instead of i.i.d. initial weights, and the head one that reads the features' evidence
    coherently: a random head on non-negative features sums them to near-zero logits (cancellation),
    which would turn any relative output error into noise."""
    for layer in model.layers:
        if type(layer).__name__ == "Dense":
            kernel, bias = layer.get_weights()
            coherent = np.linspace(0.5, 1.5, kernel.shape[1])[None, :] + 0.2 * rng.normal(size=kernel.shape)
            layer.set_weights([(coherent / kernel.shape[0]).astype(np.float32), bias])
        if type(layer).__name__ != "Conv2D":
            continue
        kernel, bias = layer.get_weights()
        kh, kw, c_in, c_out = kernel.shape
        yy, xx = np.meshgrid(np.linspace(-1, 1, kh), np.linspace(-1, 1, kw), indexing="ij")
        profiles = np.stack([np.exp(-(yy ** 2 + xx ** 2)), xx, yy])          # blur, d/dx, d/dy
        mix = rng.normal(size=(c_in, 3, c_out)) * np.array([1.0, 0.4, 0.2])[None, :, None]
        structured = np.einsum("phw,cpo->hwco", profiles, mix)
        structured += 0.05 * rng.normal(size=structured.shape)
        layer.set_weights([(structured / np.sqrt(kh * kw * c_in)).astype(np.float32), bias])


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_svd_initialisation_starts_closer_than_random_initialisation(keras, build):
    model = build(keras)
    _low_rank_kernels(model, np.random.default_rng(0))
    x = _images(64)
    svd_model, _ = separable.rewrite(model, init="svd")
    random_model, _ = separable.rewrite(model, init="random")
    svd_err = relative_output_error(model, svd_model, x)
    random_err = relative_output_error(model, random_model, x)
    assert svd_err < 0.5 * random_err, (svd_err, random_err)


def test_separable_layers_option_selects_by_name_and_rejects_unknown_names(keras):
    model = _sequential(keras)
    new, report = separable.rewrite(model, layers=["conv_b"])
    assert [r["layer"] for r in report if r["rewritten"]] == ["conv_b"]
    assert type(new.get_layer("conv_a")).__name__ == "Conv2D"
    with pytest.raises(UserError, match="no Conv2D layer named nope"):
        separable.rewrite(model, layers=["nope"])


def test_separable_on_a_model_without_eligible_convs_is_a_user_error(keras):
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3, name="only"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="only: stem"):
        separable.rewrite(model)


# ----------------------------------------------------------------------------- refusals

def test_subclassed_model_is_refused_by_name(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="my_net")
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(_images(1))
    with pytest.raises(UserError, match="'my_net' is a subclassed Net"):
        separable.rewrite(net)


def test_custom_layer_is_refused_naming_the_layer(keras):
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c1")(x)
    y = Scale(name="my_scale")(y)
    y = keras.layers.Conv2D(4, 3, name="c2")(y)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y)))
    for rewrite in (separable.rewrite, pooling.rewrite):
        with pytest.raises(UserError, match="layer 'my_scale' is a custom layer"):
            rewrite(model)


# ----------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("build", [_sequential, _functional])
def test_pooling_head_is_exact_on_spatially_constant_features(keras, build, pool):
    # Up to the Flatten, a constant image gives constant features (biases and ReLUs keep it so away
    # from the borders); feed the head directly with constant feature maps to test the head alone.
    model = build(keras)
    new, report = pooling.rewrite(model, pool=pool)
    flatten_in = model.get_layer("flatten").input
    c = flatten_in.shape[-1]
    feats = np.broadcast_to(np.random.default_rng(0).normal(size=(8, 1, 1, c)),
                            (8,) + tuple(flatten_in.shape[1:])).astype(np.float32)
    # The heads' own layers, called eagerly (Dropout in between is the identity at inference).
    old = model.get_layer("head")(model.get_layer("flatten")(feats))
    new_out = new.get_layer("head")(new.get_layer(report[0]["pool"])(feats))
    np.testing.assert_allclose(np.asarray(new_out), np.asarray(old), rtol=1e-5, atol=1e-5)
    # ... and on features that vary over space the new head is only an approximation.
    varying = np.random.default_rng(1).normal(size=feats.shape).astype(np.float32)
    gap = np.abs(np.asarray(new.get_layer("head")(new.get_layer(report[0]["pool"])(varying)))
                 - np.asarray(model.get_layer("head")(model.get_layer("flatten")(varying)))).max()
    assert gap > 1e-3


def test_pooling_shrinks_the_dense_head_to_channels_times_units(keras):
    model = _sequential(keras)
    new, report = pooling.rewrite(model)
    h, w, c = model.get_layer("flatten").input.shape[1:]
    units = 5
    assert new.get_layer("head").get_weights()[0].shape == (c, units)
    assert model.count_params() - new.count_params() == (h * w * c - c) * units
    assert [type(l).__name__ for l in new.layers][-3:] == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    _assert_untouched_identical(model, new, {"head"})


def test_pooling_rewrites_every_dense_fed_by_the_flatten(keras):
    L = keras.layers
    x = keras.Input((6, 6, 3))
    flat = L.Flatten(name="flatten")(L.Conv2D(4, 3, name="c")(x))
    model = keras.Model(x, [L.Dense(3, name="a")(flat), L.Dense(2, name="b")(L.Dropout(0.1)(flat))])
    new, report = pooling.rewrite(model)
    assert sorted(r["dense"] for r in report) == ["a", "b"]
    assert [tuple(s) for s in new.output_shape] == [(None, 3), (None, 2)]


def test_pooling_without_a_flatten_dense_head_is_a_user_error(keras):
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="no Flatten -> Dense head"):
        pooling.rewrite(model)


# ----------------------------------------------------------------------------- as steps

def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n).astype(np.int64)
    x = rng.random((n, 12, 12, 3), dtype=np.float32) * 0.3 + (y[:, None, None, None] / 5.0)
    return SimpleNamespace(x_train=x[:64], y_train=y[:64], x_val=x[64:], y_val=y[64:])


@pytest.mark.unit
def test_steps_are_registered_as_rewrites():
    registry = steps.registry()
    assert registry["separable"].kind == registry["pooling"].kind == "rewrite"
    assert registry["separable"].parse_options({"rank": "2", "layers": "a|b"})["rank"] == 2


def test_separable_step_takes_a_tf_keras_model_reports_errors_and_fine_tunes(keras):
    tfk = keras_io.tf_keras()
    tfk.utils.set_random_seed(0)
    model = tfk.Sequential([tfk.Input((12, 12, 3)), tfk.layers.Conv2D(8, 3, activation="relu"),
                            tfk.layers.Conv2D(8, 3, activation="relu"), tfk.layers.Flatten(), tfk.layers.Dense(5)])
    ctx = StepContext(data=_data(), epochs=2, batch_size=16, progress=False)
    result = steps.get("separable").apply(model, ctx, **steps.get("separable").parse_options({}))
    assert keras_io.flavour_of(result.model) == "keras3"
    info = result.info
    assert info["layers_rewritten"] == 1 and info["params_after"] < info["params_before"]
    assert 0 < info["output_error_after_rewrite"] and "output_error_after_finetune" in info
    assert info["finetune"]["epochs_run"] == 2 and 0 <= info["accuracy_after_finetune"] <= 1


def test_pooling_step_without_data_still_reports_the_output_error(keras):
    ctx = StepContext(data=None, epochs=1)
    result = steps.get("pooling").apply(_sequential(keras), ctx, pool="avg", epochs=-1)
    assert result.info["finetune"] == "skipped: no --data"
    assert result.info["output_error_on"] == "uniform random inputs"
    assert result.info["params_after"] < result.info["params_before"]


def test_rewrites_keep_the_models_speed_settings(keras):
    model = _sequential(keras)
    train.set_training_config(model, jit_compile=True, steps_per_execution=8)
    new, _ = separable.rewrite(model)
    assert train.training_config(new).jit_compile is True
    assert train.training_config(new).steps_per_execution == 8


def test_graph_edit_can_replace_a_layer_by_a_chain(keras):
    model = _functional(keras)
    L = keras.layers
    new = graph_edit.rebuild(model, {"branch": [L.Conv2D(8, 3, padding="same", name="branch"),
                                                L.ReLU(name="branch_relu")]},
                             weights={"branch": model.get_layer("branch").get_weights()})
    x = _images(8)
    inner = keras.Model(new.input, new.get_layer("res").output)
    ref = keras.Model(model.input, [model.get_layer("stem").output, model.get_layer("branch").output])
    stem, branch = ref.predict(x, verbose=0)
    np.testing.assert_allclose(inner.predict(x, verbose=0), stem + np.maximum(branch, 0), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- from the CLI

@pytest.mark.slow
def test_optimize_cli_applies_rewrites_then_speed_settings(tmp_path, keras):
    import json

    from click.testing import CliRunner

    from optkit.cli import cli

    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, activation="relu"),
                              L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(4)])
    model_path, data_path = str(tmp_path / "naive.keras"), str(tmp_path / "d.npz")
    keras_io.save(model, model_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    np.savez(data_path, x=(rng.random((200, 16, 16, 3)) * 0.3 + y[:, None, None, None] / 4).astype(np.float32), y=y)
    result = CliRunner().invoke(cli, ["optimize", model_path, "--data", data_path, "--step", "pooling",
                                      "--step", "separable", "--step", "fusing:steps=4", "--epochs", "1",
                                      "-o", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    variants = report["variants"]
    assert [s["name"] for s in variants[-1]["steps"]][-3:] == ["pooling", "separable", "fusing"]
    by_step = {v["steps"][-1]["name"]: v for v in variants if v["steps"]}
    info = by_step["separable"]["steps"][-1]["info"]
    assert info["layers_rewritten"] == 1 and info["output_error_after_rewrite"] > 0
    assert by_step["separable"]["params"] < by_step["pooling"]["params"] < variants[0]["params"]
    final = keras_io.load(by_step["fusing"]["path"]).model
    assert "SeparableConv2D" in {type(l).__name__ for l in final.layers}
    assert train.saved_training_config(by_step["fusing"]["path"])["steps_per_execution"] == 4
