"""ONNX model builders for the bnfold test-suite.

Every builder returns an ``onnx.ModelProto`` that passes
``onnx.checker.check_model(model, full_check=True)`` unless its docstring says
otherwise.  Only ``onnx.helper``, ``onnx.numpy_helper`` and numpy are used, so
the builders never depend on the code under test.

Random tensors come from ``np.random.default_rng(seed)`` and are always drawn
in the same order, so overriding one tensor never changes the others.

Naming conventions (relied upon by the tests):

* the Conv is ``"conv"`` with weight ``"W"`` and bias ``"B"``; its output is
  ``"conv_out"``;
* the BatchNormalization chain is ``"bn"``, ``"bn2"``, ``"bn3"``, ...; the
  parameter tensors of a BN are ``"<bn name>_scale"``, ``"<bn name>_bias"``,
  ``"<bn name>_mean"`` and ``"<bn name>_var"`` (so ``"bn_scale"`` for the
  first BN and ``"bn2_scale"`` for the second);
* intermediate BN outputs are ``"<bn name>_out"``; the last one is ``"Y"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

PARAM_MODES = (
    "initializer",
    "constant",
    "identity",
    "constant_of_shape",
    "graph_input",
    "overridable",
)
"""Accepted values for ``conv_bn_model(params=...)``."""

BN_EXTRA_OUTPUTS = ("none", "empty", "used")
"""Accepted values for ``conv_bn_model(bn_extra_outputs=...)``."""

CONSTANT_OF_SHAPE_VALUES = {"scale": 1.25, "bias": -0.5, "mean": 0.3, "var": 1.7}
"""Per-channel-uniform BN parameters used by ``params="constant_of_shape"``."""

_BN_PARAMS = ("scale", "bias", "mean", "var")

_MODEL_DOC = "bnfold test model"
_PRODUCER = "bnfold-tests"
_METADATA = {"origin": "tests/builders.py"}


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _np_dtype(dtype) -> np.dtype:
    """Map ``np.float32`` / ``np.float16`` / ``np.float64`` / ``"bfloat16"`` to a numpy dtype."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _elem_type(dtype: np.dtype) -> int:
    """The ``TensorProto`` element type of a numpy dtype (bfloat16 included)."""
    return helper.np_dtype_to_tensor_dtype(dtype)


def _per_axis(value, count: int) -> list[int] | None:
    """Expand an int to ``count`` copies; pass sequences through; keep None."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value] * count
    return [int(v) for v in value]


def _bn_stats(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """Random, non-trivial BN statistics in float64.

    gamma has magnitude in [0.5, 1.5] with a random sign, beta and mean are
    N(0, 1) and var is uniform in [0.5, 2].
    """
    sign = rng.choice([-1.0, 1.0], size=channels)
    return {
        "scale": sign * rng.uniform(0.5, 1.5, size=channels),
        "bias": rng.standard_normal(channels),
        "mean": rng.standard_normal(channels),
        "var": rng.uniform(0.5, 2.0, size=channels),
    }


def _he_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-normal Conv weight in float64 (fan-in = product of all but dim 0)."""
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


@dataclass
class _Graph:
    """Mutable collection of graph pieces, turned into a model by ``to_model``."""

    dtype: np.dtype
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)

    @property
    def elem(self) -> int:
        return _elem_type(self.dtype)

    def initializer(self, name: str, array: np.ndarray, *, cast: bool = True) -> str:
        """Add an initializer (cast to the graph dtype unless ``cast=False``)."""
        array = np.asarray(array)
        if cast:
            array = array.astype(self.dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """A tensor of the graph dtype, for Constant / ConstantOfShape attributes."""
        return numpy_helper.from_array(np.asarray(array).astype(self.dtype), name)

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        """Append a node; attributes whose value is None are omitted."""
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def input(self, name: str, shape) -> None:
        """Declare a graph input of the graph dtype."""
        self.inputs.append(helper.make_tensor_value_info(name, self.elem, shape))

    def output(self, name: str, shape) -> None:
        """Declare a graph output of the graph dtype.

        The checker requires a shape (hence a rank) on main-graph outputs; use
        None for dims that are not worth computing.
        """
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, shape))

    def to_model(self, *, opset: int, ir_version: int) -> onnx.ModelProto:
        """Assemble the model; with IR < 4 every initializer is also a graph input."""
        inputs = list(self.inputs)
        if ir_version < 4:
            declared = {vi.name for vi in inputs}
            inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in self.initializers
                if t.name not in declared
            ]
        graph = helper.make_graph(
            self.nodes, "bnfold_test", inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset)],
            ir_version=ir_version,
            producer_name=_PRODUCER,
            doc_string=_MODEL_DOC,
        )
        helper.set_model_props(model, _METADATA)
        return model


