"""`--option tflite:sparse=true`: the sparse encoding is kept only where LiteRT (XNNPACK) runs it,
measured against the dense conversion; elsewhere the dense model is written and the details say why."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import keras_io, runner
from optkit.cli import cli


def pruned_cnn(zero_share=0.8, seed=0):
    """A small Keras 3 CNN with `zero_share` of every kernel set to exact zeros (what magnitude pruning leaves)."""
    keras = keras_io.keras3()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(64, 1, activation="relu")(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and weights[0].ndim >= 2:
            weights[0] = np.where(rng.random(weights[0].shape) < zero_share, 0.0, weights[0]).astype(np.float32)
            layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "pruned.keras"
    keras_io.save(pruned_cnn(), str(path))
    return path


def export(path, out, quantize, *extra):
    result = CliRunner().invoke(cli, ["export", str(path), "--to", "tflite", "--quantize", quantize,
                                      "-o", str(out), "--json", "--option", "tflite:sparse=true", *extra])
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads(result.stdout)["artifacts"]
    return artifact


def test_float32_sparse_is_smaller_runs_in_xnnpack_and_matches_the_model(model_file, tmp_path):
    artifact = export(model_file, tmp_path, "none")
    sparse = artifact["details"]["sparse"]
    assert sparse["applied"] is True
    # The written file also carries the input-contract metadata (a few hundred bytes).
    assert artifact["size_bytes"] == pytest.approx(sparse["size_bytes"], abs=1024)
    assert artifact["size_bytes"] < 0.6 * sparse["dense_size_bytes"]
    assert artifact["details"]["xnnpack"]["applied"] is True
    assert sparse["densify"] is True and "DENSIFY" in artifact["details"]["ops"]
    assert sparse["p50_ms"] > 0 and sparse["dense_p50_ms"] > 0
    assert sparse["latency_ratio"] == pytest.approx(sparse["p50_ms"] / sparse["dense_p50_ms"], rel=1e-2)
    assert artifact["parity"]["ok"] is True
    model = keras_io.load(str(model_file)).model
    x = np.random.default_rng(1).random((4, 16, 16, 3), dtype=np.float32)
    predictor = runner.load_predictor(artifact["path"], threads=1)
    got = np.concatenate([predictor(x[i:i + 1])[0] for i in range(4)])
    np.testing.assert_allclose(got, keras_io.predict(model, x), atol=1e-4)


def test_dynamic_range_sparse_falls_back_to_dense_because_xnnpack_cannot_run_it(model_file, tmp_path):
    artifact = export(model_file, tmp_path, "dynamic")
    sparse = artifact["details"]["sparse"]
    assert sparse["applied"] is False
    assert "XNNPACK" in sparse["reason"] and "wrote the dense model" in sparse["reason"]
    assert artifact["size_bytes"] == pytest.approx(sparse["dense_size_bytes"], abs=1024)
    assert artifact["size_bytes"] > 1.5 * sparse["size_bytes"]
    assert "DENSIFY" not in artifact["details"]["ops"]
    assert artifact["details"]["xnnpack"]["applied"] is True
    runner.load_predictor(artifact["path"], threads=1)      # what was written runs


def test_a_model_without_zeros_keeps_the_dense_file_and_says_so(tmp_path):
    path = tmp_path / "dense.keras"
    keras_io.save(pruned_cnn(zero_share=0.0), str(path))
    result = CliRunner().invoke(cli, ["export", str(path), "--to", "tflite", "-o", str(tmp_path / "out"),
                                      "--option", "tflite:sparse=true"])
    assert result.exit_code == 0, result.output
    assert "sparse: not applied: no weight tensor was sparse enough" in result.output
