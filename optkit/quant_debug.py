"""Accuracy-aware int8: per-layer error against float, selective float fallback, calibration choices.

The exporters (tflite, onnx) hand their int8 conversion here when the user asks for a diagnosis
(`quant_report`), names layers to keep float (`keep_float`) or sets an accuracy goal
(`max_accuracy_drop`). Two backends with one shape:

    TFLiteInt8  LiteRT's own `tf.lite.experimental.QuantizationDebugger`: a debug model whose
                NumericVerify ops compare every quantized op with its float twin fed the same
                (dequantized) inputs; converts again with `denylisted_nodes` for the fallback.
    OnnxInt8    onnxruntime's `quantize_static` (QDQ) with `nodes_to_exclude`, and its qdq loss
                debug helpers to dump every activation of the QDQ model; each Keras layer's float
                nodes are then run on the QDQ model's dequantized inputs, the same local
                comparison as LiteRT's NumericVerify.

Both report one row per Keras layer (a layer is what `--keep-float` names; a conv, its bias add
and its ReLU fuse into one TFLite op and several ONNX nodes): SNR in dB and RMSE of the layer's
quantized output against its float twin, plus the median per-channel SNR, because one wide-range
channel makes the per-tensor activation scale coarse for every other channel while the
whole-tensor SNR, dominated by that one channel, still looks fine. Rows are ranked worst first by
the lower of the two SNRs, the order `max_accuracy_drop` keeps layers float in.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from optkit.errors import RunFailure, UserError
from optkit.options import option

# The ONNX calibration methods worth offering (onnxruntime's CalibrationMethod names); the first
# is onnxruntime's default. Entropy and Percentile clip outliers, which helps exactly when one
# channel or a few samples stretch a tensor's range.
METHODS = ("minmax", "entropy", "percentile")
# How many layers the accuracy goal may keep float, as a share of the quantizable ones (issue 12).
DEFAULT_FLOAT_LIMIT = 0.2
# Validation samples for the accuracy goal: enough that one point is ~5 samples.
GOAL_SAMPLES = 500
_SUFFIX = re.compile(r"_\d+$")


class GoalNotMet(RunFailure):
    """--max-accuracy-drop could not be reached within the float-layer limit (exit 1). Carries
    the quantization record (diagnosis, what was tried) for the failed artifact's report."""

    def __init__(self, quantization: dict, message: str):
        super().__init__(message)
        self.quantization = quantization


@dataclass
class LayerError:
    name: str               # Keras layer (what --keep-float takes)
    op: str                 # TFLite op / ONNX op type of the worst node
    snr_db: float           # whole-tensor signal-to-quantization-noise ratio
    rmse: float
    channel_snr_db: Optional[float] = None   # median over channels of the per-channel SNR
    nodes: List[str] = field(default_factory=list)   # TFLite tensors / ONNX nodes of this layer

    @property
    def score(self) -> float:
        """The ranking key: the worse of whole-tensor and median per-channel SNR."""
        vals = [v for v in (self.snr_db, self.channel_snr_db) if v is not None and not math.isnan(v)]
        return min(vals) if vals else math.inf

    def to_json(self):
        return {"name": self.name, "op": self.op, "snr_db": _round(self.snr_db, cap=99.0),
                "rmse": _round(self.rmse, 6), "channel_snr_db": _round(self.channel_snr_db, cap=99.0)}


def _round(v, digits=2, cap=None):
    if v is None or math.isnan(v):
        return None
    if cap is not None:   # beyond 99 dB a layer is exact for any purpose (and JSON has no inf)
        v = min(max(v, -cap), cap)
    return round(float(v), digits)


def snr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def channel_snr_db(reference: np.ndarray, actual: np.ndarray) -> Optional[float]:
    """Median over the last axis (channels, NHWC) of each channel's SNR; channels that carry no
    signal (dead ReLUs) are skipped. None for outputs without a channel axis worth the name."""
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return None
    f = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    e = f - actual.reshape(f.shape).astype(np.float64)
    sig, noise = np.mean(f * f, axis=0), np.mean(e * e, axis=0)
    live = sig > 1e-12 * max(float(sig.max()), 1e-30)
    if not live.any():
        return None
    values = [snr_db(s, n) for s, n in zip(sig[live], noise[live])]
    return float(np.median(np.clip(values, -99.0, 99.0)))


# ------------------------------------------------------------------ naming: graph names -> Keras layers

