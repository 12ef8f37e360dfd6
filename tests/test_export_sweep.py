"""The export sweep (benchmarks/export_sweep.py) stays green on the zoo architectures whose graphs
broke the converters (issue #17): EfficientNet's captured Normalization constants and ConvNeXt's
XLA-marked grouped convolutions and exact GELU. Trained briefly, BatchNormalization settled, so the
model's answers depend on its input. The whole zoo through every format and precision is the
benchmark's job (minutes per architecture here); this keeps the hard cases in CI. int8 fidelity is
not asserted here: it needs models trained to ~3x chance (EfficientNet-B0: 20 rounds, 3 minutes),
and the benchmark run shows it (EfficientNet-B0 full int8 TFLite and ONNX ok at 32% accuracy,
failed at 16%: a barely trained deep model is unstable, see optkit.parity.source_stability)."""
import importlib.util
import os
import platform

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep_module():
    spec = importlib.util.spec_from_file_location("export_sweep", os.path.join(ROOT, "benchmarks", "export_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_efficientnet_and_convnext_export_to_onnx_and_coreml_and_validate(tmp_path):
    sweep = _sweep_module()
    # EfficientNet learns from real pixels (its contract is raw 0-255): a few rounds make it stable
    # enough that float kernels' rounding is not amplified past 1e-4 (one round on 44 images:
    # 6e-4). ConvNeXt needs 12 rounds (20 minutes here) to reach 3x chance; one short round
    # leaves its answers input-dependent, which is what float parity needs.
    rows = sweep.sweep(["efficientnet_b0"], ["onnx", "coreml"], ["none"], size=32, train_samples=1000,
                       max_rounds=4, out_dir=str(tmp_path), log=lambda line: None)
    rows += sweep.sweep(["convnext_tiny"], ["onnx", "coreml"], ["none"], size=32, train_samples=64,
                        max_rounds=1, out_dir=str(tmp_path), log=lambda line: None)
    cells = {(r["model"], r["format"], r["precision"]): r for r in rows}
    assert len(cells) == 4
    expected_coreml = "ok" if platform.system() == "Darwin" else "unverified"
    for (model, fmt, precision), row in cells.items():
        wanted = expected_coreml if fmt == "coreml" else "ok"
        assert row["status"] == wanted, (model, fmt, precision, row["reason"])
        if fmt == "onnx":
            # judged against a model whose answer depends on its input
            assert row["predicted_classes"] >= 2 and row["top1"] >= 0.97 and row["max_abs"] < 1e-4, row
    print("\n" + sweep.matrix(rows))


@pytest.mark.slow
def test_small_zoo_models_trained_to_target_pass_full_int8(tmp_path):
    """The benchmark's own loop on the two smallest CNNs, as the sweep runs it: trained until 3x
    chance and steady under input noise, then float and full int8 through TFLite and ONNX, every
    cell `ok` without the accuracy-aware fallback (about a minute here)."""
    sweep = _sweep_module()
    lines = []
    rows = sweep.sweep(["lenet5", "resnet_cifar"], ["tflite", "onnx"], ["none", "int8"], out_dir=str(tmp_path),
                       accuracy_aware=False, log=lines.append)
    trained = [line for line in lines if "params, trained" in line]
    assert len(trained) == 2 and not any("NOT reached" in line for line in trained), trained
    assert len(rows) == 8
    for row in rows:
        assert row["status"] == "ok", (row["model"], row["format"], row["precision"], row["reason"])
        assert row["predicted_classes"] >= 2 and row["top1"] >= 0.9, row
        if row["precision"] == "int8":
            assert row["size_mb"] < 0.5 * next(r["size_mb"] for r in rows if r["model"] == row["model"]
                                               and r["format"] == row["format"] and r["precision"] == "none")


def _row(model, fmt, status):
    return {"model": model, "input": [32, 32, 1], "format": fmt, "precision": "none", "predicted_classes": 10,
            "val_accuracy": 0.3, "status": status, "reason": "" if status == "ok" else "validation failed: x",
            "max_abs": 1e-7, "top1": 1.0, "snr_db": 90.0, "mixed": None, "size_mb": 0.25, "time_s": 1.5}


@pytest.mark.unit
def test_resume_keeps_saved_models_and_prints_their_matrix(tmp_path, capsys):
    """--resume: models already in --json are not run again; the matrix and the exit code cover
    them (a zoo sweep runs for hours here and is finished in parts)."""
    import json

    sweep = _sweep_module()
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps([_row("lenet5", "tflite", "ok"), _row("lenet5", "onnx", "ok"),
                                 _row("alexnet", "onnx", "failed")]))
    assert sweep.main(["--models", "lenet5", "--formats", "tflite,onnx", "--precisions", "none",
                       "--json", str(saved), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming: 1 model(s)" in out and "2 cells: 2 ok" in out
    assert [line.split() for line in out.splitlines() if line.startswith("lenet5 ")] == [["lenet5", "ok", "ok"]]
    # other models' rows stay in the file
    assert sorted(r["model"] for r in json.loads(saved.read_text())) == ["alexnet", "lenet5", "lenet5"]
    # cells not asked for are not shown but stay in the file
    assert sweep.main(["--models", "lenet5", "--formats", "tflite", "--precisions", "none",
                       "--json", str(saved), "--resume"]) == 0
    assert "1 cells: 1 ok" in capsys.readouterr().out
    assert sorted((r["model"], r["format"]) for r in json.loads(saved.read_text())) == [
        ("alexnet", "onnx"), ("lenet5", "onnx"), ("lenet5", "tflite")]
    # a saved failure stays a failure
    saved.write_text(json.dumps([_row("alexnet", "onnx", "failed")]))
    assert sweep.main(["--models", "alexnet", "--formats", "onnx", "--precisions", "none",
                       "--json", str(saved), "--resume"]) == 1
    assert "1 failed" in capsys.readouterr().out


@pytest.mark.unit
def test_resume_without_json_is_one_line():
    sweep = _sweep_module()
    with pytest.raises(SystemExit, match="--resume needs --json"):
        sweep.main(["--models", "lenet5", "--resume"])
