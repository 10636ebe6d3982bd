"""ONNX model builders for the linear-op → BatchNormalization rules: ConvTranspose, Gemm, MatMul.

Every builder returns an ``onnx.ModelProto`` that passes ``onnx.checker.check_model(model,
full_check=True)``. Only ``onnx.helper``, ``onnx.numpy_helper`` and numpy are used (through the
``_Graph`` helper of ``builders.py``), so the builders never depend on the code under test. Random
tensors come from ``np.random.default_rng(seed)``.

Naming conventions (relied upon by the tests):

* the linear node is ``"convtranspose"``, ``"gemm"`` or ``"matmul"``, its weight is ``"W"`` and
  its output ``"<node>_out"``; the ConvTranspose bias is ``"B"``, the Gemm C is ``"C"``;
* MatMul's bias is ``"B"``, added by Add ``"add"`` (output ``"add_out"``); a Reshape between the
  linear op and the BN is ``"reshape"`` (shape ``"reshape_shape"``, output ``"reshape_out"``);
* the BN is ``"bn"`` with statistics ``"bn_scale"``, ``"bn_bias"``, ``"bn_mean"``, ``"bn_var"``;
  its output ``"Y"`` is the graph output;
* ``also_output=name`` declares an internal tensor a graph output too; ``also_feeds=name`` makes
  Relu ``"relu_side"`` read it (output ``"side"``, a graph output);
* ``share_weight=True`` adds a twin ``"<node>_shared"`` reading the same ``"W"`` (and bias), whose
  output ``"Z"`` is a graph output; ``twin_bn=True`` puts BN ``"bn_shared"`` between the twin and
  ``"Z"``.

The BN statistics differ a lot from channel to channel (|gamma| spans 0.2 to 5, with random
signs; means up to a few units; variances 0.2 to 3), so a fold that scales the wrong channels,
or the right channels with the wrong values, changes the outputs far beyond any tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from builders import _bn_attrs, _bn_outputs, _Graph, _np_dtype, _wire_bn_params

BN_PARAMS = ("scale", "bias", "mean", "var")

#: How Gemm's C is given (None: no C): name -> shape, for M rows and N output channels.
GEMM_C_SHAPES = {
    "scalar": lambda m, n: [],
    "one": lambda m, n: [1],
    "vector": lambda m, n: [n],
    "row": lambda m, n: [1, n],
    "column": lambda m, n: [m, 1],
    "matrix": lambda m, n: [m, n],
}

#: How MatMul's Add bias is given: name -> shape, for N rows and C output channels.
MATMUL_BIAS_SHAPES = {
    "scalar": lambda n, c: [],
    "vector": lambda n, c: [c],
    "row": lambda n, c: [1, c],
    "matrix": lambda n, c: [n, c],  # not per channel
    "column": lambda n, c: [n, 1],  # not per channel
    "rank3": lambda n, c: [1, 1, c],  # per channel, but Add's output becomes [1, N, C]
}

#: Where MatMul's activation comes from (see ``matmul_bn_model``).
MATMUL_SOURCES = ("input", "flatten", "gemm", "softmax", "reshaped")


def spread_bn_stats(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """BN statistics (float64) that differ a lot between channels."""
    sign = rng.choice([-1.0, 1.0], size=channels)
    return {
        "scale": sign * np.exp(rng.uniform(np.log(0.2), np.log(5.0), size=channels)),
        "bias": rng.standard_normal(channels),
        "mean": 2.0 * rng.standard_normal(channels),
        "var": rng.uniform(0.2, 3.0, size=channels),
    }


def _weight(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))


@dataclass
class _Common:
    """Options every builder shares: the BN, the model header and the variants tests need."""

    dtype: object = np.float32
    opset: int = 17
    ir_version: int = 8
    eps: float = 1e-5
    training_mode: int | None = None
    bn_extra_outputs: str = "none"
    also_output: str | None = None
    also_feeds: str | None = None
    overridable: tuple[str, ...] = ()
    share_weight: bool = False
    twin_bn: bool = False
    gamma: object = None
    beta: object = None
    mean: object = None
    var: object = None
    seed: int = 0
    shapes: dict[str, list] = field(default_factory=dict)  # declared shapes of internal tensors

    def stats(self, rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
        values = spread_bn_stats(rng, channels)
        for key, override in zip(BN_PARAMS, (self.gamma, self.beta, self.mean, self.var)):
            if override is not None:
                values[key] = np.broadcast_to(np.asarray(override, dtype=np.float64), (channels,))
        return values

    def bn(self, g: _Graph, rng: np.random.Generator, x: str, y: str, channels: int, prefix: str = "bn") -> None:
        names = _wire_bn_params(g, prefix, self.stats(rng, channels), "initializer")
        attrs = _bn_attrs(opset=self.opset, eps=self.eps, training_mode=self.training_mode, spatial_attr=None)
        outputs = _bn_outputs(g, prefix, y, self.bn_extra_outputs, self.opset)
        g.node("BatchNormalization", [x, *names], outputs, prefix, **attrs)

    def finish(self, g: _Graph, y_shape: list) -> onnx.ModelProto:
        g.outputs.insert(0, helper.make_tensor_value_info("Y", g.elem, y_shape))
        if self.also_output is not None:
            g.output(self.also_output, self.shapes[self.also_output])
        if self.also_feeds is not None:
            g.node("Relu", [self.also_feeds], ["side"], "relu_side")
            g.output("side", self.shapes[self.also_feeds])
        for name in self.overridable:
            tensor = next(t for t in g.initializers if t.name == name)
            g.inputs.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
        model = g.to_model(opset=self.opset, ir_version=self.ir_version)
        onnx.checker.check_model(model, full_check=True)
        return model


def _common(kwargs: dict) -> _Common:
    if kwargs.get("bn_extra_outputs") == "used" and kwargs.get("opset", 17) >= 14:
        kwargs.setdefault("training_mode", 1)  # from opset 14 only a training-mode BN declares them
    return _Common(**kwargs)


def convtranspose_bn_model(
    *,
    rank: int = 2,
    group: int = 1,
    c_in: int = 4,
    c_out: int = 6,
    bias: bool = True,
    kernel: int = 3,
    spatial: int = 4,
    batch: int = 2,
    strides=None,
    pads=None,
    output_padding=None,
    dilations=None,
    auto_pad: str | None = None,
    output_shape: list[int] | None = None,
    **common,
) -> onnx.ModelProto:
    """``X [batch, c_in, spatial x rank] -> ConvTranspose "convtranspose" -> BN "bn" -> Y``.

    W is ``[c_in, c_out / group, kernel x rank]``. ``strides``, ``pads`` (2 x rank values),
    ``output_padding`` and ``dilations`` are per-axis lists or one int (expanded); they, and
    ``auto_pad`` and ``output_shape`` (spatial dims), are omitted when None. Shared options: see
    the module docstring and ``_Common``.
    """
    if c_in % group or c_out % group:
        raise ValueError(f"c_in={c_in} and c_out={c_out} must be divisible by group={group}")
    opts = _common(common)
    rng = np.random.default_rng(opts.seed)
    g = _Graph(_np_dtype(opts.dtype))

    def per_axis(value, count):
        return None if value is None else [value] * count if isinstance(value, int) else list(value)

    g.input("X", [batch, c_in] + [spatial] * rank)
    w_shape = (c_in, c_out // group) + (kernel,) * rank
    inputs = ["X", g.initializer("W", _weight(rng, w_shape, c_in // group * kernel**rank))]
    if bias:
        inputs.append(g.initializer("B", rng.standard_normal(c_out)))
    attrs = dict(kernel_shape=[kernel] * rank, group=group if group != 1 else None,
                 strides=per_axis(strides, rank), pads=per_axis(pads, 2 * rank),
                 output_padding=per_axis(output_padding, rank), dilations=per_axis(dilations, rank),
                 auto_pad=auto_pad, output_shape=output_shape)
    g.node("ConvTranspose", inputs, ["convtranspose_out"], "convtranspose", **attrs)
    out_shape = [batch, c_out] + [None] * rank
    opts.shapes["convtranspose_out"] = out_shape
    opts.bn(g, rng, "convtranspose_out", "Y", c_out)
    if opts.share_weight:
        twin_out = "convtranspose_shared_out" if opts.twin_bn else "Z"
        g.node("ConvTranspose", inputs, [twin_out], "convtranspose_shared", **attrs)
        if opts.twin_bn:
            opts.bn(g, rng, twin_out, "Z", c_out, prefix="bn_shared")
        g.output("Z", out_shape)
    return opts.finish(g, out_shape)


def gemm_bn_model(
    *,
    m: int = 3,
    k: int = 5,
    n: int = 6,
    trans_a: int = 0,
    trans_b: int = 0,
    alpha: float | None = None,
    beta: float | None = None,
    c: str | None = "vector",
    **common,
) -> onnx.ModelProto:
    """``X -> Gemm "gemm" (B = "W", C = "C") -> BN "bn" over [m, n] -> Y``.

    X is ``[m, k]`` (``[k, m]`` with ``trans_a``); W is ``[k, n]`` (``[n, k]`` with ``trans_b``);
    ``c`` names a shape of ``GEMM_C_SHAPES`` or is None (no C). ``alpha``/``beta`` None omit the
    attribute.
    """
    opts = _common(common)
    rng = np.random.default_rng(opts.seed)
    g = _Graph(_np_dtype(opts.dtype))
    g.input("X", [k, m] if trans_a else [m, k])
    inputs = ["X", g.initializer("W", _weight(rng, (n, k) if trans_b else (k, n), k))]
    if c is not None:
        inputs.append(g.initializer("C", rng.standard_normal(GEMM_C_SHAPES[c](m, n))))
    attrs = dict(transA=trans_a or None, transB=trans_b or None, alpha=alpha, beta=beta)
    g.node("Gemm", inputs, ["gemm_out"], "gemm", **attrs)
    opts.shapes["gemm_out"] = [m, n]
    opts.bn(g, rng, "gemm_out", "Y", n)
    if opts.share_weight:
        twin_out = "gemm_shared_out" if opts.twin_bn else "Z"
        g.node("Gemm", inputs, [twin_out], "gemm_shared", **attrs)
        if opts.twin_bn:
            opts.bn(g, rng, twin_out, "Z", n, prefix="bn_shared")
        g.output("Z", [m, n])
    return opts.finish(g, [m, n])


def matmul_bn_model(
    *,
    n: int = 3,
    k: int = 5,
    c: int = 6,
    bias: str | None = "vector",
    bias_first: bool = False,
    source: str = "input",
    input_rank: int = 2,
    weight: str = "initializer",
    weight_rank: int = 2,
    reshape: list[int] | None = None,
    **common,
) -> onnx.ModelProto:
    """``A -> MatMul "matmul" (W) [-> Add "add" (B)] [-> Reshape "reshape"] -> BN "bn" -> Y``.

    Args:
        n, k, c: A is ``[n, k]``, W is ``[k, c]``.
        bias: None (no Add), a shape name of ``MATMUL_BIAS_SHAPES``, or ``"graph_input"`` (the
            Add's other operand is graph input ``"B"`` of shape ``[c]``: not a constant).
        bias_first: ``Add(B, matmul_out)`` instead of ``Add(matmul_out, B)``.
        source: where A comes from. ``"input"``: graph input X (shape declared); ``"flatten"``:
            X ``[n, k, 1]`` -> Flatten ``"flatten"``; ``"gemm"``: X ``[n, 4]`` -> Gemm ``"pre"``;
            ``"softmax"``: X -> Softmax ``"softmax"`` (the rank of X); ``"reshaped"``: X -> Reshape
            ``"pre_reshape"`` to the shape graph input S holds at run time (a rank bnfold cannot know).
        input_rank: 3 makes X ``[n, c, k]`` (the middle axis has as many entries as there are
            channels, so BN's statistics fit axis 1 although it is not the channel axis).
        weight: ``"initializer"`` or ``"graph_input"`` (W is a graph input: not a constant).
        weight_rank: 3 makes W ``[2, k, c]`` and X ``[2, n, k]`` (batched MatMul, BN over n).
        reshape: the target shape of a Reshape after the MatMul (and Add), e.g. ``[n, c, 1, 1]``.
    """
    opts = _common(common)
    rng = np.random.default_rng(opts.seed)
    g = _Graph(_np_dtype(opts.dtype))
    a_shape = [n, k]
    if input_rank == 3:
        a_shape = [n, c, k]
    if weight_rank == 3:
        a_shape = [2, n, k]
    a = "X"
    if source == "input":
        g.input("X", a_shape)
    elif source == "flatten":
        g.input("X", [n, k, 1])
        g.node("Flatten", ["X"], ["flat"], "flatten", axis=1)
        a = "flat"
    elif source == "gemm":
        g.input("X", [n, 4])
        g.node("Gemm", ["X", g.initializer("pre_W", _weight(rng, (4, k), 4))], ["pre_out"], "pre")
        a = "pre_out"
    elif source == "softmax":
        g.input("X", a_shape)
        g.node("Softmax", ["X"], ["soft"], "softmax", axis=-1)
        a = "soft"
    elif source == "reshaped":
        g.input("X", a_shape)
        g.inputs.append(helper.make_tensor_value_info("S", onnx.TensorProto.INT64, [len(a_shape)]))
        g.node("Reshape", ["X", "S"], ["reshaped"], "pre_reshape")
        a = "reshaped"
    else:
        raise ValueError(f"source must be one of {MATMUL_SOURCES}, got {source!r}")

    w_shape = (2, k, c) if weight_rank == 3 else (k, c)
    if weight == "graph_input":
        g.input("W", list(w_shape))
    else:
        g.initializer("W", _weight(rng, w_shape, k))
    out_shape = a_shape[:-1] + [c]
    g.node("MatMul", [a, "W"], ["matmul_out"], "matmul")
    opts.shapes["matmul_out"] = out_shape
    x = "matmul_out"
    if bias is not None:
        if bias == "graph_input":
            g.input("B", [c])
        else:
            bias_shape = MATMUL_BIAS_SHAPES[bias](n, c)
            g.initializer("B", rng.standard_normal(bias_shape))
            out_shape = list(np.broadcast_shapes(tuple(out_shape), tuple(bias_shape)))
        g.node("Add", ["B", x] if bias_first else [x, "B"], ["add_out"], "add")
        opts.shapes["add_out"] = out_shape
        x = "add_out"
    if reshape is not None:
        g.initializers.append(onnx.numpy_helper.from_array(np.array(reshape, dtype=np.int64), "reshape_shape"))
        g.node("Reshape", [x, "reshape_shape"], ["reshape_out"], "reshape")
        out_shape = [d if d > 0 else None for d in reshape]
        opts.shapes["reshape_out"] = out_shape
        x = "reshape_out"
    channels = out_shape[1] if out_shape[1] is not None else c
    opts.bn(g, rng, x, "Y", channels)
    if opts.share_weight:
        twin_out = "matmul_shared_out" if bias is not None or opts.twin_bn else "Z"
        g.node("MatMul", [a, "W"], [twin_out], "matmul_shared")
        if bias is not None:
            z = "add_shared_out" if opts.twin_bn else "Z"
            g.node("Add", [twin_out, "B"], [z], "add_shared")
            twin_out = z
        if opts.twin_bn:
            opts.bn(g, rng, twin_out, "Z", channels, prefix="bn_shared")
        g.output("Z", out_shape)
    return opts.finish(g, out_shape)


#: The linear nodes of ``four_linear_ops_model`` with their weight and their BN, in graph order.
FOUR_OPS = {
    "conv": ("Conv", "conv_W", "bn_conv", "conv-bn"),
    "convtranspose": ("ConvTranspose", "ct_W", "bn_ct", "convtranspose-bn"),
    "gemm": ("Gemm", "gemm_W", "bn_gemm", "gemm-bn"),
    "matmul": ("MatMul", "mm_W", "bn_mm", "matmul-bn"),
}


def four_linear_ops_model(*, overridable: tuple[str, ...] = (), seed: int = 0) -> onnx.ModelProto:
    """One BN after each linear op type, chained (names in ``FOUR_OPS``)::

        X [2, 3, 4, 4] -> Conv 3x3 pad 1 -> bn_conv -> Relu -> ConvTranspose 2x2 stride 2 group 2
          -> bn_ct -> Flatten -> Gemm (C) -> bn_gemm -> MatMul -> Add (mm_B) -> bn_mm -> Y [2, 5]

    ``overridable`` lists initializers that are also graph inputs (IR 8: callers may override them).
    """
    rng = np.random.default_rng(seed)
    g = _Graph(np.dtype(np.float32))
    opts = _Common(seed=seed)
    g.input("X", [2, 3, 4, 4])
    g.initializer("conv_W", _weight(rng, (4, 3, 3, 3), 27))
    g.initializer("conv_B", rng.standard_normal(4))
    g.node("Conv", ["X", "conv_W", "conv_B"], ["conv_out"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    opts.bn(g, rng, "conv_out", "bn_conv_out", 4, prefix="bn_conv")
    g.node("Relu", ["bn_conv_out"], ["relu_out"], "relu")
    g.initializer("ct_W", _weight(rng, (4, 3, 2, 2), 8))
    g.node("ConvTranspose", ["relu_out", "ct_W"], ["ct_out"], "convtranspose", kernel_shape=[2, 2],
           strides=[2, 2], group=2)
    opts.bn(g, rng, "ct_out", "bn_ct_out", 6, prefix="bn_ct")
    g.node("Flatten", ["bn_ct_out"], ["flat"], "flatten", axis=1)
    g.initializer("gemm_W", _weight(rng, (6 * 8 * 8, 8), 384))
    g.initializer("gemm_C", rng.standard_normal(8))
    g.node("Gemm", ["flat", "gemm_W", "gemm_C"], ["gemm_out"], "gemm")
    opts.bn(g, rng, "gemm_out", "bn_gemm_out", 8, prefix="bn_gemm")
    g.initializer("mm_W", _weight(rng, (8, 5), 8))
    g.initializer("mm_B", rng.standard_normal(5))
    g.node("MatMul", ["bn_gemm_out", "mm_W"], ["mm_out"], "matmul")
    g.node("Add", ["mm_out", "mm_B"], ["add_out"], "add")
    opts.bn(g, rng, "add_out", "Y", 5, prefix="bn_mm")
    opts.overridable = tuple(overridable)
    return opts.finish(g, [2, 5])