def layer_names(model) -> List[str]:
    return [layer.name for layer in getattr(model, "layers", [])
            if type(layer).__name__ not in ("InputLayer",)]


def _keras3_scopes(model) -> bool:
    from optkit import keras_io

    return keras_io.flavour_of(model) == keras_io.KERAS3


def layers_in(graph_name: str, names: Sequence[str], keras3_scopes: bool = False) -> List[str]:
    """Keras layers a TFLite tensor or ONNX node name mentions, in model order.

    Converters name graph nodes after the TF ops they came from: `functional_1/conv3_1/BiasAdd`
    (Keras 3 suffixes every name scope with `_N`, so there `conv_1` is layer `conv`),
    `model/conv3/Conv2D` (tf_keras), and TFLite joins fused ops with ';'.
    """
    index = {n: i for i, n in enumerate(names)}
    found = set()
    for part in graph_name.split(";"):
        for seg in part.split("/"):
            seg = seg.split(":")[0]
            stripped = _SUFFIX.sub("", seg)
            for cand in ((stripped, seg) if keras3_scopes else (seg, stripped)):
                if cand in index:
                    found.add(cand)
                    break
    return sorted(found, key=index.get)


def resolve_keep_float(requested: Sequence[str], names: Sequence[str], nodes_by_layer: Dict[str, List[str]]):
    """The graph nodes to keep float for `requested` Keras layer names (or raw node names)."""
    out = []
    for name in requested:
        if name in nodes_by_layer:
            out.extend(nodes_by_layer[name])
            continue
        raw = [n for nodes in nodes_by_layer.values() for n in nodes if n == name]
        if raw:
            out.extend(raw)
            continue
        if name in names:
            raise UserError(f"--keep-float: layer '{name}' has no quantized op in the int8 graph "
                            f"(quantized layers: {', '.join(nodes_by_layer) or 'none'})")
        raise UserError(f"--keep-float: no layer named '{name}' (quantized layers: {', '.join(nodes_by_layer)})")
    return list(dict.fromkeys(out))


def parse_names(value) -> List[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[,+]", value) if v.strip()]
    return [str(v) for v in value]


def _group(rows: List[LayerError]) -> List[LayerError]:
    """One row per Keras layer (its worst node), worst first."""
    by_layer: Dict[str, LayerError] = {}
    for row in rows:
        have = by_layer.get(row.name)
        if have is None:
            by_layer[row.name] = row
        else:
            nodes = have.nodes + row.nodes
            if row.score < have.score:
                row.nodes = nodes
                by_layer[row.name] = row
            else:
                have.nodes = nodes
    return sorted(by_layer.values(), key=lambda r: r.score)


# ------------------------------------------------------------------ TFLite

class TFLiteInt8:
    """A calibrated TFLite conversion that can report per-layer error and re-quantize with layers
    kept float, without calibrating again."""

    backend = "tflite"

    def __init__(self, model, converter, samples: List[np.ndarray], *, int8_io: bool = True):
        from optkit import keras_io

        tf = keras_io.tf()
        self.tf, self.model, self.int8_io = tf, model, int8_io
        self.names = layer_names(model)
        self.k3 = _keras3_scopes(model)

        def dataset():
            for i in range(len(samples[0])):
                yield [a[i:i + 1] for a in samples]

        self.dataset = dataset
        converter.representative_dataset = dataset
        layer_metrics, direct_metrics = _tflite_metrics()
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics=layer_metrics, layer_direct_compare_metrics=direct_metrics, fully_quantize=int8_io)
        self.debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options)
        self._diagnoses: Dict[tuple, List[LayerError]] = {}
        self._nodes: Dict[str, List[str]] = {}

    def diagnose(self, keep: Sequence[str] = ()) -> List[LayerError]:
        """Per-layer error, worst first, of the int8 model with `keep` (Keras layers) in float."""
        import csv
        import io

        key = tuple(keep)
        if key in self._diagnoses:
            return self._diagnoses[key]
        if key or self._diagnoses:   # the constructor's options already hold the full-int8 case
            nodes = resolve_keep_float(keep, self.names, self.nodes_by_layer()) if keep else None
            layer_metrics, direct_metrics = _tflite_metrics()
            self.debugger.options = self.tf.lite.experimental.QuantizationDebugOptions(
                layer_debug_metrics=layer_metrics, layer_direct_compare_metrics=direct_metrics,
                denylisted_nodes=nodes, fully_quantize=self.int8_io)
        self.debugger.run()
        buf = io.StringIO()
        self.debugger.layer_statistics_dump(buf)   # the public view: op name, tensor name, metrics
        rows = []
        stats = list(csv.DictReader(io.StringIO(buf.getvalue())))
        for i, rec in enumerate(stats):
            tensor = rec["tensor_name"]
            found = layers_in(tensor, self.names, self.k3)
            if not found and i == len(stats) - 1 and self.names:
                found = [self.names[-1]]   # the output op carries the signature's name, not a layer's
            sig, noise = float(rec["signal_power"]), float(rec["mean_squared_error"])
            ch = rec.get("channel_snr_db")
            rows.append(LayerError(found[0] if found else tensor, rec["op_name"], snr_db(sig, noise),
                                   math.sqrt(max(noise, 0.0)),
                                   float(ch) if ch not in (None, "", "nan") else None, [tensor]))
            if not key:
                for name in found or [tensor]:
                    self._nodes.setdefault(name, []).append(tensor)
        self._diagnoses[key] = _group(rows)
        return self._diagnoses[key]

    def nodes_by_layer(self) -> Dict[str, List[str]]:
        if not self._diagnoses:
            self.diagnose()
        return self._nodes

    def quantize(self, keep_float: Sequence[str] = ()) -> bytes:
        """The int8 flatbuffer with `keep_float` (Keras layer names) left in float."""
        nodes = resolve_keep_float(keep_float, self.names, self.nodes_by_layer()) if keep_float else None
        self.debugger.options = self.tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=nodes, fully_quantize=self.int8_io)
        return self.debugger.get_nondebug_quantized_model()


