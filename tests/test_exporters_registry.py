"""The exporter registry, the shared parity validator and the TensorRT guard - no TensorFlow needed."""
import os
import subprocess
import sys

import numpy as np
import pytest

import exporters
from exporters import _common
from optkit import parity
from optkit.errors import UserError

def test_registry_discovers_every_format_module():
    formats = exporters.registry()
    folder = os.path.dirname(exporters.__file__)
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")}
    assert {m.__name__.rpartition(".")[2] for m in formats.values()} == modules   # every file, once
    assert {"tflite", "onnx", "keras"} <= set(formats)
    for name, module in formats.items():
        assert module.NAME == name
        assert "none" in module.PRECISIONS
        assert set(module.PRECISIONS) <= set(parity.TOLERANCES)
        ok, reason = module.available()
        assert isinstance(ok, bool) and (ok or reason)


def test_registry_and_exporters_import_no_tensorflow():
    code = (
        "import sys, exporters\n"
        "exporters.registry()\n"
        "import optkit.parity, optkit.export, optkit.commands.export\n"
        "for name, m in exporters.registry().items(): m.available()\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'coremltools') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_unknown_format_is_a_user_error_with_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'tflite'"):
        exporters.get("tflit")
    with pytest.raises(UserError, match="unknown export format 'pytorch'; known: coreml, keras, onnx"):
        exporters.get("pytorch")


def test_format_names_are_case_and_space_insensitive():
    assert exporters.get(" ONNX ").NAME == "onnx"


# -- TensorRT: cannot run here; the guard says exactly why ----------------------------------


def test_tensorrt_unavailable_here_names_what_is_missing():
    from exporters import tensorrt

    ok, reason = tensorrt.available()
    if ok:
        pytest.skip("this machine has TensorRT and an NVIDIA GPU")
    try:
        import tensorrt as _  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    assert ok is False
    assert ("tensorrt not installed" in reason) == (not has_trt)
    assert ("no NVIDIA GPU" in reason) == (not tensorrt._gpu_present())
    assert "\n" not in reason


def test_tensorrt_load_raises_unavailable_with_the_same_reason(tmp_path):
    from exporters import tensorrt
    from optkit.errors import Unavailable

    ok, reason = tensorrt.available()
    if ok:
        pytest.skip("this machine has TensorRT and an NVIDIA GPU")
    with pytest.raises(Unavailable) as info:
        tensorrt.load(tmp_path / "model.engine")
    assert str(info.value) == reason


# -- atomic writes ------------------------------------------------------------------------


def test_failed_write_leaves_no_artifact_and_no_temp_files(tmp_path):
    target = tmp_path / "model.tflite"
    with pytest.raises(RuntimeError):
        with _common.atomic_output(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half")
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_successful_write_replaces_an_existing_directory_artifact(tmp_path):
    target = tmp_path / "model_saved_model"
    target.mkdir()
    (target / "stale.pb").write_text("old")
    with _common.atomic_output(target) as tmp:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "saved_model.pb"), "w") as fh:
            fh.write("new")
    assert sorted(os.listdir(target)) == ["saved_model.pb"]
    assert [p.name for p in tmp_path.iterdir()] == ["model_saved_model"]


# -- the parity validator ---------------------------------------------------------------


