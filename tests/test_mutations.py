"""A mutation corpus for export validation: broken quantized artifacts must fail, good ones pass.

Each mutant is a real artifact (converted by the real converters, run by LiteRT/onnxruntime),
checked against the *unmutated* source model by optkit.export.check_artifact, the same check
`optkit export` and `optimize` apply, on real labelled data in the model's input space:
- constant outputs (the head's kernel zeroed: softmax(bias) whatever the input);
- calibrated in the wrong input range (a raw-pixel model calibrated on [0, 1] images);
- swapped input channels (the first kernel's input channels reversed: it sees BGR);
- another model's weights (same architecture, trained under another contract);
- NaN in the outputs (a NaN bias; for int8 ONNX a Div by zero appended to the graph).
And good int8 exports of seven trained models (classification and segmentation; raw, unit, tf,
torch contracts, a Rescaling layer inside) must all pass: 0 false failures.
"""
import numpy as np
import pytest

import exporters
from optkit import contract, keras_io
from optkit.data import load_data
from optkit.export import VALIDATION_SAMPLES, check_artifact, export_one
from tests import user_models as um

pytestmark = pytest.mark.slow


def _data(m):
    shape = (um.SEG_SIZE, um.SEG_SIZE, 3) if m.task == "segmentation" else (um.SIZE, um.SIZE, 3)
    return load_data(m.npz, input_shape=shape, num_classes=um.SEG_CLASSES if m.task == "segmentation" else um.CLASSES)


def _model_space(m, data):
    return contract.apply(data, contract.parse(m.model_contract))


def _judge(fmt, quantize, source, path, data):
    module = exporters.get(fmt)
    inputs = [data.x_val[:VALIDATION_SAMPLES].astype(np.float32)]
    return check_artifact(module, path, source, quantize, inputs=inputs, data=data, real_data=True, threads=1)


@pytest.mark.parametrize("name", um.NAMES)
def test_good_int8_exports_of_trained_models_pass(tmp_path, name):
    m = um.get(name)
    model = keras_io.load(m.path).model
    data = _model_space(m, _data(m))
    for fmt in ("tflite", "onnx"):
        module = exporters.get(fmt)
        # Per-channel ONNX weights (TFLite's own default): per-tensor int8 ONNX of these small models
        # measured 2-4 points below float (tf model 3.1, U-Net mIoU 3.7: real losses the 3-point
        # check rightly fails), per-channel 0.5-1.5.
        options = {"per_channel": True} if fmt == "onnx" else {}
        art = export_one(module, model, str(tmp_path / f"m_int8{module.SUFFIX}"), quantize="int8", data=data,
                         threads=1, contract=contract.parse(m.model_contract), options=options)
        assert art.status == "ok", (name, fmt, art.reason)
        assert art.parity.snr_db > 10 and art.parity.metric["drop_points"] <= art.parity.metric["max_drop_points"], \
            (name, fmt, art.parity)


def _clone(model):
    return keras_io.clone(model)


def _zero_head(model):
    layer = model.get_layer("mask" if "mask" in [l.name for l in model.layers] else "head")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), bias])
    return model


def _swap_channels(model):
    layer = model.get_layer("conv1")
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel[:, :, ::-1, :].copy(), *rest])
    return model


def _nan_bias(model):
    layer = model.get_layer("head")
    kernel, bias = layer.get_weights()
    bias = bias.copy()
    bias[0] = np.nan
    layer.set_weights([kernel, bias])
    return model


def _append_nan(path):
    """ONNX: output / 0 appended to the graph (0/0 = NaN, x/0 = inf)."""
    import onnx
    from onnx import TensorProto, helper

    graph_model = onnx.load(path)
    graph = graph_model.graph
    out = graph.output[0].name
    graph.initializer.append(helper.make_tensor("optkit_zero", TensorProto.FLOAT, [], [0.0]))
    graph.node.append(helper.make_node("Div", [out + "_pre", "optkit_zero"], [out]))
    for node in graph.node[:-1]:
        node.output[:] = [o + "_pre" if o == out else o for o in node.output]
    onnx.save(graph_model, path)


@pytest.fixture(scope="module")
def unit_source():
    m = um.get("unit")
    return m, keras_io.load(m.path).model, _model_space(m, _data(m))


CELLS = [("tflite", "int8"), ("onnx", "int8"), ("tflite", "float16")]


@pytest.mark.parametrize("fmt, quantize", CELLS)
@pytest.mark.parametrize("mutation", ["constant", "swapped_channels", "other_weights", "nan"])
def test_mutants_fail_validation(tmp_path, unit_source, fmt, quantize, mutation):
    m, source, data = unit_source
    module = exporters.get(fmt)
    path = str(tmp_path / f"mutant{module.SUFFIX}")
    if mutation == "other_weights":
        mutant = keras_io.load(um.get("torch").path).model        # same architecture, other training
    else:
        mutant = {"constant": _zero_head, "swapped_channels": _swap_channels,
                  "nan": _nan_bias if fmt == "tflite" else (lambda x: x)}[mutation](_clone(source))
    # int8 tensors cannot hold a NaN: the int8 TFLite mutant keeps its (NaN-biased) head in float
    # behind float I/O, the way --keep-float leaves a layer.
    options = {"int8_io": False, "keep_float": "head"} if (mutation == "nan" and fmt == "tflite" and
                                                            quantize == "int8") else {}
    module.export(mutant, path, quantize=quantize, data=data, **options)
    if mutation == "nan" and fmt == "onnx":
        _append_nan(path)
    if mutation == "nan":   # the mutant really produces NaN/inf
        out = module.load(path, threads=1)(data.x_val[:8].astype(np.float32))[0]
        assert not np.all(np.isfinite(out))
    parity = _judge(fmt, quantize, source, path, data)
    assert parity.ok is False, (mutation, fmt, quantize, parity)


@pytest.mark.parametrize("fmt, quantize", CELLS)
def test_calibrated_in_the_wrong_input_range_fails(tmp_path, fmt, quantize):
    """A raw-pixel model calibrated on [0, 1] images (what optkit did before the contract)."""
    m = um.get("raw")
    source = keras_io.load(m.path).model
    pixels = _data(m)
    module = exporters.get(fmt)
    path = str(tmp_path / f"wrong{module.SUFFIX}")
    wrong = contract.apply(pixels, contract.parse("unit"))
    if quantize == "float16":
        # float16 has no calibration: its wrong-range twin is the float model of another contract
        # (a [-1, 1] model fed raw pixels), which must fail too.
        source_tf = keras_io.load(um.get("tf").path).model
        module.export(source_tf, path, quantize=quantize, data=wrong)
    else:
        module.export(source, path, quantize=quantize, data=wrong)
    parity = _judge(fmt, quantize, source, path, contract.apply(pixels, contract.parse("raw")))
    assert parity.ok is False, (fmt, quantize, parity)