def _tflite_metrics():
    """(layer_debug_metrics, layer_direct_compare_metrics) for the debugger.

    Per sample and layer: the signal power of the float twin's output and the median per-channel
    SNR. The debugger hands `layer_debug_metrics` NumericVerify's difference (dequantized output -
    float twin), which is reliable, and `layer_direct_compare_metrics` the quantized output and a
    float operand that is not (a reused buffer: values near 1e44 were seen). So the float output
    is rebuilt as dequantized output - difference: the debugger calls the first kind for every
    layer of a sample, then the second kind for every layer in the same order (debugger.py,
    _collect_layer_statistics), so a queue pairs them.
    """
    import collections

    pending = collections.deque()   # NumericVerify differences, one per layer, in call order
    current = [None]                # (float, difference) of the layer being scored

    def queue(diffs):
        pending.append(np.asarray(diffs, dtype=np.float64))
        return 0.0

    def signal(f, q, s, z):
        """Power of the float twin's output, rebuilt as dequantized output - difference."""
        d = (q.astype(np.float64) - z) * s
        diff = pending.popleft() if pending else None
        if diff is None or diff.shape != d.shape:
            current[0] = None
            return float("nan")
        current[0] = (d - diff, diff)
        return float(np.mean(np.square(current[0][0])))

    def channels(f, q, s, z):
        if current[0] is None:
            return float("nan")
        ref, diff = current[0]
        return _nan_if_none(channel_snr_db(ref, ref + diff))

    # insertion order matters: the debugger calls signal_power before channel_snr_db
    return {"_queue": queue}, {"signal_power": signal, "channel_snr_db": channels}


def _nan_if_none(v):
    return float("nan") if v is None else v


# ------------------------------------------------------------------ ONNX

