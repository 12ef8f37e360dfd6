"""The compression steps through `optkit optimize`: a pruned model exports to full-integer TFLite,
and `--step prune --step qat` picks PQAT from the pipeline's history."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import keras_io
from optkit.cli import cli

from test_compression_helpers import quadrant_task, trained_cnn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A trained Keras 3 model file and an .npz with x/y, as a user would hand them over."""
    root = tmp_path_factory.mktemp("compression-cli")
    data = quadrant_task(n_train=480, n_val=0, n_test=160)
    model = trained_cnn(data, "keras3", epochs=4)
    model_path = keras_io.save(model, str(root / "cnn.keras"))
    npz = root / "quadrants.npz"
    np.savez(npz, x=np.concatenate([data.x_train, data.x_test]), y=np.concatenate([data.y_train, data.y_test]))
    return root, model_path, str(npz)


def optimize(args):
    result = CliRunner().invoke(cli, ["optimize", *args, "--json"], catch_exceptions=False)
    return result, (json.loads(result.stdout) if result.exit_code in (0, 1) and result.stdout.strip() else None)


def variant(report, last_step):
    return next(v for v in report["variants"] if v["steps"] and v["steps"][-1]["name"] == last_step)


def test_pruned_model_exports_to_full_integer_tflite(inputs):
    root, model_path, npz = inputs
    out = root / "prune-run"
    result, report = optimize([model_path, "--data", npz, "--step", "prune:sparsity=0.5,schedule=constant,lr=0.003",
                               "--to", "tflite:int8", "--epochs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pruned = variant(report, "prune")
    info = pruned["steps"][-1]["info"]
    for name in info["pruned_layers"]:
        assert info["sparsity_per_layer"][name] == pytest.approx(0.5, abs=0.01)
    artifact = next(a for a in pruned["artifacts"] if a["format"] == "tflite")
    assert artifact["status"] == "ok" and artifact["quantize"] == "int8"
    assert artifact["gzip_bytes"] < artifact["size_bytes"]
    from optkit import runner

    predictor = runner.load_predictor(artifact["path"])
    assert predictor.inputs[0].dtype == "int8"
    # What the user gets back is a Keras 3 file that plain Keras loads, zeros included.
    import keras

    saved = keras.saving.load_model(pruned["path"])
    assert np.mean(saved.get_layer("body").kernel.numpy() == 0) == pytest.approx(0.5, abs=0.01)


def test_prune_then_qat_runs_pqat_and_exports_int8(inputs):
    root, model_path, npz = inputs
    out = root / "pqat-run"
    result, report = optimize([model_path, "--data", npz, "--step", "prune:sparsity=0.5,schedule=constant,lr=0.003",
                               "--step", "qat:convert=false", "--to", "tflite:int8", "--epochs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    qat = variant(report, "qat")
    info = qat["steps"][-1]["info"]
    assert info["scheme"] == "pqat" and info["history"]["source"] == "pipeline"
    artifact = next(a for a in qat["artifacts"] if a["format"] == "tflite")
    assert artifact["status"] == "ok", artifact.get("reason")


def test_unknown_step_option_is_one_line_exit_2(inputs):
    import subprocess
    import sys

    root, model_path, npz = inputs
    out = subprocess.run([sys.executable, "-m", "optkit.cli", "optimize", model_path, "--data", npz,
                          "--step", "prune:sparsity_target=0.5", "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "optkit: error: step 'prune' has no option 'sparsity_target' (options: layers, lr, m_by_n, policy, "
        "schedule, skip_first, skip_last, skip_unsupported, sparsity)"]
