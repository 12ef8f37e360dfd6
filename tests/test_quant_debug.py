"""Accuracy-aware int8 (optkit.quant_debug): per-layer diagnosis, --keep-float, --max-accuracy-drop,
with real LiteRT and onnxruntime on a trained model that full int8 breaks (one wide-range channel)."""
import json
import os

import numpy as np
import pytest

from optkit import export, metrics, quant_debug, runner
from optkit.cli import main

import quant_models


@pytest.fixture(scope="module")
def data():
    return quant_models.faint_quadrant_task()


@pytest.fixture(scope="module")
def wide(data, tmp_path_factory):
    model = quant_models.wide_channel_cnn(data)
    path = str(tmp_path_factory.mktemp("wide") / "wide.keras")
    model.save(path)
    return model, path


def run_cli(capsys, args):
    """optkit's console entry in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def accuracy_of(path, data):
    return 100 * metrics.evaluate(runner.load_predictor(path, threads=1), data.x_test, data.y_test)["accuracy"]


@pytest.fixture(scope="module")
def float_acc(wide, data):
    from optkit import keras_io

    return 100 * metrics.accuracy(keras_io.predict(wide[0], data.x_test), data.y_test)


def int8(model, fmt, data, out, **options):
    (art,) = export.export_model(model, [fmt], str(out), quantize="int8", data=data, options={fmt: options})
    return art


# ----------------------------------------------------------------- naming (no TensorFlow)

@pytest.mark.unit
def test_graph_names_map_to_keras_layers_in_model_order():
    names = ["conv", "conv_1", "bn", "relu", "head"]
    # Keras 3 adds _1 to scopes; TFLite joins fused ops with ';' (conv first in model order)
    assert quant_debug.layers_in("functional_1/relu_1/Relu;functional_1/bn_1/FusedBatchNorm;"
                                 "functional_1/conv_1/BiasAdd", names, keras3_scopes=True) == ["conv", "bn", "relu"]
    assert quant_debug.layers_in("functional_1/conv_1_1/BiasAdd", names, keras3_scopes=True) == ["conv_1"]
    assert quant_debug.layers_in("model/conv_1/Conv2D", names) == ["conv_1"]
    assert quant_debug.layers_in("StatefulPartitionedCall/functional/head/MatMul:0", names) == ["head"]
    assert quant_debug.layers_in("StatefulPartitionedCall_1:0", names) == []


@pytest.mark.unit
def test_keep_float_of_an_unknown_layer_names_the_quantized_ones():
    from optkit.errors import UserError

    with pytest.raises(UserError, match="no layer named 'nope'.*conv, head"):
        quant_debug.resolve_keep_float(["nope"], ["conv", "head"], {"conv": ["a"], "head": ["b"]})


@pytest.mark.unit
def test_snr_and_channel_snr_see_a_channel_drowned_by_a_wide_one():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 8)).astype(np.float32)
    ref[:, 0] *= 300
    scale = ref.max() / 127
    q = np.round(ref / scale) * scale   # per-tensor int8: the narrow channels get ~0-1 levels
    whole = quant_debug.snr_db(float(np.mean(ref ** 2)), float(np.mean((ref - q) ** 2)))
    assert whole > 20                                     # the whole tensor looks fine ...
    assert quant_debug.channel_snr_db(ref, q) < 5         # ... its median channel does not


@pytest.mark.unit
def test_float_limit_is_a_fifth_of_the_layers_at_least_one():
    assert quant_debug.float_limit(11) == 2
    assert quant_debug.float_limit(4) == 1


@pytest.mark.unit
def test_int8_flags_are_refused_where_they_mean_nothing(tmp_path, capsys):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the flags are checked first")
    code, _, err = run_cli(capsys, ["export", str(model), "--to", "tflite", "--keep-float", "conv1"])
    assert code == 2 and err == "optkit: error: --keep-float apply to --quantize int8\n"
    code, _, err = run_cli(capsys, ["export", str(model), "--to", "tflite", "--quantize", "int8",
                                    "--calibration-method", "entropy"])
    assert code == 2 and "--calibration-method apply to onnx; --to has no onnx" in err


# ----------------------------------------------------------------- TFLite (LiteRT)

def test_full_int8_loses_accuracy_on_the_wide_channel_model(wide, data, float_acc, tmp_path):
    art = int8(wide[0], "tflite", data, tmp_path, quant_report=True)
    assert float_acc > 95
    assert accuracy_of(art.path, data) < float_acc - 10
    q = art.quantization
    assert q["calibration"] == {"method": "minmax", "samples": 100}
    names = [r["name"] for r in q["layers"]]
    assert set(names[:2]) == {"wide", "conv3"}            # the culprit and its reader, worst first
    assert all({"name", "op", "snr_db", "rmse"} <= set(r) for r in q["layers"])
    assert "conv1" in names and "head" in names and len(names) == 10
    scores = [min(v for v in (r["snr_db"], r["channel_snr_db"]) if v is not None) for r in q["layers"]]
    assert scores == sorted(scores)


def conv_input_types(path):
    """{Keras layer: dtype of the CONV_2D's input} read from the artifact with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    names = ["conv1", "wide", "conv3", "conv4"]
    out = {}
    for op in it._get_ops_details():
        if op["op_name"] == "CONV_2D":
            layer = quant_debug.layers_in(tensors[op["outputs"][0]]["name"], names, keras3_scopes=True)[0]
            out[layer] = (tensors[op["inputs"][0]]["dtype"].__name__, tensors[op["inputs"][1]]["dtype"].__name__)
    return out


def test_keep_float_runs_those_convs_in_float_and_the_rest_in_int8(wide, data, float_acc, tmp_path):
    art = int8(wide[0], "tflite", data, tmp_path, keep_float="wide,conv3")
    assert art.status == "ok", art.reason
    assert art.quantization["float_layers"] == ["wide", "conv3"]
    types = conv_input_types(art.path)
    assert types.pop("wide") == ("float32", "float32") and types.pop("conv3") == ("float32", "float32")
    assert set(types.values()) == {("int8", "int8")} and len(types) == 2
    assert accuracy_of(art.path, data) >= float_acc - 1


def test_max_accuracy_drop_keeps_the_worst_layers_float_until_within_goal(wide, data, float_acc, tmp_path):
    art = int8(wide[0], "tflite", data, tmp_path, max_accuracy_drop=1.0)
    assert art.status == "ok", art.reason
    q = art.quantization
    assert sorted(q["float_layers"]) == ["conv3", "wide"]
    assert len(q["float_layers"]) <= 0.2 * q["quantizable_layers"]
    assert q["goal"]["measure"] == "accuracy" and q["goal"]["drop"] <= 1.0
    assert [t["keep_float"] for t in q["goal"]["tried"]] == [[], [q["float_layers"][0]], q["float_layers"]]
    assert q["cost"]["bytes"] > q["cost"]["full_int8_bytes"]   # float weights of two convs
    assert accuracy_of(art.path, data) >= float_acc - 1.5      # held-out test split, not the goal's val split


def test_without_labels_the_goal_is_agreement_with_the_float_model(wide, data, tmp_path):
    from types import SimpleNamespace

    images_only = SimpleNamespace(x_train=data.x_train, x_val=data.x_val, source="images only")
    art = int8(wide[0], "tflite", images_only, tmp_path, max_accuracy_drop=1.0)
    goal = art.quantization["goal"]
    assert goal["measure"] == "top1_agreement" and goal["baseline"] == 100.0 and goal["drop"] <= 1.0
    assert len(art.quantization["float_layers"]) <= 2


def test_unreachable_goal_exits_1_with_one_line(wide, tmp_path, capsys):
    model, path = wide
    code, out, err = run_cli(capsys, ["export", path, "--to", "tflite", "--quantize", "int8", "--data",
                                      _npz(tmp_path), "--max-accuracy-drop", "1", "--option",
                                      "tflite:float_limit=0.01", "-o", str(tmp_path / "out")])
    assert code == 1, err
    lines = [l for l in err.splitlines() if l.startswith("optkit: ") and "max-accuracy-drop" in l]
    assert len(lines) == 1 and "limit 1" in lines[0]
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "wide_int8.tflite")


