"""ONNX model builders for the quantized-weight rules (QDQ models), with onnx.helper and numpy only.

``qdq_model`` builds, for one linear op (Conv, ConvTranspose, Gemm, MatMul):

    x → [QuantizeLinear "x_q" → DequantizeLinear "x_dq"] → LINEAR(weight = DequantizeLinear "w_dq"(Wq)) [→ Add "add"]
      → FOLLOWER → [QuantizeLinear "y_q" → DequantizeLinear "y_dq" | Identity "y_identity"] → y

Names (relied upon by the tests): the linear node is ``"conv"``, ``"convtranspose"``, ``"gemm"`` or
``"matmul"``; its weight integers ``"Wq"``, scale ``"w_scale"``, zero point ``"w_zero"``; a float
bias is ``"B"``, an integer one ``"Bq"`` through DequantizeLinear ``"b_dq"`` (scale ``"b_scale"``,
zero point ``"b_zero"``); MatMul's bias is added by Add ``"add"``. The follower is BN ``"bn"``
(statistics ``"bn_scale"``, ``"bn_bias"``, ``"bn_mean"``, ``"bn_var"``) or ``"mul"`` / ``"add1"`` /
``"sub"`` / ``"div"`` with constant ``"c"``; its output is ``"z"``. The graph output is ``"y"``.

Integers are drawn so that negating any channel is exact (every value within ``zero point ±
span`` and above the type's minimum) unless ``extreme=True`` puts a value with no negation into
output channel 1. BN statistics differ a lot from channel to channel and gamma is negative in
channels 1, 4, ... unless ``positive=True``; the output quantizer (scale 0.05, uint8 zero point
128) covers the follower's output range. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: ONNX element types by name.
QTYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
          "uint16": TensorProto.UINT16, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}
LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
          "int4": (-8, 7), "uint4": (0, 15)}
#: The largest |q - zp| the builders draw, per type (with a weight scale of 0.01 / SPAN * 100).
SPAN = {"int8": 100, "uint8": 100, "int16": 3000, "uint16": 3000, "int4": 7, "uint4": 7}

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FOLLOWER_OPS = {"mul": "Mul", "add": "Add", "sub": "Sub", "div": "Div"}
X_SCALE, Y_SCALE = 0.05, 0.05
#: Channel that ``extreme=True`` spoils (gamma is negative there unless ``positive``).
EXTREME_CHANNEL = 1


def integer_tensor(name: str, qtype: str, values) -> onnx.TensorProto:
    """An integer initializer of type ``qtype`` (4-bit types packed by onnx.helper)."""
    values = np.asarray(values)
    if qtype in ("int4", "uint4"):
        return helper.make_tensor(name, QTYPES[qtype], values.shape, values.astype(np.int64).ravel().tolist())
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(QTYPES[qtype])), name)


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def init(self, name: str, values) -> str:
        tensor = values if isinstance(values, onnx.TensorProto) else numpy_helper.from_array(np.asarray(values), name)
        self.inits.append(tensor)
        return name

    def node(self, op: str, inputs, outputs, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]

    def qdq(self, x: str, prefix: str, zero_dtype) -> str:
        """``x`` through QuantizeLinear → DequantizeLinear with scale 0.05."""
        self.init(f"{prefix}_scale", np.float32(X_SCALE))
        self.init(f"{prefix}_zero", zero_dtype(128 if zero_dtype is np.uint8 else 0))
        quant = self.node("QuantizeLinear", [x, f"{prefix}_scale", f"{prefix}_zero"], [f"{prefix}_quant"], f"{prefix}_q")
        return self.node("DequantizeLinear", [quant, f"{prefix}_scale", f"{prefix}_zero"], [f"{prefix}_deq"],
                         f"{prefix}_dq")


def shapes_for(op: str, group: int = 1, trans_b: int = 0, channels: int = 6, in_channels: int = 4):
    """(input shape, weight shape, output shape, the weight's output-channel axis)."""
    c, m = in_channels, channels
    if op == "Conv":
        return [1, c, 6, 6], [m, c // group, 3, 3], [1, m, 6, 6], 0
    if op == "ConvTranspose":
        return [1, c, 5, 5], [c, m // group, 3, 3], [1, m, 7, 7], 1
    if op == "Gemm":
        return [3, c], ([m, c] if trans_b else [c, m]), [3, m], 0 if trans_b else 1
    return [3, c], [c, m], [3, m], 1


def draw_weight(rng, qtype: str, shape, axis: int, per_channel: bool, extreme: bool = False):
    """(integers, zero point: [shape[axis]] per channel, else a scalar); see the module docstring."""
    lo, hi = LIMITS[qtype]
    m = shape[axis]
    size = m if per_channel else ()
    mid = (lo + hi + 1) // 2
    zp = np.zeros(size, np.int64) if lo < 0 else rng.integers(mid - max(1, mid // 8), mid + max(1, mid // 8) + 1, size=size)
    view = [1] * len(shape)
    view[axis] = m
    zp_full = np.broadcast_to(np.reshape(zp, view) if per_channel else zp, shape)
    span = np.minimum(np.minimum(SPAN[qtype], zp_full - lo - 1), hi - zp_full)
    q = zp_full + np.clip(rng.integers(-SPAN[qtype], SPAN[qtype] + 1, size=shape), -span, span)
    if extreme:
        where = [0] * len(shape)
        where[axis] = EXTREME_CHANNEL
        z = int(zp_full[tuple(where)])
        q[tuple(where)] = lo if not lo <= 2 * z - lo <= hi else hi
    return q, zp


def signs(m: int, positive: bool) -> np.ndarray:
    return np.ones(m) if positive else np.where(np.arange(m) % 3 == 1, -1.0, 1.0)


def qdq_model(op: str = "Conv", *, follower: str | None = "bn", qtype: str = "int8", per_channel: bool = True,
              bias: str = "none", input_qdq: bool = True, output_qdq: bool = True, opset: int | None = None,
              group: int = 1, trans_b: int = 0, positive: bool = False, extreme: bool = False,
              bias_convention: str = "product", factor=None, seed: int = 0, weight_scale=None,
              block_size: int = 0, block_axis: int | None = None, dq_axis: int | None = None,
              share: str | None = None, scale_dtype=np.float32, zero_point: bool = True,
              bn: dict | None = None) -> onnx.ModelProto:
    """A QDQ model; see the module docstring.

    - ``bias``: ``"none"``, ``"float"`` or ``"int32"`` (through DequantizeLinear, per channel, scale
      ``x_scale * w_scale`` with ``bias_convention="product"``, else 1e-3 for every channel);
    - ``factor``: the Mul/Add/Sub/Div constant (default per channel, ``[1, M, 1, 1]`` or ``[M]``);
    - ``dq_axis``: a per-channel weight scale along this weight axis instead of the output-channel one;
      ``block_size``: blocked quantization (opset 21) along ``block_axis`` (default the input axis);
    - ``share``: ``"dq"`` a twin linear op reads the same DequantizeLinear output, ``"scale"`` a twin
      DequantizeLinear reads the same integers, scale and zero point, ``"integers"`` the same
      integers with another scale; the twin's output is the graph output ``"twin"``;
    - ``scale_dtype``: float32, or float16 (opset 23: ``output_dtype`` keeps the weight float32);
      ``bn``: BN statistics overriding the drawn ones.
    """
    if opset is None:
        opset = 23 if scale_dtype != np.float32 else 21 if qtype in ("int16", "uint16", "int4", "uint4") or block_size else 17
    rng = np.random.default_rng(seed)
    x_shape, w_shape, y_shape, axis = shapes_for(op, group, trans_b)
    m = y_shape[1]
    g = _Graph()
    x = g.qdq("x", "x", np.int8) if input_qdq else "x"
    scale_axis = axis if dq_axis is None else dq_axis
    if block_size:
        scale_axis = (1 if len(w_shape) > 2 or axis == 0 else 0) if block_axis is None else block_axis
        q, zp = draw_weight(rng, qtype, w_shape, axis, False, extreme)
        blocks = list(w_shape)
        blocks[scale_axis] = -(-w_shape[scale_axis] // block_size)
        scale = rng.uniform(0.5, 1.5, blocks) * 0.01
        zp = np.broadcast_to(zp, blocks)
        dq_attrs = {"axis": scale_axis, "block_size": block_size}
    elif per_channel:
        q, zp = draw_weight(rng, qtype, w_shape, scale_axis, True, extreme)
        scale = rng.uniform(0.5, 1.5, w_shape[scale_axis]) * 0.01
        dq_attrs = {"axis": scale_axis}
    else:
        q, zp = draw_weight(rng, qtype, w_shape, axis, False, extreme)
        scale = np.asarray(0.01)
        dq_attrs = {}
    scale = scale * (100.0 / SPAN[qtype]) if weight_scale is None else \
        np.broadcast_to(np.asarray(weight_scale, dtype=np.float64), np.shape(scale))
    scale = np.asarray(scale).astype(scale_dtype)
    g.init("Wq", integer_tensor("Wq", qtype, q))
    g.init("w_scale", scale)
    dq_inputs = ["Wq", "w_scale"]
    if zero_point:
        g.init("w_zero", integer_tensor("w_zero", qtype, np.broadcast_to(zp, scale.shape)))
        dq_inputs.append("w_zero")
    if scale_dtype != np.float32:  # a float16 scale, a float32 weight (output_dtype, opset 23)
        dq_attrs["output_dtype"] = TensorProto.FLOAT
    w = g.node("DequantizeLinear", dq_inputs, ["W"], "w_dq", **dq_attrs)
    inputs = [x, w]
    bias_name = None
    if bias == "float":
        bias_name = g.init("B", (rng.standard_normal(m) * 0.5).astype(np.float32))
    elif bias == "int32":
        per_m = np.broadcast_to(scale.reshape(-1)[0], (m,)) if scale.size == 1 else np.tile(scale, m // scale.size)
        b_scale = (np.float32(X_SCALE) * per_m.astype(np.float32)) if bias_convention == "product" else \
            np.full(m, 1e-3, np.float32)
        g.init("Bq", np.rint(rng.standard_normal(m) * 0.5 / b_scale).astype(np.int32))
        g.init("b_scale", b_scale.astype(np.float32))
        g.init("b_zero", np.zeros(m, np.int32))
        bias_name = g.node("DequantizeLinear", ["Bq", "b_scale", "b_zero"], ["B_deq"], "b_dq", axis=0)
    name = op.lower()
    attrs = {"Conv": dict(pads=[1, 1, 1, 1], group=group), "ConvTranspose": dict(group=group),
             "Gemm": dict(transB=trans_b)}.get(op, {})
    if bias_name is not None and op != "MatMul":
        inputs.append(bias_name)
    out = g.node(op, inputs, [f"{name}_out"], name, **attrs)
    if bias_name is not None and op == "MatMul":
        out = g.node("Add", [out, bias_name], ["add_out"], "add")
    if share is not None:
        twin_w = w
        if share in ("scale", "integers"):
            twin_scale = "w_scale"
            if share == "integers":
                twin_scale = g.init("w_scale_twin", (scale * 2).astype(scale_dtype))
            twin_w = g.node("DequantizeLinear", ["Wq", twin_scale, *dq_inputs[2:]], ["W_twin"], "w_dq_twin", **dq_attrs)
        g.node(op, [x, twin_w], ["twin"], f"{name}_twin", **attrs)
    rank = len(y_shape)
    if follower == "bn":
        fan = 4 * 9 if op in ("Conv", "ConvTranspose") else 4
        stats = {"scale": signs(m, positive) * rng.uniform(0.5, 2.0, m), "bias": rng.standard_normal(m) * 0.5,
                 "mean": rng.standard_normal(m), "var": rng.uniform(0.3, 0.9, m) * fan}
        stats.update(bn or {})
        names = [g.init(f"bn_{k}", np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)).astype(np.float32))
                 for k, v in stats.items()]
        out = g.node("BatchNormalization", [out, *names], ["z"], "bn", epsilon=1e-5)
    elif follower is not None:
        if factor is None:
            value = signs(m, positive) * rng.uniform(0.3, 0.8, m) if follower in ("mul", "div") else \
                rng.standard_normal(m) * 0.5
            factor = value.reshape([1, m] + [1] * (rank - 2) if rank > 2 else [m])
        g.init("c", np.asarray(factor, dtype=np.float32))
        out = g.node(FOLLOWER_OPS[follower], [out, "c"], ["z"], "add1" if follower == "add" else follower)
    if output_qdq:
        g.init("y_scale", np.float32(Y_SCALE))
        g.init("y_zero", np.uint8(128))
        quant = g.node("QuantizeLinear", [out, "y_scale", "y_zero"], ["y_quant"], "y_q")
        g.node("DequantizeLinear", [quant, "y_scale", "y_zero"], ["y"], "y_dq")
    else:
        g.node("Identity", [out], ["y"], "y_identity")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if share is not None:
        outputs.append(helper.make_tensor_value_info("twin", TensorProto.FLOAT, y_shape))
    graph = helper.make_graph(g.nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qdq_builders")
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def qat_stack(layers: int = 3, channels: int = 64, size: int = 56, seed: int = 0, relu: bool = False) -> onnx.ModelProto:
    """The common QAT shape, ``layers`` times: ``DQ → Conv 3x3 (weight DQ(int8) per channel, int32
    bias through DQ, its scale the input's times the weight's) → BN [→ Relu] → Q → DQ`` (uint8 zero
    point 128, scale 0.05), after an input ``Q → DQ``; input and output ``[1, channels, size, size]``.
    BN statistics match the convolutions' outputs on normal inputs (as trained ones would), so
    activations stay within their grids. For ``bnfold bench`` and the validation of deep QDQ folds."""
    rng = np.random.default_rng(seed)
    g = _Graph()
    c = channels
    x = g.qdq("x", "x", np.uint8)
    power = 1.0  # E[x^2] of the layer's input
    for i in range(layers):
        ws = (rng.uniform(0.5, 1.5, c) * 0.002).astype(np.float32)
        bs = (np.float32(X_SCALE) * ws).astype(np.float32)
        g.init(f"w{i}_q", rng.integers(-127, 128, size=(c, c, 3, 3)).astype(np.int8))
        g.init(f"w{i}_scale", ws)
        g.init(f"w{i}_zero", np.zeros(c, np.int8))
        g.init(f"b{i}_q", np.rint(rng.standard_normal(c) * 0.1 / bs).astype(np.int32))
        g.init(f"b{i}_scale", bs)
        g.init(f"b{i}_zero", np.zeros(c, np.int32))
        w = g.node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale", f"w{i}_zero"], [f"w{i}"], f"w{i}_dq", axis=0)
        b = g.node("DequantizeLinear", [f"b{i}_q", f"b{i}_scale", f"b{i}_zero"], [f"b{i}"], f"b{i}_dq", axis=0)
        y = g.node("Conv", [x, w, b], [f"conv{i}"], f"conv{i}", pads=[1, 1, 1, 1])
        variance = 9 * c * (ws.astype(np.float64) * 127) ** 2 / 3 * power  # of the convolution's output
        gamma = rng.uniform(0.5, 1.5, c)
        stats = {"scale": gamma, "bias": rng.standard_normal(c) * 0.2, "mean": rng.standard_normal(c) * 0.1,
                 "var": variance * rng.uniform(0.8, 1.25, c)}
        power = float(np.mean(gamma ** 2)) / (2 if relu else 1)
        names = [g.init(f"bn{i}_{k}", v.astype(np.float32)) for k, v in stats.items()]
        y = g.node("BatchNormalization", [y, *names], [f"bn{i}"], f"bn{i}")
        if relu:
            y = g.node("Relu", [y], [f"relu{i}"], f"relu{i}")
        x = g.qdq(y, f"a{i}", np.uint8)
    g.node("Identity", [x], ["y"], "y_identity")
    shape = [1, c, size, size]
    graph = helper.make_graph(g.nodes, "qat_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qdq_builders")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def float8_weight_model() -> onnx.ModelProto:
    """Conv whose weight is DequantizeLinear of float8e4m3fn values (opset 19) → BN: not integers."""
    rng = np.random.default_rng(0)
    g = _Graph()
    g.init("Wq", helper.make_tensor("Wq", TensorProto.FLOAT8E4M3FN, [6, 4, 3, 3], rng.uniform(-2, 2, 216).tolist()))
    g.init("w_scale", np.float32(0.1))
    w = g.node("DequantizeLinear", ["Wq", "w_scale"], ["W"], "w_dq")
    stats = {"scale": rng.uniform(0.5, 2, 6), "bias": rng.standard_normal(6), "mean": rng.standard_normal(6),
             "var": rng.uniform(1, 2, 6)}
    names = [g.init(f"bn_{k}", v.astype(np.float32)) for k, v in stats.items()]
    g.node("BatchNormalization", [g.node("Conv", ["x", w], ["conv_out"], "conv", pads=[1, 1, 1, 1]), *names], ["y"], "bn")
    graph = helper.make_graph(g.nodes, "float8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 6])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], producer_name="qdq_builders")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model