class OnnxInt8:
    """onnxruntime static QDQ quantization of one float ONNX file, with diagnosis and exclusions."""

    backend = "onnx"

    def __init__(self, model, float_path: str, samples: List[np.ndarray], *, method: str = "minmax",
                 per_channel: bool = False, reduce_range: bool = True, op_types=None, workdir: str,
                 symmetric: bool = False):
        import onnx

        if method not in METHODS:
            raise UserError(f"unknown calibration method '{method}' (choose from {', '.join(METHODS)})")
        self.model, self.float_path, self.samples = model, float_path, samples
        self.method, self.per_channel, self.reduce_range, self.op_types = method, per_channel, reduce_range, op_types
        self.workdir = workdir
        self.extra_options = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
        self.names = layer_names(model)
        graph = onnx.load(float_path).graph
        self.input_names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        self._nodes = {}
        k3 = _keras3_scopes(model)
        self._primary = {}   # node -> the Keras layer its row is reported under (first in model order)
        inits = {t.name for t in graph.initializer}
        for node in graph.node:
            # tf2onnx names a conv with its BatchNorm folded in `Conv__34`; its weights keep the
            # layer names (`res0a_1/convolution/merged_input`, `res0a_bn_1/batchnorm/sub`)
            found = (layers_in(node.name, self.names, k3)
                     or layers_in(";".join(i for i in node.input if i in inits), self.names, k3))
            for name in found:   # a conv with its BN folded in answers to both layer names
                self._nodes.setdefault(name, []).append(node.name)
            if found:
                self._primary.setdefault(found[0], []).append(node.name)
        self._diagnoses: Dict[tuple, List[LayerError]] = {}

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        samples, names = self.samples, self.input_names

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._i = 0

            def get_next(self):
                if self._i >= len(samples[0]):
                    return None
                feed = {name: a[self._i:self._i + 1] for name, a in zip(names, samples)}
                self._i += 1
                return feed

            def rewind(self):
                self._i = 0

        return Reader()

    def quantize(self, keep_float: Sequence[str] = (), dst: Optional[str] = None, method: Optional[str] = None,
                 per_channel: Optional[bool] = None) -> str:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = method or self.method
        per_channel = self.per_channel if per_channel is None else per_channel
        nodes = resolve_keep_float(keep_float, self.names, self._nodes) if keep_float else None
        dst = dst or tempfile.mktemp(suffix=".onnx", dir=self.workdir)
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        quantize_static(self.float_path, dst, self.reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=self.op_types, per_channel=per_channel,
                        reduce_range=self.reduce_range, nodes_to_exclude=nodes, calibrate_method=calib,
                        calibration_providers=["CPUExecutionProvider"], extra_options=self.extra_options)
        return dst

    def nodes_by_layer(self) -> Dict[str, List[str]]:
        return self._nodes

    def diagnose(self, keep: Sequence[str] = ()) -> List[LayerError]:
        """Each Keras layer's float nodes run on the QDQ model's dequantized inputs, compared with
        the QDQ model's (dequantized) outputs of that layer; `keep` layers stay float."""
        import onnx

        key = tuple(keep)
        if key in self._diagnoses:
            return self._diagnoses[key]
        qdq_path = self.quantize(keep)
        acts = _dump_activations(qdq_path, self.reader(), os.path.join(self.workdir, "qdq_dump.onnx"))
        deq = {}   # tensor -> dequantized value per sample, as the QDQ model's consumers see it
        for name, values in acts.items():
            if name.endswith(_DQ_SUFFIX):
                deq[name[:-len(_DQ_SUFFIX)]] = values
        for name, values in acts.items():
            deq.setdefault(name, values)
        float_model = onnx.load(self.float_path)
        quantized = _quantized_tensors(qdq_path)
        readers = {}
        for node in float_model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node.name)
        rows = []
        absorbed = set()
        for layer, node_names in self._primary.items():
            if layer in keep or set(node_names) <= absorbed:
                continue
            # The QDQ quantizer fuses a Conv/Add with the ReLU after it (the Conv's own output no
            # longer exists): grow the twin over the readers until its outputs exist in the QDQ model.
            nodes = set(node_names)
            twin = _twin(float_model, nodes)
            for _ in range(3):
                missing = [o for o in (twin[2] if twin else []) if o not in deq]
                if not missing:
                    break
                nodes |= {r for o in missing for r in readers.get(o, [])}
                twin = _twin(float_model, nodes)
            if twin is None:
                continue
            absorbed |= nodes
            model, inputs, outputs = twin
            touched = {t for n in model.graph.node for t in list(n.input) + list(n.output)}
            if not touched & quantized or not all(i in deq for i in inputs):
                continue   # nothing of this layer is int8, or its inputs were never dumped
            rows.append(_compare_twin(layer, model, inputs, outputs, deq, float_model))
        self._diagnoses[key] = sorted([r for r in rows if r is not None], key=lambda r: r.score)
        return self._diagnoses[key]


_DQ_SUFFIX = "_DequantizeLinear_Output"


