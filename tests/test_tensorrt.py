"""exporters.tensorrt as far as this machine allows (no NVIDIA GPU, and `tensorrt` cannot be
installed without NVIDIA's index): version gating, the optimization profile, input-shape checks,
option errors, and the ONNX the TensorRT parser would be given (built and run here on
onnxruntime). Building and running an engine needs a GPU and is not tested here."""
import numpy as np
import pytest

from exporters import tensorrt
from optkit.errors import UserError


@pytest.mark.unit
@pytest.mark.parametrize("version, ok", [("10.0.1", True), ("10.13.0.35", True), ("11.4.0.106", True),
                                         ("8.6.1", False), ("12.0.0", False), ("dev", False)])
def test_only_tensorrt_10_and_11_are_accepted(version, ok):
    supported, reason = tensorrt.version_supported(version)
    assert supported is ok
    assert (reason == "") is ok
    if not ok:
        assert version in reason and "\n" not in reason


@pytest.mark.unit
def test_profile_covers_batch_1_to_max_with_fixed_height_and_width():
    lo, opt, hi = tensorrt.profile_shapes("image", (-1, 32, 32, 3), max_batch=16)
    assert (lo, opt, hi) == ((1, 32, 32, 3), (1, 32, 32, 3), (16, 32, 32, 3))
    lo, opt, hi = tensorrt.profile_shapes("image", (-1, 32, 32, 3), max_batch=16, opt_batch=8)
    assert opt == (8, 32, 32, 3)
    assert tensorrt.profile_shapes("image", (1, 8, 8, 3), max_batch=16) == ((1, 8, 8, 3),) * 3


@pytest.mark.unit
def test_dynamic_height_and_width_take_the_users_range_never_minus_one():
    with pytest.raises(UserError, match="dynamic height/width .*hw_range=") as info:
        tensorrt.profile_shapes("image", (-1, -1, -1, 3), max_batch=4)
    assert "\n" not in str(info.value)
    lo, opt, hi = tensorrt.profile_shapes("image", (-1, -1, -1, 3), max_batch=4,
                                          hw_range=tensorrt.parse_hw_range("128:224:512"))
    assert (lo, opt, hi) == ((1, 128, 128, 3), (1, 224, 224, 3), (4, 512, 512, 3))
    assert all(d > 0 for shape in (lo, opt, hi) for d in shape)
    with pytest.raises(UserError, match="dynamic channel count"):
        tensorrt.profile_shapes("image", (-1, 32, 32, -1), max_batch=4, hw_range=(8, 8, 8))


@pytest.mark.unit
@pytest.mark.parametrize("text, expected", [("224", (224, 224, 224)), ("128:224:512", (128, 224, 512)),
                                            ("64,96,128", (64, 96, 128)), (None, None)])
def test_hw_range_parses(text, expected):
    assert tensorrt.parse_hw_range(text) == expected


@pytest.mark.unit
@pytest.mark.parametrize("text", ["512:224:128", "0:8:8", "a:b:c", "1:2"])
def test_bad_hw_range_is_one_user_error(text):
    with pytest.raises(UserError, match="hw_range must be MIN:OPT:MAX"):
        tensorrt.parse_hw_range(text)


@pytest.mark.unit
def test_input_shapes_outside_the_profile_are_refused_before_the_gpu():
    lo, hi = (1, 32, 32, 3), (16, 32, 32, 3)
    tensorrt.check_input_shape("image", (16, 32, 32, 3), lo, hi)
    with pytest.raises(ValueError, match=r"batch 17; this engine takes batches 1 to 16 .*max_batch"):
        tensorrt.check_input_shape("image", (17, 32, 32, 3), lo, hi)
    with pytest.raises(ValueError, match=r"shape \(2, 64, 64, 3\); this engine accepts"):
        tensorrt.check_input_shape("image", (2, 64, 64, 3), lo, hi)
    with pytest.raises(ValueError, match="rank 4"):
        tensorrt.check_input_shape("image", (32, 32, 3), lo, hi)


@pytest.mark.unit
@pytest.mark.parametrize("options, message", [({"max_batch": 0}, "max_batch must be a positive integer"),
                                              ({"max_batch": "x"}, "max_batch must be a positive integer"),
                                              ({"max_batch": 4, "opt_batch": 8}, "opt_batch .* larger than max_batch"),
                                              ({"hw_range": "9:3:1"}, "hw_range")])
def test_bad_options_are_user_errors_before_anything_is_built(options, message, tmp_path):
    with pytest.raises(UserError, match=message):
        tensorrt.export(None, tmp_path / "m.engine", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def model():
    from optkit import keras_io

    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16, 16, 3), name="image"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1)),
    ], name="tiny")


def _run(path, x):
    from optkit import runner

    return runner.load_predictor(str(path), runtime="onnxruntime")(x)[0]


def test_int8_engine_source_is_symmetric_qdq_that_runs(model, tmp_path):
    """TensorRT's explicit quantization needs Q/DQ pairs with zero points 0; the ONNX must
    still compute the model (checked on onnxruntime, the same graph TensorRT would parse)."""
    import onnx
    from onnx import numpy_helper

    from optkit import keras_io, parity

    x = np.random.default_rng(0).uniform(size=(64, 16, 16, 3)).astype(np.float32)
    path = tmp_path / "int8.onnx"
    details = tensorrt.onnx_for_engine(model, str(path), quantize="int8", data=x[:48])
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 3
    inits = {t.name: t for t in m.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in m.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(not zp.any() for zp in zero_points)
    assert details["symmetric"] is True and details["per_channel"] is True and details["reduce_range"] is False
    reference = keras_io.predict(model, x[48:])
    out = _run(path, x[48:])
    assert (out.argmax(-1) == reference.argmax(-1)).mean() >= parity.tolerance_for("int8").min_top1


def test_float16_engine_source_has_float16_weights_and_float32_io(model, tmp_path):
    import onnx

    path = tmp_path / "fp16.onnx"
    tensorrt.onnx_for_engine(model, str(path), quantize="float16")
    m = onnx.load(str(path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in m.graph.input)
    x = np.random.default_rng(1).uniform(size=(8, 16, 16, 3)).astype(np.float32)
    from optkit import keras_io

    assert np.abs(_run(path, x) - keras_io.predict(model, x)).max() < 5e-2