def _wire_bn_params(g: _Graph, prefix: str, values: dict[str, np.ndarray], mode: str) -> list[str]:
    """Create the producers of one BN's four parameters; return the BN input names.

    The tensor holding each value is always called ``f"{prefix}_{param}"``;
    in ``"identity"`` mode the BN consumes the Identity outputs instead.
    """
    names = [f"{prefix}_{p}" for p in _BN_PARAMS]
    if mode in ("initializer", "overridable"):
        for name, p in zip(names, _BN_PARAMS):
            g.initializer(name, values[p])
            if mode == "overridable":
                g.input(name, [len(values[p])])
        return names
    if mode == "graph_input":
        g.input(names[0], [len(values["scale"])])
        for name, p in zip(names[1:], _BN_PARAMS[1:]):
            g.initializer(name, values[p])
        return names
    if mode == "constant":
        for name, p in zip(names, _BN_PARAMS):
            g.node("Constant", [], [name], f"{name}_const", value=g.tensor(f"{name}_value", values[p]))
        return names
    if mode == "constant_of_shape":
        channels = len(values["scale"])
        shape = g.initializer(f"{prefix}_shape", np.array([channels], dtype=np.int64), cast=False)
        for name, p in zip(names, _BN_PARAMS):
            fill = g.tensor(f"{name}_value", [CONSTANT_OF_SHAPE_VALUES[p]])
            g.node("ConstantOfShape", [shape], [name], f"{name}_cos", value=fill)
        return names
    if mode == "identity":
        routed = []
        for name, p in zip(names, _BN_PARAMS):
            g.initializer(name, values[p])
            out = f"{name}_identity_out"
            g.node("Identity", [name], [out], f"{name}_identity")
            if p == "scale":  # a two-step chain, as some exporters produce
                g.node("Identity", [out], [f"{out}2"], f"{name}_identity2")
                out = f"{out}2"
            routed.append(out)
        return routed
    raise ValueError(f"params must be one of {PARAM_MODES}, got {mode!r}")


def _bn_outputs(g: _Graph, prefix: str, y: str, extra: str, opset: int) -> list[str]:
    """The output list of a BN; ``"used"`` also declares the running mean a graph output.

    BN accepts either one output or all of them (3 from opset 14, else 5),
    so extra outputs are always declared in full.  With ``"used"`` they get
    real names (only the running mean is a graph output) because
    onnxruntime 1.32 segfaults on BN nodes with empty optional outputs.
    """
    if extra == "none":
        return [y]
    optional = ["running_mean", "running_var"]
    if opset < 14:
        optional += ["saved_mean", "saved_var"]
    if extra == "empty":
        return [y] + [""] * len(optional)
    if extra == "used":
        names = [f"{prefix}_{o}" for o in optional]
        g.output(names[0], [None])
        return [y, *names]
    raise ValueError(f"bn_extra_outputs must be one of {BN_EXTRA_OUTPUTS}, got {extra!r}")


def _bn_attrs(
    *, opset: int, eps: float, training_mode: int | None, spatial_attr: int | None
) -> dict:
    """BatchNormalization attributes valid for ``opset`` (None values are omitted)."""
    return {
        "epsilon": eps,
        "is_test": 1 if opset < 7 else None,
        "spatial": spatial_attr,
        "training_mode": training_mode,
    }


def _conv_attrs(*, rank, group, kernel, strides, dilations, pads, auto_pad) -> dict:
    """Conv attributes; ints are expanded per spatial axis, None values omitted."""
    return {
        "kernel_shape": [kernel] * rank,
        "group": group,
        "strides": _per_axis(strides, rank),
        "dilations": _per_axis(dilations, rank),
        "pads": _per_axis(pads, 2 * rank),
        "auto_pad": auto_pad,
    }


