"""One frozen, flat TensorFlow inference graph for the converters that read TF graphs (tf2onnx,
coremltools, and through ONNX, TensorRT).

Why not hand the converters the serving function itself: what they freeze on their own keeps
two kinds of debris that make a valid-looking but broken artifact (issue #17):
  - captured eager tensors (EfficientNet's Normalization mean/variance, Rescaling scales) stay
    placeholders, so the ONNX graph grows extra inputs like `41525:0`;
  - nested function calls marked for XLA compilation are never inlined by Grappler. Keras 3's
    TensorFlow backend runs every grouped convolution (ConvNeXt's depthwise 7x7 is a Conv2D with
    groups=channels) inside `tf.function(jit_compile=True)`, so a `StatefulPartitionedCall`
    survives into the ONNX graph (onnxruntime: INVALID_GRAPH) and stops coremltools.
Here variables and captured tensors become constants (`convert_variables_to_constants_v2`), the
XLA/no-inline marks are dropped and Grappler's function inliner runs until no call is left, and
a few TF ops the converters lack are spelled with ops they have. The result is checked: exactly
the model's inputs as placeholders, no function call, no function library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

# Attributes that stop Grappler from inlining a function call. Dropping them changes nothing
# at inference: XLA compilation is a CPU work-around inside Keras, not part of the model's math.
_NO_INLINE_ATTRS = ("_XlaMustCompile", "_XlaCompile", "_noinline", "api_implements")
_CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# Grappler inlines one level of nesting per pass in some TF versions; models nest a few deep.
_MAX_INLINE_PASSES = 5


@dataclass
class FrozenGraph:
    graph_def: object            # tf.compat.v1.GraphDef: constants only, no functions
    input_tensors: List[str]     # "keras_tensor:0", ... in the model's input order
    output_tensors: List[str]    # in output_0..n order
    input_names: List[str]       # what the artifact calls its inputs (the model's, cleaned)
    output_names: List[str]      # output_0..n
    specs: list                  # tf.TensorSpec per input (batch dim None)

    def renames(self) -> Dict[str, str]:
        """TF tensor name -> artifact name (tf2onnx's `tensors_to_rename`)."""
        return {**dict(zip(self.input_tensors, self.input_names)),
                **dict(zip(self.output_tensors, self.output_names))}

    def concrete_function(self):
        """The frozen graph as a ConcreteFunction (coremltools' TF2 frontend takes these)."""
        from optkit import keras_io

        tf = keras_io.tf()
        graph_def = self.graph_def
        wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
        g = wrapped.graph
        return wrapped.prune([g.get_tensor_by_name(n) for n in self.input_tensors],
                             [g.get_tensor_by_name(n) for n in self.output_tensors])


def freeze(model) -> FrozenGraph:
    """Freeze a Keras model (either flavour) or a keras_io SavedModelCallable into a FrozenGraph."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from exporters import _common

    _, concrete, specs = _common.named_serving_function(model)
    # structured_outputs is the dict output_0..n; tf.nest (and so concrete.outputs) orders dict
    # entries by sorted key, which puts output_10 before output_2: map back by name.
    keys = sorted(concrete.structured_outputs)
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    by_key = dict(zip(keys, [t.name for t in frozen.outputs]))
    names = _common.output_names(len(keys))
    inputs = [t.name for t in frozen.inputs]
    outputs = [by_key[n] for n in names]
    graph_def = frozen.graph.as_graph_def()
    graph_def = _inline_all(graph_def, inputs + outputs)
    graph_def = _spell_missing_ops(graph_def)
    _check_flat(graph_def, inputs)
    return FrozenGraph(graph_def, inputs, outputs, [s.name for s in specs], names, specs)


def _inline_all(graph_def, fetch):
    for _ in range(_MAX_INLINE_PASSES):
        if not _calls(graph_def) and not graph_def.library.function:
            return graph_def
        _allow_inlining(graph_def)
        graph_def = _grappler_inline(graph_def, fetch)
    return graph_def


def _calls(graph_def):
    return [n.name for n in graph_def.node if n.op in _CALL_OPS]


def _allow_inlining(graph_def):
    for node in graph_def.node:
        for key in _NO_INLINE_ATTRS:
            if key in node.attr:
                del node.attr[key]
    for function in graph_def.library.function:
        for key in _NO_INLINE_ATTRS:
            if key in function.attr:
                del function.attr[key]
        for node in function.node_def:
            for key in _NO_INLINE_ATTRS:
                if key in node.attr:
                    del node.attr[key]


def _grappler_inline(graph_def, fetch):
    """Grappler's function optimizer alone (no constant folding: converters do their own)."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    from optkit import keras_io

    tf = keras_io.tf()
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = ["function"]
    rewrite.min_graph_nodes = -1
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=graph)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(fetch)
    meta_graph.collection_def["train_op"].CopyFrom(fetches)
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _spell_missing_ops(graph_def):
    """Rewrite ops tf2onnx 1.17 has no handler for into equivalents it has.

    Erfc (Keras 3's exact GELU: 0.5 * x * erfc(-x / sqrt 2), in ConvNeXt) -> 1 - Erf. The
    absolute error is below float32 epsilon; GELU multiplies it by x where erfc is tiny.
    """
    from optkit import keras_io

    tf = keras_io.tf()
    erfcs = [n for n in graph_def.node if n.op == "Erfc"]
    if not erfcs:
        return graph_def
    for node in erfcs:
        dtype = node.attr["T"].type
        erf_name, one_name = node.name + "/optkit_erf", node.name + "/optkit_one"
        erf = graph_def.node.add()
        erf.name, erf.op = erf_name, "Erf"
        erf.input.extend(list(node.input))
        erf.attr["T"].type = dtype
        one = graph_def.node.add()
        one.name, one.op = one_name, "Const"
        one.attr["dtype"].type = dtype
        one.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(1.0, dtype=tf.dtypes.as_dtype(dtype)))
        # The Erfc node keeps its name (its consumers need no rewiring) and becomes 1 - erf.
        node.op = "Sub"
        del node.input[:]
        node.input.extend([one_name, erf_name])
    return graph_def


def _check_flat(graph_def, inputs):
    """A frozen graph that still has calls or extra placeholders would convert into an artifact
    that fails to load or asks for inputs the user cannot give: stop here with what is wrong."""
    calls = _calls(graph_def)
    if calls or graph_def.library.function:
        raise RuntimeError(f"could not inline {len(calls) or len(graph_def.library.function)} nested "
                           f"function(s) of the model (first: {(calls or [graph_def.library.function[0].signature.name])[0]})")
    expected = {name.split(":")[0] for name in inputs}
    extra = sorted(n.name for n in graph_def.node if n.op == "Placeholder" and n.name not in expected)
    if extra:
        raise RuntimeError(f"freezing left {len(extra)} tensor(s) as graph inputs besides the model's "
                           f"({', '.join(extra[:3])})")
