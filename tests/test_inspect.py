"""`optkit inspect`: parameter counts for every file kind, multiply-adds, rewrites, Lambda refusal."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from optkit import keras_io
from optkit.cli import cli
from tests.legacy_models import legacy_sequential_h5, tiny_tf_keras_sequential


def _inspect(path, *extra):
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    keras = keras_io.keras3()
    k3 = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                           keras.layers.Conv2D(8, 3), keras.layers.Flatten(), keras.layers.Dense(4, name="head")])
    k3.save(d / "k3.keras")
    tfk = keras_io.tf_keras()
    tiny = tiny_tf_keras_sequential(tfk)
    tiny.save(d / "tfk.h5")
    legacy = legacy_sequential_h5(tfk, d / "legacy.h5")
    keras_io.save(k3, d / "saved_model")
    return {"k3": (d / "k3.keras", k3.count_params()), "tfk": (d / "tfk.h5", tiny.count_params()),
            "legacy": (d / "legacy.h5", legacy.count_params()), "sm": (d / "saved_model", k3.count_params())}


@pytest.mark.parametrize("kind,flavour", [("k3", "keras3"), ("tfk", "tf_keras"), ("legacy", "tf_keras"),
                                          ("sm", "saved_model")])
def test_every_file_kind_inspects_with_the_right_parameter_count(files, kind, flavour):
    path, params = files[kind]
    info = _inspect(path)
    assert info["flavour"] == flavour
    assert info["params"] == params


def test_multiply_adds_and_rewrites_of_a_known_model(files):
    info = _inspect(files["k3"][0])
    # conv1 14*14*(3*3*3)*8 + conv2 12*12*(3*3*8)*8 + dense 1152*4
    assert info["flops"] == 14 * 14 * 27 * 8 + 12 * 12 * 72 * 8 + 1152 * 4
    assert info["layers"] == {"Conv2D": 2, "Dense": 1, "Flatten": 1}
    assert info["rewrites"] == {"separable": 1, "pooling": True}   # the stem conv is not counted
    assert info["outputs"][0]["name"] == "head"   # the producing layer, not keras_tensor_N
    assert info["inputs"][0]["shape"] == [None, 16, 16, 3]


def test_depthwise_and_dense_multiply_adds_in_tf_keras_model(files):
    info = _inspect(files["tfk"][0])
    # conv 10*10*27*6, depthwise 8*8*9*6, dense 384*4
    assert info["flops"] == 10 * 10 * 27 * 6 + 8 * 8 * 9 * 6 + 384 * 4


def test_lambda_model_is_refused_with_exit_2(tmp_path):
    keras = keras_io.keras3()
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Lambda(lambda t: t + 1.0)(inp)).save(tmp_path / "l.keras")
    out = subprocess.run([sys.executable, "-m", "optkit.cli", "inspect", str(tmp_path / "l.keras")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Lambda" in out.stderr and "--unsafe" in out.stderr and "Traceback" not in out.stderr
    assert CliRunner().invoke(cli, ["inspect", str(tmp_path / "l.keras"), "--unsafe"]).exit_code == 0