def _probs(n=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_every_precision_has_a_tolerance_that_loosens_with_fewer_bits():
    t = parity.TOLERANCES
    assert t["none"].max_abs < t["float16"].max_abs < t["dynamic"].max_abs < t["int8"].max_abs
    assert t["none"].min_top1 >= t["float16"].min_top1 >= t["dynamic"].min_top1 >= t["int8"].min_top1


def test_float_noise_passes_with_full_top1_agreement():
    ref = _probs()
    p = parity.compare([ref], [ref + 1e-6], "none")
    assert p.ok and p.max_abs == pytest.approx(1e-6, rel=5e-2) and p.top1_agreement == 1.0


def test_output_count_is_checked_first():
    ref = _probs()
    with pytest.raises(parity.OutputCountMismatch, match="2 output"):
        parity.compare([ref], [ref, ref], "none")


def test_output_names_are_checked_before_shapes():
    ref = _probs()
    with pytest.raises(parity.OutputNameMismatch):
        parity.compare([ref], [ref[:, :5]], "none", names=["Identity"], expected_names=["output_0"])


def test_output_shapes_are_checked_before_values():
    ref = _probs()
    with pytest.raises(parity.OutputShapeMismatch, match=r"\(32, 5\)"):
        parity.compare([ref], [ref[:, :5]], "none")


def test_value_drift_beyond_the_float32_tolerance_fails():
    ref = _probs()
    with pytest.raises(parity.ValueMismatch, match="max \\|diff\\|") as info:
        parity.compare([ref], [ref + 1e-3], "none")
    assert info.value.parity.ok is False and info.value.parity.max_abs == pytest.approx(1e-3, rel=1e-2)


def test_same_drift_is_within_the_int8_tolerance():
    ref = _probs()
    assert parity.compare([ref], [ref + 1e-3], "int8").ok


def test_top1_disagreement_fails_even_when_values_are_within_tolerance():
    ref = _probs()
    swapped = ref[:, ::-1].copy()    # same values, different arg-max almost everywhere
    bound = float(np.abs(swapped - ref).max())
    tol = parity.Tolerance(max_abs=bound + 1e-6, min_top1=0.8)
    with pytest.raises(parity.ValueMismatch, match="top-1 agreement"):
        parity.compare([ref], [swapped], "int8", tolerance=tol)


def test_top1_swaps_between_classes_the_source_ties_are_not_disagreements():
    ref = np.full((32, 10), 0.1, np.float32)
    ref[:, 3] += 1e-3                      # the source's pick, by a hair
    cand = ref.copy()
    cand[:, 3] -= 2e-3                     # int8 noise flips it; values still within tolerance
    p = parity.compare([ref], [cand], "int8")
    assert p.ok and p.top1_agreement == 1.0
    with pytest.raises(parity.ValueMismatch):  # for float32 the same flip is far outside tolerance
        parity.compare([ref], [cand], "none")


def test_nan_in_the_artifact_output_fails():
    ref = _probs()
    bad = ref.copy()
    bad[3, 2] = np.nan
    with pytest.raises(parity.ValueMismatch, match="NaN"):
        parity.compare([ref], [bad], "int8")


def test_logit_outputs_are_compared_relative_to_their_range():
    ref = _probs() * 1000.0   # e.g. logits in the hundreds
    assert parity.compare([ref], [ref + 0.05], "none").ok   # 5e-5 of the range
    with pytest.raises(parity.ValueMismatch):
        parity.compare([ref], [ref + 1.0], "none")          # 1e-3 of the range


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="int4"):
        parity.tolerance_for("int4")


def test_inputs_are_matched_by_name_when_the_artifact_sorts_them():
    from optkit.runner import TensorSpec

    class Artifact:  # only the input specs matter to feed_order
        inputs = [TensorSpec("serving_default_a_meta:0", (None, 4), "float32"),
                  TensorSpec("serving_default_z_image:0", (None, 16, 16, 3), "float32")]

    assert parity.feed_order(["z_image", "a_meta"], Artifact) == [1, 0]
    assert parity.feed_order(["a_meta", "z_image"], Artifact) is None       # already in order
    assert parity.feed_order(["image", "meta"], Artifact) is None           # names do not correspond
    assert parity.feed_order(["z_image"], Artifact) is None                 # one input: position is enough


def test_one_list_of_precisions_every_exporter_and_tolerance_draws_from():
    from optkit import parity
    from optkit.records import PRECISIONS

    for name, module in exporters.registry().items():
        assert set(module.PRECISIONS) <= set(PRECISIONS), name
    assert set(parity.TOLERANCES) >= set(PRECISIONS)


@pytest.mark.unit
def test_every_exporter_declares_its_options_as_a_frozen_dataclass_checked_before_converting():
    import dataclasses

    from optkit import options

    for name, module in exporters.registry().items():
        assert dataclasses.is_dataclass(module.OPTIONS) and module.OPTIONS.__dataclass_params__.frozen, name
        for info in options.fields(module.OPTIONS):
            assert info.help, f"{name}.{info.name} has no help"
    with pytest.raises(UserError, match="onnx: calibration_method must be one of minmax, entropy, percentile"):
        exporters.get("onnx").export(None, "/nonexistent/m.onnx", calibration_method="kl")
    with pytest.raises(UserError, match=r"tflite: calibration_samples must be a positive integer, got 0"):
        exporters.get("tflite").export(None, "/nonexistent/m.tflite", quantize="int8", calibration_samples=0)