# --------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------


def conv_bn_model(
    *,
    rank: int = 2,
    group: int = 1,
    bias: bool = True,
    c_in: int = 4,
    c_out: int = 8,
    kernel: int = 3,
    spatial: int = 8,
    batch: int = 1,
    strides=None,
    dilations=None,
    pads=None,
    auto_pad: str | None = None,
    dtype=np.float32,
    opset: int = 17,
    ir_version: int = 8,
    params: str = "initializer",
    eps: float = 1e-5,
    training_mode: int | None = None,
    spatial_attr: int | None = None,
    bn_extra_outputs: str = "none",
    bn_count: int = 1,
    conv_out_is_graph_output: bool = False,
    conv_out_extra_consumer: bool = False,
    share_weight: bool = False,
    symbolic_batch: bool = False,
    gamma=None,
    beta=None,
    mean=None,
    var=None,
    weight=None,
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv followed by a chain of ``bn_count`` BatchNormalization nodes.

    Graph: ``X [batch, c_in, spatial x rank] -> Conv "conv" -> BN "bn" ->
    ... -> "Y"``.  Graph outputs declare batch and channel dims only; their
    spatial dims are left unknown for shape inference to fill in.

    Args:
        rank: number of spatial dims (1, 2 or 3).
        group: Conv group; ``c_in`` and ``c_out`` must be divisible by it.
        bias: give the Conv a bias initializer ``"B"``.
        strides, dilations, pads: per-axis lists or a single int (expanded);
            None omits the attribute.
        auto_pad: Conv ``auto_pad`` string, or None to omit it.
        dtype: ``np.float32``, ``np.float16``, ``np.float64`` or
            ``"bfloat16"``.  Input, weights and BN parameters all use it.
            ONNX only allows bfloat16 Conv from opset 22 (ir_version >= 10).
        opset, ir_version: written as given.  Incompatible pairs are not
            corrected (note that onnx 1.23's checker accepts e.g. opset 21
            with ir_version 8).  ``ir_version < 4`` lists every
            initializer as a graph input (the IR 3 rule).
        params: how the BN parameters are produced, one of ``PARAM_MODES``:
            ``"initializer"`` plain initializers; ``"constant"`` Constant
            nodes; ``"identity"`` initializers behind Identity nodes (a
            two-step chain for the scale); ``"constant_of_shape"``
            ConstantOfShape nodes filled with ``CONSTANT_OF_SHAPE_VALUES``
            (opset >= 9; explicit gamma/beta/mean/var are rejected);
            ``"graph_input"`` the scale is a real graph input with no
            initializer; ``"overridable"`` initializers also listed in
            ``graph.input``.
        eps: BN epsilon.
        training_mode: BN ``training_mode`` attribute (opset >= 14), or None.
            onnx requires a training-mode BN to declare all 3 outputs, so
            ``training_mode=1`` alone yields a model that fails the full
            check; combine it with ``bn_extra_outputs="used"``.
        spatial_attr: BN ``spatial`` attribute (opsets 6-8), or None.
        bn_extra_outputs: ``"none"``: the BN has the single output.
            ``"empty"``: all optional BN outputs are declared with empty
            names (4 of them before opset 14, 2 from opset 14).  Caution: from
            opset 14 onnx's full check and onnxruntime reject extra outputs
            unless ``training_mode=1``, and onnxruntime 1.32 segfaults on
            *any* BN with empty optional outputs, so never run these models
            in-process.  ``"used"``: every optional output gets a name and
            the first one, ``"<bn name>_running_mean"``, is a graph output;
            from opset 14 this requires training mode, so ``training_mode``
            defaults to 1.
        bn_count: number of chained BNs (>= 1).
        conv_out_is_graph_output: ``"conv_out"`` is also a graph output.
        conv_out_extra_consumer: ``"conv_out"`` also feeds Relu
            ``"relu_side"`` whose output ``"side"`` is a graph output.
        share_weight: a second Conv ``"conv_shared"`` on X reuses W (and B),
            output ``"Z"``.
        symbolic_batch: X's batch dim is the symbol ``"N"``.
        gamma, beta, mean, var: shape ``[c_out]`` overrides applied to every
            BN in the chain.
        weight: override for W, shape ``[c_out, c_in // group, kernel x rank]``.
        seed: seed of ``np.random.default_rng``.
    """
    if rank not in (1, 2, 3):
        raise ValueError(f"rank must be 1, 2 or 3, got {rank}")
    if c_in % group or c_out % group:
        raise ValueError(f"c_in={c_in} and c_out={c_out} must be divisible by group={group}")
    if bn_count < 1:
        raise ValueError(f"bn_count must be >= 1, got {bn_count}")
    overrides = {"scale": gamma, "bias": beta, "mean": mean, "var": var}
    if params == "constant_of_shape" and any(v is not None for v in overrides.values()):
        raise ValueError("params='constant_of_shape' uses fixed values; gamma/beta/mean/var not allowed")
    if bn_extra_outputs == "used" and opset >= 14 and training_mode is None:
        training_mode = 1

    rng = np.random.default_rng(seed)
    w_shape = (c_out, c_in // group) + (kernel,) * rank
    w_value = _he_weight(rng, w_shape)
    b_value = rng.standard_normal(c_out) * 0.5
    if weight is not None:
        w_value = weight

    g = _Graph(_np_dtype(dtype))
    n = "N" if symbolic_batch else batch
    g.input("X", [n, c_in] + [spatial] * rank)
    out_shape = [n, c_out] + [None] * rank
    conv_inputs = ["X", g.initializer("W", w_value)]
    if bias:
        conv_inputs.append(g.initializer("B", b_value))
    conv_attrs = _conv_attrs(
        rank=rank, group=group, kernel=kernel, strides=strides,
        dilations=dilations, pads=pads, auto_pad=auto_pad,
    )
    g.node("Conv", conv_inputs, ["conv_out"], "conv", **conv_attrs)

    g.output("Y", out_shape)
    bn_attrs = _bn_attrs(opset=opset, eps=eps, training_mode=training_mode, spatial_attr=spatial_attr)
    x = "conv_out"
    for i in range(bn_count):
        prefix = "bn" if i == 0 else f"bn{i + 1}"
        stats = _bn_stats(rng, c_out)
        values = {p: stats[p] if overrides[p] is None else overrides[p] for p in _BN_PARAMS}
        param_names = _wire_bn_params(g, prefix, values, params)
        y = "Y" if i == bn_count - 1 else f"{prefix}_out"
        outputs = _bn_outputs(g, prefix, y, bn_extra_outputs, opset)
        g.node("BatchNormalization", [x, *param_names], outputs, prefix, **bn_attrs)
        x = y

    if conv_out_is_graph_output:
        g.output("conv_out", out_shape)
    if conv_out_extra_consumer:
        g.node("Relu", ["conv_out"], ["side"], "relu_side")
        g.output("side", out_shape)
    if share_weight:
        g.node("Conv", conv_inputs, ["Z"], "conv_shared", **conv_attrs)
        g.output("Z", out_shape)
    return g.to_model(opset=opset, ir_version=ir_version)


def _conv_bn_parts(
    g: _Graph, rng: np.random.Generator, *, x: str, conv: str, bn: str, c_in: int, c_out: int,
    kernel: int, pads: int,
) -> str:
    """Add Conv ``conv`` (weights ``<conv>_W``/``<conv>_B``) + BN ``bn``; return the BN output."""
    w = g.initializer(f"{conv}_W", _he_weight(rng, (c_out, c_in, kernel, kernel)))
    b = g.initializer(f"{conv}_B", rng.standard_normal(c_out) * 0.5)
    g.node("Conv", [x, w, b], [f"{conv}_out"], conv, kernel_shape=[kernel, kernel], pads=[pads] * 4)
    param_names = _wire_bn_params(g, bn, _bn_stats(rng, c_out), "initializer")
    g.node("BatchNormalization", [f"{conv}_out", *param_names], [f"{bn}_out"], bn, epsilon=1e-5)
    return f"{bn}_out"


def bn_after_relu_model(*, opset: int = 17) -> onnx.ModelProto:
    """Conv -> Relu -> BN: the BN's input is not produced by a Conv (nothing to fold).

    Tensors: ``X [1, 4, 8, 8] -> "conv" -> "conv_out" -> "relu" -> "relu_out"
    -> "bn" -> "Y"``.
    """
    rng = np.random.default_rng(0)
    g = _Graph(np.dtype(np.float32))
    g.input("X", [1, 4, 8, 8])
    w = g.initializer("W", _he_weight(rng, (8, 4, 3, 3)))
    b = g.initializer("B", rng.standard_normal(8) * 0.5)
    g.node("Conv", ["X", w, b], ["conv_out"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.node("Relu", ["conv_out"], ["relu_out"], "relu")
    param_names = _wire_bn_params(g, "bn", _bn_stats(rng, 8), "initializer")
    bn_attrs = _bn_attrs(opset=opset, eps=1e-5, training_mode=None, spatial_attr=None)
    g.node("BatchNormalization", ["relu_out", *param_names], ["Y"], "bn", **bn_attrs)
    g.output("Y", [1, 8, 8, 8])
    return g.to_model(opset=opset, ir_version=8)


def two_branch_model() -> onnx.ModelProto:
    """Two foldable Conv+BN branches joined by Add (opset 17).

    ``X [1, 4, 8, 8]``; branch 1: Conv ``"c1"`` (3x3, pad 1) -> BN ``"b1"``
    -> Relu ``"r1"``; branch 2: Conv ``"c2"`` (1x1) -> BN ``"b2"``; Add
    ``"add"`` -> ``"Y"``.
    """
    rng = np.random.default_rng(0)
    g = _Graph(np.dtype(np.float32))
    g.input("X", [1, 4, 8, 8])
    left = _conv_bn_parts(g, rng, x="X", conv="c1", bn="b1", c_in=4, c_out=8, kernel=3, pads=1)
    g.node("Relu", [left], ["r1_out"], "r1")
    right = _conv_bn_parts(g, rng, x="X", conv="c2", bn="b2", c_in=4, c_out=8, kernel=1, pads=0)
    g.node("Add", ["r1_out", right], ["Y"], "add")
    g.output("Y", [1, 8, 8, 8])
    return g.to_model(opset=17, ir_version=8)


def conv_bn_bytes_invalid_for_checker() -> bytes:
    """A serialized ModelProto that parses but fails ``onnx.checker.check_model``.

    It is the default ``conv_bn_model()`` with the BN's data input renamed to
    ``"undefined_tensor"``, which no node, input or initializer produces.
    """
    model = conv_bn_model()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.input[0] = "undefined_tensor"
    return model.SerializeToString()


def symbolic_spatial_model() -> onnx.ModelProto:
    """Unpadded 3x3 Conv+BN on input [1, 4, H, W]: with H = W = 1 (the default) it cannot run."""
    model = conv_bn_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_bn_chain_model(n: int, c: int = 2) -> onnx.ModelProto:
    """n pairs Conv 'conv{i}' -> BatchNormalization 'bn{i}', 1x1 kernels, c channels."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "X"
    for i in range(n):
        inits.append(numpy_helper.from_array(rng.standard_normal((c, c, 1, 1)).astype(np.float32), f"w{i}"))
        for k, v in zip("gbmv", (rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c),
                                 rng.uniform(0.5, 2, c))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{k}{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *(f"{k}{i}" for k in "gbmv")], [f"y{i}"],
                                      name=f"bn{i}"))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", 1, [1, c, 2, 2])],
                              [helper.make_tensor_value_info(x, 1, [1, c, 2, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def fold_and_refusal_model() -> onnx.ModelProto:
    """Conv 'conv' -> BN 'bn' (folds) -> Relu 'relu' -> BN 'bn_tail' (refused: not after a Conv) -> Z."""
    model = conv_bn_model()
    graph = model.graph
    graph.node.append(helper.make_node("Relu", ["Y"], ["relu_out"], name="relu"))
    for param, value in (("scale", 1.5), ("bias", 0.1), ("mean", 0.2), ("var", 0.9)):
        graph.initializer.append(numpy_helper.from_array(np.full(8, value, np.float32), f"tail_{param}"))
    graph.node.append(helper.make_node(
        "BatchNormalization", ["relu_out", "tail_scale", "tail_bias", "tail_mean", "tail_var"], ["Z"], name="bn_tail"))
    graph.output[0].name = "Z"
    onnx.checker.check_model(model, full_check=True)
    return model
