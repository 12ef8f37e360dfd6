"""`optkit optimize` end to end, in-process through the CLI, on tiny models and tiny data.

The user's case: a Keras 3 `.keras` file and a folder of class sub-folders of PNGs, both created
here. Every number in the report comes from running the real converters and runtimes.
"""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from optkit.cli import cli
from optkit.errors import UserError

CLASSES = ("red", "green", "blue")
SIZE = 16


def make_user_files(root):
    """A small Keras 3 classifier saved as .keras, and a folder of class sub-folders of PNGs."""
    from PIL import Image

    from optkit import keras_io

    folder = root / "images"
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 90, size=(SIZE, SIZE, 3), dtype=np.uint8)
            img[..., k] += 150          # the class is the dominant colour: learnable in one epoch
            Image.fromarray(img).save(folder / name / f"{i:02d}.png")

    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.save(str(root / "model.keras"))
    return root / "model.keras", folder


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    return make_user_files(tmp_path_factory.mktemp("user"))


def _invoke(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def _artifact(report, variant_name, label):
    variant = next(v for v in report["variants"] if v["name"] == variant_name)
    for a in variant["artifacts"]:
        if a["format"] + ("" if a["quantize"] == "none" else ":" + a["quantize"]) == label:
            return a
    raise AssertionError(f"no artifact {label} in {variant_name}: {variant['artifacts']}")


def test_user_model_and_image_folder_produce_a_complete_report(user_files, tmp_path):
    model, folder = user_files
    out = tmp_path / "run"
    result = _invoke(["optimize", str(model), "--data", str(folder), "--to", "tflite,onnx,tensorrt",
                      "-o", str(out), "--json", "--tiny"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for name in ("report.json", "report.md", "report.html", "plan.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["variants"] == report["variants"]

    [baseline] = report["variants"]
    assert baseline["name"] == "baseline" and baseline["status"] == "ok"
    assert baseline["params"] == 8 * 3 * 9 + 8 + 8 * 8 * 9 + 8 + 5 * 5 * 8 * 3 + 3
    assert 0.0 <= baseline["accuracy"] <= 1.0
    assert baseline["inference_ms_per_step"] > 0
    assert os.path.isfile(baseline["path"]) and baseline["path"].endswith(".keras")

    for label in ("tflite", "onnx"):
        art = _artifact(report, "baseline", label)
        assert art["status"] == "ok", art
        assert os.path.isfile(art["path"]) and os.path.dirname(art["path"]) == os.path.dirname(baseline["path"])
        assert art["parity"]["ok"] is True and art["parity"]["max_abs"] < 1e-4   # float32 export
        assert art["latency_ms"]["p50"] > 0 and art["latency_ms"]["threads"] >= 1
        assert art["accuracy"] == pytest.approx(baseline["accuracy"], abs=1e-6)  # same function
        # Benchmarked with the predictor validation loaded, not a second load.
        assert art["details"]["predictor"].startswith("the one validation loaded") and art["details"]["load_ms"] > 0
    trt = _artifact(report, "baseline", "tensorrt")
    assert trt["status"] == "skipped" and trt["reason"]

    md = (out / "report.md").read_text()
    assert "baseline" in md and "TensorRT" in md


def test_summary_table_goes_to_stdout_and_progress_to_stderr(user_files, tmp_path):
    model, folder = user_files
    result = _invoke(["optimize", str(model), "--data", str(folder), "--to", "tflite",
                      "-o", str(tmp_path / "run"), "--tiny"])
    assert result.exit_code == 0, result.output
    assert "Parameters" in result.stdout and "baseline" in result.stdout
    assert "optkit: export baseline -> tflite" in result.stderr
    assert "optkit: export" not in result.stdout


def test_no_data_still_exports_and_times_but_has_no_accuracy(user_files, tmp_path):
    model, _ = user_files
    result = _invoke(["optimize", str(model), "--to", "onnx", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    assert result.exit_code == 0, result.output
    [baseline] = json.loads(result.stdout)["variants"]
    assert baseline["accuracy"] is None
    art = _artifact(json.loads(result.stdout), "baseline", "onnx")
    assert art["status"] == "ok" and art["accuracy"] is None and art["latency_ms"]["p50"] > 0


def test_unknown_export_format_is_a_usage_error_before_anything_runs(user_files, tmp_path):
    model, folder = user_files
    result = CliRunner().invoke(cli, ["optimize", str(model), "--to", "tflit", "-o", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "did you mean 'tflite'" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_a_failing_export_is_a_failed_row_and_the_run_goes_on_with_exit_1(tmp_path):
    """A custom layer computing erf: TFLite has no builtin Erf (needs TF Select), ONNX has one."""
    from optkit import keras_io

    keras = keras_io.keras3()

    @keras.saving.register_keras_serializable("optkit_tests")
    class Erf(keras.layers.Layer):
        def call(self, x):
            return keras.ops.erf(x)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dense(4)(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(Erf()(x))
    keras.Model(inputs, outputs).save(str(tmp_path / "erf.keras"))

    out = tmp_path / "run"
    result = _invoke(["optimize", str(tmp_path / "erf.keras"), "--to", "tflite,onnx", "-o", str(out), "--tiny"])
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    tflite = _artifact(report, "baseline", "tflite")
    assert tflite["status"] == "failed" and "Erf" in tflite["reason"]
    assert _artifact(report, "baseline", "onnx")["status"] == "ok"      # the run went on
    assert report["status"] == "failed" and len(report["failures"]) == 1
    assert "failed" in result.stdout and "Parameters" in result.stdout   # the table still printed


def test_steps_run_in_order_and_the_plan_replays_to_the_same_variants(user_files, tmp_path):
    model, folder = user_files
    first = tmp_path / "first"
    result = _invoke(["optimize", str(model), "--data", str(folder), "--step", "pooling",
                      "--step", "prune:sparsity=0.5", "--to", "tflite:int8", "--epochs", "1",
                      # a 1-epoch fine-tune may cost accuracy: keep every step to test order and replay
                      "--max-accuracy-drop", "100", "-o", str(first), "--json", "--tiny"])
    assert result.exit_code == 0, result.output
    one = json.loads(result.stdout)
    names = [v["name"] for v in one["variants"]]
    assert names == ["baseline", "pooling", "pooling+prune"]
    base, pooled, pruned = one["variants"]
    assert pooled["parent"] == base["id"] and pruned["parent"] == pooled["id"]
    assert [s["name"] for s in pruned["steps"]] == ["pooling", "prune"]
    assert pooled["params"] < base["params"]                      # Flatten -> global pooling
    assert pruned["steps"][-1]["info"]["target_reached"] is True   # 50% of each pruned kernel is zero
    for v in one["variants"]:
        assert v["status"] == "ok"
        [art] = v["artifacts"]
        assert art["status"] == "ok" and art["quantize"] == "int8" and art["parity"]["ok"]
        assert os.path.isdir(os.path.dirname(art["path"])) and v["id"][:8] in art["path"]

    again = tmp_path / "again"
    result = _invoke(["optimize", "--plan", str(first / "plan.json"), "-o", str(again), "--json"])
    assert result.exit_code == 0, result.output
    two = json.loads(result.stdout)
    assert [v["id"] for v in two["variants"]] == [v["id"] for v in one["variants"]]
    assert [[(s["name"], s["options"]) for s in v["steps"]] for v in two["variants"]] == \
        [[(s["name"], s["options"]) for s in v["steps"]] for v in one["variants"]]
    assert [v["params"] for v in two["variants"]] == [v["params"] for v in one["variants"]]
    assert json.loads((again / "plan.json").read_text()) == json.loads((first / "plan.json").read_text())


def test_edge_int8_recipe_sends_the_qat_model_only_to_int8_tflite(user_files, tmp_path):
    model, folder = user_files
    result = _invoke(["optimize", str(model), "--data", str(folder), "--recipe", "edge-int8", "--epochs", "1",
                      "--max-accuracy-drop", "100", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["name"] for v in report["variants"]] == ["baseline", "pooling", "pooling+prune", "pooling+prune+qat"]
    qat = report["variants"][-1]
    assert _artifact(report, qat["name"], "tflite:int8")["status"] == "ok"
    onnx = _artifact(report, qat["name"], "onnx:int8")
    assert onnx["status"] == "skipped" and "exports only to tflite:int8" in onnx["reason"]
    assert _artifact(report, "pooling+prune", "onnx:int8")["status"] == "ok"


def test_an_explicit_step_that_refuses_the_model_stops_the_run_before_training(user_files, tmp_path):
    """pooling rewrites Flatten -> Dense heads; a model that already pools has none. Asked for
    explicitly, that is the user's mistake: exit 2 before anything trains (a recipe skips it)."""
    from optkit import keras_io

    _, folder = user_files
    keras = keras_io.keras3()
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x)).save(str(tmp_path / "gap.keras"))

    result = CliRunner().invoke(cli, ["optimize", str(tmp_path / "gap.keras"), "--data", str(folder), "--step",
                                      "pooling", "--step", "prune", "--to", "tflite", "-o", str(tmp_path / "run"),
                                      "--json", "--tiny"])
    assert isinstance(result.exception, UserError) and result.exception.exit_code == 2
    assert "--step pooling does not apply" in str(result.exception) and "no Flatten" in str(result.exception)
    assert not [p for p in (tmp_path / "run").iterdir() if p.is_dir()]


def test_max_compression_recipe_ends_in_pcqat_int8_tflite(user_files, tmp_path):
    model, folder = user_files
    result = _invoke(["optimize", str(model), "--data", str(folder), "--recipe", "max-compression",
                      "--epochs", "1", "--max-accuracy-drop", "100", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [v["name"] for v in report["variants"]]
    assert names == ["baseline", "prune", "prune+cluster", "prune+cluster+qat"]
    pruned, clustered, qat = report["variants"][1:]
    assert pruned["steps"][-1]["info"]["target_reached"] is True
    assert qat["steps"][-1]["info"]["scheme"] == "pcqat"
    final = _artifact(report, qat["name"], "tflite:int8")
    assert final["status"] == "ok" and final["parity"]["ok"]
    base = _artifact(report, "baseline", "tflite:int8")
    assert final["gzip_bytes"] < base["gzip_bytes"]      # sparsity + shared values compress