def _dump_activations(path, reader, aug_path):
    """Every float tensor of the model, per sample, in its own shape.

    onnxruntime's qdq_loss_debug.modify_model_output_intermediate_tensors does the same but
    flattens each tensor to 1-D; the twins below need the shapes, so outputs are added as they
    are. Graph optimizations stay off so the Q/DQ pairs are not fused away (as collect_activations).
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.load(path)
    have = {o.name for o in m.graph.output}
    quant_outputs = {o for n in m.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in have and o not in quant_outputs]
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    onnx.save(m, aug_path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(aug_path, sess_options=opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    acts = {}
    for feed in reader:
        for name, value in list(feed.items()) + list(zip(outs, sess.run(None, feed))):
            acts.setdefault(name, []).append(value)
    return acts


def _quantized_tensors(path):
    """Tensors the QDQ model quantizes: activations (inputs of QuantizeLinear) and weights (stored
    int8, named by their DequantizeLinear outputs)."""
    import onnx

    out = set()
    for n in onnx.load(path).graph.node:
        if n.op_type == "QuantizeLinear":
            out.add(n.input[0])
        elif n.op_type == "DequantizeLinear" and n.output[0].endswith(_DQ_SUFFIX):
            out.add(n.output[0][:-len(_DQ_SUFFIX)])
    return out


def _twin(float_model, node_names):
    """A small float ONNX model of just these nodes: inputs = activations entering them."""
    import onnx
    from onnx import helper

    graph = float_model.graph
    nodes = [n for n in graph.node if n.name in node_names]
    if not nodes:
        return None
    inits = {t.name: t for t in graph.initializer}
    produced = {o for n in nodes for o in n.output}
    consumed_outside = {i for n in graph.node if n.name not in node_names for i in n.input}
    graph_outputs = {o.name for o in graph.output}
    inputs = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced and i not in inits))
    outputs = [o for n in nodes for o in n.output if o in consumed_outside or o in graph_outputs]
    if not inputs or not outputs:
        return None
    used_inits = [inits[i] for n in nodes for i in n.input if i in inits]
    g = helper.make_graph(
        nodes, "twin",
        [helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs],
        initializer=list({t.name: t for t in used_inits}.values()))
    m = helper.make_model(g, opset_imports=list(float_model.opset_import))
    m.ir_version = float_model.ir_version
    return m, inputs, outputs


def _compare_twin(layer, twin, inputs, outputs, deq, float_model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(twin.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    out = outputs[-1]   # the layer's last output (after its activation) is what the next layer sees
    if out not in deq:
        return None
    sig = noise = 0.0
    chans = []
    for k in range(len(deq[out])):
        feed = {i: np.asarray(deq[i][k], dtype=np.float32) for i in inputs}
        ref = sess.run([out], feed)[0]
        got = np.asarray(deq[out][k], dtype=np.float32)
        if ref.shape != got.shape:
            return None
        sig += float(np.mean(np.square(ref, dtype=np.float64)))
        noise += float(np.mean(np.square(ref - got, dtype=np.float64)))
        c = channel_snr_db(_nhwc(ref), _nhwc(got))
        if c is not None:
            chans.append(c)
    n = max(len(deq[out]), 1)
    producer = {o: nd for nd in float_model.graph.node for o in nd.output}
    op = producer[out].op_type if out in producer else "?"
    weighted = [nd.op_type for nd in twin.graph.node if nd.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    return LayerError(layer, weighted[0] if weighted else op, snr_db(sig / n, noise / n), math.sqrt(noise / n),
                      float(np.mean(chans)) if chans else None, [nd.name for nd in twin.graph.node])


def _nhwc(a):
    """ONNX convs run NCHW inside tf2onnx graphs; put channels last for channel_snr_db."""
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


# ------------------------------------------------------------------ the accuracy goal

@dataclass
class GoalResult:
    keep_float: List[str]
    drop: float                 # points below float (accuracy) or 100 * (1 - top-1 agreement)
    baseline: float
    metric: float
    measure: str                # "accuracy" | "top1_agreement"
    tried: List[dict]
    method: Optional[str] = None


def evaluator(model, data, predict_file: Callable[[str], Callable]):
    """(measure name, float score, score(path) -> float, faithful(path) -> None or why not).

    `score`: accuracy in points (0-100) on labelled validation data (optkit.metrics: top-1, or
    pixel accuracy for segmentation), or without labels the agreement with the float model's
    predicted classes (its outputs are the labels). `faithful`: the value checks the exporter's
    validator applies afterwards (optkit.parity.compare: SNR, max |diff|, top-1 agreement) on the
    same samples, so a goal is never "reached" by an artifact the validator then fails (a model
    near chance loses no accuracy however wrong its int8 copy is). Call it after `score` on the
    same path: it reuses those outputs."""
    from optkit import keras_io, metrics

    x, y = _validation(data)
    ref = keras_io.predict(model, x)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    if y is None:
        y, measure = metrics.predicted_labels(ref), "top1_agreement"
    else:
        measure = "accuracy"
    baseline = 100.0 * metrics.accuracy(ref, y)
    last = {}

    def score(path):
        predict, outputs = predict_file(path), []

        def recorded(batch):
            out = predict(batch)
            outputs.append(np.asarray(out[0] if isinstance(out, (list, tuple)) else out))
            return out

        value = 100.0 * metrics.evaluate(recorded, x, y)["accuracy"]
        last.clear()
        last[path] = np.concatenate(outputs)
        return value

    def faithful(path) -> Optional[str]:
        from optkit import parity

        if path not in last:
            score(path)
        try:
            parity.compare([ref], [last[path]], "int8", real_data=True)
        except parity.ParityError as exc:
            return str(exc)
        return None

    return measure, baseline, score, faithful


def _validation(data):
    if data is None:
        raise UserError("--max-accuracy-drop needs --data (validation images, labelled or not)")
    for xs, ys in (("x_val", "y_val"), ("x_test", "y_test"), ("x_train", "y_train")):
        x = getattr(data, xs, None)
        if x is not None and len(x):
            y = getattr(data, ys, None)
            y = None if y is None or len(y) != len(x) else np.asarray(y)[:GOAL_SAMPLES]
            return np.asarray(x[:GOAL_SAMPLES], dtype=np.float32), y
    raise UserError("--max-accuracy-drop: --data has no samples")


def float_limit(n_layers: int, share: float = DEFAULT_FLOAT_LIMIT) -> int:
    return max(1, int(math.floor(share * n_layers + 1e-9)))


def producers(model) -> Dict[str, List[str]]:
    """Keras layer -> the layers whose outputs it reads (from the model's config)."""
    from optkit import graph_edit, keras_io

    out: Dict[str, List[str]] = {}
    try:
        for source, readers in graph_edit.topology(keras_io.as_keras3(model)).consumers.items():
            for reader in readers:
                out.setdefault(reader, []).append(source)
    except Exception:  # noqa: BLE001 - without the wiring the search still follows the diagnosis
        return {}
    return out


def _quantized_neighbours(layer, producers_of, readers_of, quantized):
    """The nearest quantized layers writing `layer`'s input or reading its output (through
    layers with no int8 op of their own)."""
    found = []
    for wiring in (producers_of, readers_of):
        stack, seen = list(wiring.get(layer, [])), set()
        while stack:
            p = stack.pop(0)
            if p in seen:
                continue
            seen.add(p)
            if p in quantized:
                found.append(p)
            else:
                stack.extend(wiring.get(p, []))
    return list(dict.fromkeys(found))


def search(session, write: Callable[[List[str]], str], score: Callable[[str], float],
           baseline: float, max_drop: float, limit: int, *, start=(), wiring=None, progress=None,
           faithful: Optional[Callable[[str], Optional[str]]] = None):
    """Keep the worst layer float, one at a time, until the drop is within `max_drop` (and
    `faithful(path)` finds nothing wrong with the outputs) or `limit` layers are float.
    Returns (path or None, keep_float, drop, tried).

    The layers are diagnosed again after each one is kept float: a layer that wrecks its output
    also makes every layer after it look bad (they see its damage as their input), and that
    noise goes away once the culprit runs in float, leaving the next real culprit on top.
    When a layer kept float on the diagnosis' word does not reach the goal, its worst neighbour
    (a layer writing its input or reading its output) comes next: a tensor stays float only if
    the layers writing and reading it do, and a tensor that int8 wrecks (one wide channel leaving
    the others a few levels) shows up on only one side of it.
    """
    keep = list(start)
    tried = []
    quantized = set(session.nodes_by_layer())
    wiring = wiring or {}
    readers: Dict[str, List[str]] = {}
    for layer, sources in wiring.items():
        for src in sources:
            readers.setdefault(src, []).append(layer)
    # a BatchNormalization folded into its conv is one op: name it as the diagnosis row does
    row_of = {node: r.name for r in session.diagnose() for node in r.nodes}
    canonical = {layer: next((row_of[n] for n in nodes if n in row_of), layer)
                 for layer, nodes in session.nodes_by_layer().items()}
    follow = None   # the layer whose producers come next
    while True:
        path = write(keep)
        value = score(path)
        drop = baseline - value
        tried.append({"keep_float": list(keep), "score": round(value, 2), "drop": round(drop, 2)})
        if progress:
            progress(f"  int8 with {len(keep)} layer(s) float: {value:.2f} ({drop:+.2f} points)")
        if drop <= max_drop + 1e-9:
            problem = faithful(path) if faithful else None
            if problem is None:
                return path, keep, drop, tried
            tried[-1]["unfaithful"] = problem
            if progress:
                progress(f"  ...but its outputs do not match float: {problem}")
        if len(keep) >= limit:
            return None, keep, drop, tried
        rows = session.diagnose(keep)
        near = []
        if follow:
            near = [canonical.get(p, p) for p in _quantized_neighbours(follow, wiring, readers, quantized)]
            near = [p for p in dict.fromkeys(near) if p not in keep]
        if near:
            score_of = {r.name: r.score for r in rows}
            keep.append(min(near, key=lambda p: score_of.get(p, math.inf)))
            follow = None
            continue
        worst = next((r.name for r in rows if r.name not in keep), None)
        if worst is None:
            return None, keep, drop, tried
        keep.append(worst)
        follow = worst


# ------------------------------------------------------------------ the exporters' entry points

# Converter options this module adds to the tflite and onnx exporters (`--option FMT:K=V` and
# the export/optimize flags); `calibration_method` is ONNX only (TFLite calibrates by min/max).
@dataclass(frozen=True)
class Int8Options:
    """The int8 options the tflite and onnx exporters' own Options extend."""

    quant_report: bool = option(False, "diagnose every quantized layer against float (per-layer SNR)")
    keep_float: object = option("", "Keras layers to leave in float ('+'-separated names or a list)")
    max_accuracy_drop: Optional[float] = option(None, "keep the worst layers float until the drop is within "
                                                      "this many points", min=0.0)
    float_limit: Optional[float] = option(None, f"share of layers that may stay float (default {DEFAULT_FLOAT_LIMIT})",
                                          min=0.0, max=1.0, min_open=True)


OPTIONS = tuple(f.name for f in fields(Int8Options))


INT8_FORMATS = ("tflite", "onnx")
ONNX_ONLY = ("calibration_method", "per_channel")


def format_options(fmt: str, settings: dict) -> dict:
    """The int8 settings (export/optimize flags) that exporter `fmt` takes."""
    if fmt not in INT8_FORMATS:
        return {}
    return {k: v for k, v in settings.items() if fmt == "onnx" or k not in ONNX_ONLY}


def check_targets(settings: dict, targets, where: str) -> None:
    """UserError when int8 settings have no int8 tflite/onnx export to apply to."""
    flags = ", ".join("--" + k.replace("_", "-") for k in settings)
    if not targets:
        raise UserError(f"{flags} apply to int8 tflite or onnx; {where} has neither")
    onnx_only = [k for k in ONNX_ONLY if k in settings]
    if onnx_only and "onnx" not in targets:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in onnx_only)} apply to onnx; "
                        f"{where} has no onnx")