def _npz(tmp_path):
    d = quant_models.faint_quadrant_task(n_train=200, n_val=100, n_test=100)
    path = tmp_path / "data.npz"
    x = np.concatenate([d.x_train, d.x_val, d.x_test])
    y = np.concatenate([d.y_train, d.y_val, d.y_test])
    np.savez(path, x=(x * 255).round().astype(np.uint8), y=y)
    return str(path)


def test_cli_quant_report_json_and_table(wide, tmp_path, capsys):
    model, path = wide
    args = ["export", path, "--to", "tflite", "--quantize", "int8", "--data", _npz(tmp_path),
            "--quant-report", "--keep-float", "wide,conv3", "-o", str(tmp_path / "out")]
    code, out, err = run_cli(capsys, args + ["--json"])
    assert code == 0, err
    (art,) = json.loads(out)["artifacts"]
    q = art["quantization"]
    assert q["float_layers"] == ["wide", "conv3"] and q["layers"][0]["snr_db"] is not None
    code, out, err = run_cli(capsys, args)
    assert "int8 layers, worst first" in out and "kept float" in out


# ----------------------------------------------------------------- ONNX (onnxruntime)

def excluded_convs(path):
    """Conv nodes whose weight is a plain float initializer (not fed by a DequantizeLinear)."""
    import onnx

    g = onnx.load(path).graph
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    names = ["conv1", "wide", "conv3", "conv4"]
    return {quant_debug.layers_in(n.name, names, keras3_scopes=True)[0]: n.input[1] not in dq
            for n in g.node if n.op_type == "Conv"}