def wanted(options) -> bool:
    return any(options.get(k) not in (None, False, "", ()) for k in OPTIONS)


def tflite_int8(model, converter, samples, *, int8_io, data, options) -> tuple:
    """(flatbuffer bytes, quantization record) for the tflite exporter."""
    with tempfile.TemporaryDirectory(prefix="optkit-quant-") as workdir:
        session = TFLiteInt8(model, converter, samples, int8_io=int8_io)

        def write(keep, method=None):
            path = os.path.join(workdir, f"int8_{len(keep)}_{abs(hash(tuple(keep)))}.tflite")
            with open(path, "wb") as fh:
                fh.write(session.quantize(keep))
            return path

        path, record = _run(session, write, model, data, options, samples, method="minmax")
        with open(path, "rb") as fh:
            return fh.read(), record


def onnx_int8(model, float_path, dst, samples, *, data, options, op_types=None, symmetric=False) -> dict:
    """Quantize `float_path` into `dst` (QDQ); returns the quantization record. `symmetric`:
    zero points 0 (TensorRT's explicit quantization needs them)."""
    import shutil

    method = str(options.get("calibration_method") or "minmax").lower()
    with tempfile.TemporaryDirectory(prefix="optkit-quant-") as workdir:
        session = OnnxInt8(model, float_path, samples, method=method,
                           per_channel=bool(options.get("per_channel", True)),
                           reduce_range=bool(options.get("reduce_range", True)), op_types=op_types,
                           workdir=workdir, symmetric=symmetric)

        def write(keep, method=None, per_channel=None):
            return session.quantize(keep, method=method, per_channel=per_channel)

        path, record = _run(session, write, model, data, options, samples, method=method)
        shutil.copyfile(path, dst)
        return record