def test_onnx_keep_float_excludes_those_nodes(wide, data, float_acc, tmp_path):
    art = int8(wide[0], "onnx", data, tmp_path, keep_float="wide,conv3", quant_report=True)
    assert art.status == "ok", art.reason
    floats = excluded_convs(art.path)
    assert {k for k, v in floats.items() if v} == {"wide", "conv3"} and len(floats) == 4
    assert accuracy_of(art.path, data) >= float_acc - 1
    assert {r["name"] for r in art.quantization["layers"][:2]} == {"wide", "conv3"}


def test_onnx_max_accuracy_drop_tries_calibration_then_float_layers(wide, data, float_acc, tmp_path):
    art = int8(wide[0], "onnx", data, tmp_path, max_accuracy_drop=1.0)
    assert art.status == "ok", art.reason
    q = art.quantization
    tried = [(m["method"], m["per_channel"]) for m in q["goal"]["methods_tried"]]
    assert tried == [(m, pc) for pc in (True, False) for m in quant_debug.METHODS]   # none fixes a wide channel
    assert 1 <= len(q["float_layers"]) <= 2 and q["goal"]["drop"] <= 1.0
    assert accuracy_of(art.path, data) >= float_acc - 1.5


# ----------------------------------------------------------------- optimize

@pytest.mark.unit
def test_optimize_plan_carries_the_int8_settings_and_refuses_them_without_int8(tmp_path, capsys):
    from optkit import plan as plan_mod

    model = tmp_path / "m.keras"
    model.write_bytes(b"plans hash the file; nothing loads it")
    plan = plan_mod.resolve(model=str(model), to="tflite:int8,onnx:int8",
                            int8={"quant_report": True, "calibration_method": "entropy"})
    path = tmp_path / "plan.json"
    plan_mod.write(plan, str(path))
    assert plan_mod.load(str(path)).int8 == {"quant_report": True, "calibration_method": "entropy"}
    code, _, err = run_cli(capsys, ["optimize", str(model), "--to", "tflite", "--quant-report", "--dry-run"])
    assert code == 2 and "--quant-report apply to int8 tflite or onnx; --to (int8) has neither" in err
    code, _, err = run_cli(capsys, ["optimize", str(model), "--to", "tflite:int8", "--per-channel", "--dry-run"])
    assert code == 2 and "--per-channel apply to onnx" in err


@pytest.mark.slow
def test_optimize_reports_the_layers_in_report_json_html_and_terminal(wide, tmp_path, capsys):
    model, path = wide
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, ["optimize", path, "--data", _npz(tmp_path), "--to", "tflite:int8",
                                         "--quant-report", "--keep-float", "wide,conv3", "-o", str(out)])
    assert code == 0, err[-2000:]
    report = json.loads((out / "report.json").read_text())
    (art,) = report["variants"][0]["artifacts"]
    q = art["quantization"]
    assert q["float_layers"] == ["wide", "conv3"] and {r["name"] for r in q["layers"][:2]} == {"wide", "conv3"}
    assert "int8 layers, worst first" in stdout
    assert 'alt="Per-layer int8 error: baseline · TFLite int8' in (out / "report.html").read_text()
    assert (out / "quant_layers_baseline_tflite_int8.png").exists()