def plain_record(backend, method, samples) -> dict:
    """The quantization record of an int8 export without diagnosis or fallback."""
    return {"backend": backend, "calibration": {"method": method, "samples": int(len(samples[0]))},
            "float_layers": []}


def _run(session, write, model, data, options, samples, *, method):
    keep = parse_names(options.get("keep_float"))
    goal = options.get("max_accuracy_drop")
    record = plain_record(session.backend, method, samples)
    if session.backend == "onnx":
        record["calibration"]["per_channel"] = session.per_channel
    record["float_layers"] = list(keep)
    rows = None
    if options.get("quant_report") or goal is not None:
        rows = session.diagnose()
        record["layers"] = [r.to_json() for r in rows]
        record["quantizable_layers"] = len(rows)
    if goal is None:
        return write(keep), record
    goal = float(goal)
    if goal < 0:
        raise UserError("--max-accuracy-drop must be >= 0 (points of accuracy)")
    from optkit import runner

    measure, baseline, score, faithful = evaluator(model, data, lambda p: runner.load_predictor(p, threads=1))
    limit = float_limit(len(rows), float(options.get("float_limit") or DEFAULT_FLOAT_LIMIT))
    full = write([])
    tried_methods = []
    if session.backend == "onnx":
        # Calibration first: a better range estimate or per-channel weight scales cost nothing at
        # run time, float layers do. The user's choice first, then the other methods, then the
        # other weight granularity (per-channel fixed a residual net's wide channel here).
        pc = session.per_channel
        choices = [(method, pc)] + [(m, pc) for m in METHODS if m != method] + [(m, not pc) for m in METHODS]
        results = []
        for m, c in choices:
            p = full if (m, c) == (method, pc) else write([], method=m, per_channel=c)
            results.append((score(p), m, c, p))
            tried_methods.append({"method": m, "per_channel": c, "score": round(results[-1][0], 2)})
            if baseline - results[-1][0] <= goal and faithful(p) is None:
                break
        _, best_method, best_pc, best_path = max(results, key=lambda r: r[0])
        if (best_method, best_pc) != (method, pc):
            session.method, session.per_channel = best_method, best_pc
            method = best_method
            session._diagnoses.clear()
            rows = session.diagnose()
            record["layers"] = [r.to_json() for r in rows]
            record["quantizable_layers"] = len(rows)
            limit = float_limit(len(rows), float(options.get("float_limit") or DEFAULT_FLOAT_LIMIT))
            full = best_path
        record["calibration"].update(method=session.method, per_channel=session.per_channel)
    path, kept, drop, tried = search(session, write, score, baseline, goal, limit, start=keep,
                                     wiring=producers(model), faithful=faithful)
    record["goal"] = {"max_drop": goal, "measure": measure, "baseline": round(baseline, 2),
                      "drop": round(drop, 2), "float_limit": limit, "tried": tried,
                      "methods_tried": tried_methods}
    if path is None:
        record["float_layers"] = kept
        why = (f"int8 {measure} is still {drop:.2f} points below float" if drop > goal + 1e-9 else
               f"int8 {measure} is within {goal:g} points but its outputs do not match float "
               f"({tried[-1].get('unfaithful', '')})")
        raise GoalNotMet(record, f"--max-accuracy-drop {goal:g}: {why} with {len(kept)} of {len(rows)} layers "
                         f"float (limit {limit}: {', '.join(kept) or 'none'})")
    record["float_layers"] = kept
    record["cost"] = _cost(full, path) if kept != list(keep) or keep else None
    return path, record


def _cost(full_path, path):
    """What keeping layers float cost against full int8: size and LiteRT/ORT latency (batch 1,
    one thread, short runs measured side by side here)."""
    from optkit import runner

    out = {"full_int8_bytes": os.path.getsize(full_path), "bytes": os.path.getsize(path)}
    for key, p in (("full_int8_ms", full_path), ("ms", path)):
        try:
            res = runner.bench_file(p, threads=1, warmup=3, min_time=0.3, min_runs=10)
            out[key] = round(res["latency_ms"]["p50"], 4)
        except Exception as exc:  # noqa: BLE001 - a cost we could not time is reported, not fatal
            out[key] = None
            out["latency_error"] = str(exc)[:200]
    return out
