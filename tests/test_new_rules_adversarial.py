"""Adversarial property tests of the rule families added last: qdq-bn / qdq-affine, layout ops on
either side of a BN (conv-bn ... matmul-bn through layout ops, bn-layout-linear), activation-scale
and concat-bn.

Hypothesis (seeded, ``derandomize``) builds random models of each family, including variants that
must be refused (a second consumer, a graph output in the middle, a layout chain that loses the
channels, a negative scale after an activation, ...), and checks for every one of them:

- ``bnfold.fold`` never raises; its result passes ``onnx.checker.check_model(full_check=True)``;
- graph inputs and outputs (names, dtypes, shapes) are unchanged;
- onnxruntime (ORT_DISABLE_ALL) computes the same outputs on seeded random inputs: within the
  dtype's tolerance, plus the reported re-quantization bound of an int32 bias; an output that
  comes through QuantizeLinear → DequantizeLinear may move by one quantum;
- folding the result again folds nothing.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.tolerances import tolerance_for
from conftest import SYMBOLIC_DIM, random_feeds, run_ort
from qdq_builders import Y_SCALE, qdq_model

#: ADVERSARIAL_FACTOR=10 runs ten times as many examples (a longer hunt than the suite's).
FACTOR = int(os.environ.get("ADVERSARIAL_FACTOR", "1"))
#: ADVERSARIAL_RANDOM=1: fresh random examples on every run instead of the fixed, seeded ones.
SETTINGS = dict(deadline=None, derandomize=not os.environ.get("ADVERSARIAL_RANDOM"), suppress_health_check=list(HealthCheck), database=None)

ort.set_default_logger_severity(3)

FLOATS = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


# -- the invariant ---------------------------------------------------------------------------------


def _interface(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return ([(i.name, i.type.SerializeToString()) for i in model.graph.input if i.name not in inits],
            [(o.name, o.type.SerializeToString()) for o in model.graph.output])


def check_invariants(model: onnx.ModelProto, *, quantum: float | None = None, expect: bool | None = None,
                     seeds=(0, 1), scale_rounding: float = 0.0) -> bnfold.FoldResult:
    """Fold ``model`` and check everything the module docstring lists. ``quantum``: outputs come
    through QuantizeLinear with this scale; ``expect``: whether something must fold (None: either);
    ``scale_rounding``: a weight scale is rounded to a dtype this coarse (2^-11 for float16), which
    a float output may show relative to its largest value."""
    onnx.checker.check_model(model, full_check=True)
    original = copy.deepcopy(model)
    result = bnfold.fold(model)
    folded = result.model
    assert model.SerializeToString() == original.SerializeToString(), "fold modified its input"
    onnx.checker.check_model(folded, full_check=True)
    assert _interface(folded) == _interface(original)
    if expect is not None:
        assert bool(result.folds) == expect, ([f.rule for f in result.folds],
                                              [(r.rule, r.reason) for r in result.refusals])
    bound = max([getattr(f, "bias_error_bound", None) or 0.0 for f in result.folds] + [0.0])
    for seed in seeds:
        feeds = random_feeds(original, seed)
        expected, got = run_ort(original, feeds), run_ort(folded, feeds)
        assert list(got) == list(expected)
        for name, ref in expected.items():
            out = got[name]
            assert out.dtype == ref.dtype and out.shape == ref.shape, name
            ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
            if not np.all(np.isfinite(ref64)):  # float16 overflow in the original: nothing to compare
                continue
            tol = tolerance_for(ref.dtype)
            scale = max(1.0, float(np.max(np.abs(ref64)))) if ref.size else 1.0
            if quantum is not None:
                diff = np.abs(out64 - ref64)
                assert np.all(diff <= quantum * 1.001 + tol.atol), (name, float(diff.max()))
                moved = int(np.sum(diff > tol.atol))  # elements whose rounding boundary the fold crossed
                assert moved <= max(2, int(np.ceil(0.05 * diff.size))), (name, moved, diff.size)
            else:
                # atol relative to the output's largest value (bnfold.tolerances measures against that scale
                # too): a float16 BN output of hundreds cancels to ~1 in places, where float16 rounding shows
                atol = tol.atol * scale + 2 * bound + 2 * scale_rounding * float(np.max(np.abs(ref64), initial=0))
                np.testing.assert_allclose(out64, ref64, atol=atol, rtol=tol.rtol,
                                           err_msg=f"output {name!r} changed by folding")
    again = bnfold.fold(folded)
    assert again.folds == [], [f.rule for f in again.folds]
    return result


# -- building blocks ---------------------------------------------------------------------------------


class G:
    """A small graph under construction (onnx.helper); every tensor's numpy shape is tracked."""

    def __init__(self, dtype, opset: int, seed: int):
        self.dtype, self.opset = np.dtype(dtype), opset
        self.elem = FLOATS[self.dtype]
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value, prefix="c", dtype=None) -> str:
        value = np.asarray(value)
        value = value.astype(self.dtype if dtype is None and value.dtype.kind == "f" else dtype or value.dtype)
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        self.shapes[name] = value.shape
        return name

    def input(self, shape, symbolic_batch: bool = False) -> str:
        name = self.name("x")
        if symbolic_batch:  # random_feeds gives a symbolic dim this size
            shape = (SYMBOLIC_DIM,) + tuple(shape[1:])
        dims = ["N" if symbolic_batch and i == 0 else d for i, d in enumerate(shape)]
        self.inputs.append(helper.make_tensor_value_info(name, self.elem, dims))
        self.shapes[name] = tuple(shape)
        return name

    def op(self, op: str, inputs, shape, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        self.shapes[out] = tuple(shape)
        return out

    def output(self, name: str, symbolic_batch: bool = False) -> None:
        shape = self.shapes[name]
        dims = [None if symbolic_batch and i == 0 else d for i, d in enumerate(shape)] if shape else shape
        self.outputs.append(helper.make_tensor_value_info(name, self.elem, dims))

    def model(self, infer: bool = False) -> onnx.ModelProto:
        """The model; ``infer``: with the value_info onnx's shape inference adds (as exporters write it)."""
        graph = helper.make_graph(self.nodes, "adv", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model, strict_mode=True) if infer else model

    # -- ops ---------------------------------------------------------------------------------------

    def weight(self, shape, fan_in: int) -> np.ndarray:
        return self.rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))

    #: set by a test: weights of new linear ops come through DequantizeLinear ({qtype, per_channel, zp})
    quant: dict | None = None

    def wconst(self, value: np.ndarray, axis: int) -> str:
        """A weight constant, or (with ``self.quant``) DequantizeLinear of integers quantizing it
        (per channel along ``axis`` — the output-channel axis — or per tensor)."""
        if self.quant is None:
            return self.const(value, "W")
        qtype, per_channel, nonzero_zp = self.quant["qtype"], self.quant["per_channel"], self.quant["zp"]
        info = np.iinfo(qtype)
        span = min(info.max - info.min, 250) // 2 - 2
        value = np.asarray(value, np.float64)
        reduce = tuple(i for i in range(value.ndim) if i != axis)
        peak = np.max(np.abs(value), axis=reduce) if per_channel else np.max(np.abs(value))
        scale = (np.maximum(peak, 1e-3) / span).astype(np.float32)
        mid = (int(info.max) + int(info.min) + 1) // 2
        c = value.shape[axis]
        zp = (mid + self.rng.integers(-2, 3, size=c if per_channel else ()) if nonzero_zp
              else np.full(c if per_channel else (), mid))
        view = [1] * value.ndim
        if per_channel:
            view[axis] = c
        q = np.clip(np.rint(value / scale.reshape(view)) + np.reshape(zp, view), info.min, info.max).astype(qtype)
        if self.quant.get("extreme"):  # a value with no negation in its type (int8 -128, zp 0)
            q.flat[0] = info.min
        inputs = [self.const(q, "Wq"), self.const(scale, "ws", np.float32), self.const(np.asarray(zp).astype(qtype), "wz")]
        attrs = {"axis": axis} if per_channel else {}
        out = self.name("dq")
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [out], name=out, **attrs))
        self.shapes[out] = value.shape
        return out

    def linear(self, kind: str, x: str, out_channels: int, *, bias: bool, group: int = 1, trans_b: int = 0,
               weight: str | None = None) -> str:
        """A linear op reading ``x``; returns its output (a MatMul's bias Add when ``bias``)."""
        shape = self.shapes[x]
        if kind == "Conv":
            c, k = shape[1], 1 + 2 * int(self.rng.integers(0, 2))
            w = weight or self.wconst(self.weight((out_channels, c // group) + (k,) * (len(shape) - 2),
                                                  c // group * k ** (len(shape) - 2)), 0)
            pads = [k // 2] * (2 * (len(shape) - 2))
            inputs = [x, w] + ([self.const(self.rng.standard_normal(out_channels) * 0.5, "B")] if bias else [])
            return self.op("Conv", inputs, (shape[0], out_channels) + shape[2:], group=group, pads=pads)
        if kind == "ConvTranspose":
            c = shape[1]
            w = weight or self.wconst(self.weight((c, out_channels // group) + (2,) * (len(shape) - 2), c), 1)
            inputs = [x, w] + ([self.const(self.rng.standard_normal(out_channels) * 0.5, "B")] if bias else [])
            return self.op("ConvTranspose", inputs, (shape[0], out_channels) + tuple(2 * d for d in shape[2:]),
                           group=group, strides=[2] * (len(shape) - 2))
        if kind == "Gemm":
            k = shape[1]
            w = weight or self.wconst(self.weight((out_channels, k) if trans_b else (k, out_channels), k),
                                      0 if trans_b else 1)
            inputs = [x, w] + ([self.const(self.rng.standard_normal(out_channels) * 0.5, "B")] if bias else [])
            return self.op("Gemm", inputs, (shape[0], out_channels), transB=trans_b, alpha=0.75, beta=1.25)
        k = shape[-1]
        w = weight or self.wconst(self.weight((k, out_channels), k), 1)
        y = self.op("MatMul", [x, w], shape[:-1] + (out_channels,))
        if bias:
            y = self.op("Add", [y, self.const(self.rng.standard_normal(out_channels) * 0.5, "B")], self.shapes[y])
        return y

    def bn(self, x: str, *, positive: bool = False, shift: bool = True, tiny_var: bool = False) -> str:
        c = self.shapes[x][1]
        gamma = self.rng.uniform(0.5, 2.0, c) * (1 if positive else np.where(self.rng.random(c) < 0.4, -1, 1))
        beta = self.rng.standard_normal(c) * 0.5 if shift else np.zeros(c)
        mean = self.rng.standard_normal(c) * 0.5 if shift else np.zeros(c)
        var = self.rng.uniform(1e-6, 1e-5, c) if tiny_var else self.rng.uniform(0.3, 3.0, c)
        params = [self.const(v, "bn") for v in (gamma, beta, mean, var)]
        return self.op("BatchNormalization", [x, *params], self.shapes[x], epsilon=1e-5)

    def axes_op(self, op: str, x: str, axes: list[int], shape) -> str:
        if self.opset >= 13:
            return self.op(op, [x, self.const(np.array(axes, np.int64), "axes")], shape)
        return self.op(op, [x], shape, axes=axes)


# -- layout chains -----------------------------------------------------------------------------------


@st.composite
def layout_step(draw, g: G, x: str) -> str:
    """One random layout op on ``x`` (static shape known), its output."""
    shape = g.shapes[x]
    rank = len(shape)
    choices = ["Transpose", "Reshape", "Flatten", "Unsqueeze"]
    if 1 in shape:
        choices.append("Squeeze")
    op = draw(st.sampled_from(choices))
    if op == "Transpose":
        perm = draw(st.permutations(range(rank)))
        return g.op("Transpose", [x], tuple(shape[p] for p in perm), perm=list(perm))
    if op == "Flatten":
        k = draw(st.integers(-rank, rank))
        kk = k % rank if k < 0 else k
        out = (int(np.prod(shape[:kk])), int(np.prod(shape[kk:])))
        return g.op("Flatten", [x], out, axis=k)
    if op == "Unsqueeze":
        n = draw(st.integers(1, 2))
        out_rank = rank + n
        axes = draw(st.lists(st.integers(-out_rank, out_rank - 1), min_size=n, max_size=n,
                             unique_by=lambda a: a % out_rank))
        norm = sorted(a % out_rank for a in axes)
        src = iter(shape)
        out = tuple(1 if i in norm else next(src) for i in range(out_rank))
        return g.axes_op("Unsqueeze", x, axes, out)
    if op == "Squeeze":
        ones = [i for i, d in enumerate(shape) if d == 1]
        chosen = draw(st.lists(st.sampled_from(ones), min_size=1, max_size=len(ones), unique=True))
        if len(chosen) == rank:  # keep rank >= 1
            chosen = chosen[:-1]
            if not chosen:
                return x
        negative = draw(st.booleans())
        axes = [a - rank if negative else a for a in chosen]
        out = tuple(d for i, d in enumerate(shape) if i not in chosen)
        if draw(st.booleans()) and len(ones) == len(chosen):
            return g.op("Squeeze", [x], out)  # no axes: every size-1 axis
        return g.axes_op("Squeeze", x, axes, out)
    # Reshape: split/merge adjacent dims, maybe insert 1s; then write some dims as 0 / -1
    total = int(np.prod(shape))
    kind = draw(st.sampled_from(["merge", "split", "ones", "random"]))
    target = list(shape)
    if kind == "merge" and rank >= 2:
        i = draw(st.integers(0, rank - 2))
        target = target[:i] + [target[i] * target[i + 1]] + target[i + 2:]
    elif kind == "split":
        i = draw(st.integers(0, rank - 1))
        d = target[i]
        divisors = [f for f in range(1, d + 1) if d % f == 0]
        f = draw(st.sampled_from(divisors))
        target = target[:i] + [f, d // f] + target[i + 1:]
    elif kind == "ones":
        i = draw(st.integers(0, rank))
        target = target[:i] + [1] + target[i:]
    elif kind == "random":
        divisors = [f for f in range(1, total + 1) if total % f == 0]
        a = draw(st.sampled_from(divisors))
        target = [a, total // a]
    out = tuple(target)
    written = list(target)
    for i in range(len(written)):
        if i < rank and written[i] == shape[i] and draw(st.integers(0, 3)) == 0:
            written[i] = 0
    if draw(st.booleans()):
        written[draw(st.integers(0, len(written) - 1))] = -1
    return g.op("Reshape", [x, g.const(np.array(written, np.int64), "shape")], out)


@st.composite
def layout_chain(draw, g: G, x: str, max_ops: int = 3) -> str:
    for _ in range(draw(st.integers(0, max_ops))):
        if len(g.shapes[x]) > 5:
            break
        x = draw(layout_step(g, x))
    return x


def rank_ok(shape) -> bool:
    return 2 <= len(shape) <= 6 and shape[1] >= 1


# -- family: linear op → layout ops → BN --------------------------------------------------------------


@st.composite
def linear_source(draw, g: G, symbolic: bool) -> tuple[str, str]:
    """A linear op of a random kind on a new input; (its output, the input)."""
    kind = draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "MatMul"]))
    bias = draw(st.booleans())
    if kind in ("Conv", "ConvTranspose"):
        spatial = draw(st.integers(1, 3))
        group = draw(st.sampled_from([1, 2]))
        c = 2 * draw(st.integers(1, 2))
        x = g.input((draw(st.integers(1, 2)), c) + (3,) * spatial if spatial < 3 else (1, c, 2, 3, 2), symbolic)
        m = group * draw(st.integers(1, 3))
        if kind == "Conv" and draw(st.booleans()):
            group, m = c, c * draw(st.integers(1, 2))  # depthwise
        return g.linear(kind, x, m, bias=bias, group=group), x
    if kind == "Gemm":
        x = g.input((draw(st.integers(1, 3)), draw(st.integers(2, 5))), symbolic)
        return g.linear("Gemm", x, draw(st.integers(1, 6)), bias=bias, trans_b=int(draw(st.booleans()))), x
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(rank - 1)) + (draw(st.integers(2, 5)),)
    x = g.input(shape, symbolic)
    return g.linear("MatMul", x, draw(st.integers(1, 6)), bias=bias), x


@settings(max_examples=500 * FACTOR, **SETTINGS)
@given(st.data())
def test_linear_layout_bn(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    opset = data.draw(st.sampled_from([11, 13, 17]))
    symbolic = data.draw(st.booleans())
    g = G(dtype, opset, data.draw(st.integers(0, 10 ** 6)))
    quantized = dtype == np.float32 and data.draw(st.booleans())
    if quantized:
        g.quant = dict(qtype=data.draw(st.sampled_from([np.int8, np.uint8, np.int16])),
                       per_channel=opset >= 13 and data.draw(st.booleans()), zp=data.draw(st.booleans()),
                       extreme=data.draw(st.integers(0, 5)) == 0)
        if g.quant["qtype"] == np.int16:
            g.opset = opset = 21
    y, _ = data.draw(linear_source(g, symbolic))
    tensors = [y]
    for _ in range(data.draw(st.integers(1, 2))):  # one or two (layout chain → BN) steps
        y = data.draw(layout_chain(g, y))
        if not rank_ok(g.shapes[y]):
            shape = g.shapes[y]
            target = (shape[0], int(np.prod(shape[1:]))) if len(shape) >= 2 else (1, shape[0])
            y = g.op("Reshape", [y, g.const(np.array([0, -1] if len(shape) >= 2 else [1, -1], np.int64))], target)
        tensors.append(y)
        y = g.bn(y, tiny_var=dtype == np.float16 and data.draw(st.integers(0, 9)) == 0)
        tensors.append(y)
    g.output(y)
    extra = data.draw(st.integers(0, 5))
    if extra <= 1:
        t = data.draw(st.sampled_from(tensors[:-1]))
        if extra == 0:
            g.output(t)  # an intermediate graph output
        else:
            g.output(g.op("Neg", [t], g.shapes[t]))  # a second consumer
    check_invariants(g.model(data.draw(st.booleans())))


# -- family: BN → layout ops → linear op(s) -----------------------------------------------------------


@st.composite
def reader(draw, g: G, x: str) -> str | None:
    """A Conv / Gemm / MatMul reading ``x`` as its data input, when one fits its shape."""
    shape = g.shapes[x]
    kinds = ["MatMul"] if len(shape) >= 1 else []
    if len(shape) == 2:
        kinds.append("Gemm")
    if 3 <= len(shape) <= 5:
        kinds.append("Conv")
    kind = draw(st.sampled_from(kinds))
    bias = draw(st.booleans())
    if kind == "MatMul":
        k = shape[-1]
        w = g.const(g.weight((k, draw(st.integers(1, 4))), k), "W")
        out = g.op("MatMul", [x, w], shape[:-1] + (g.shapes[w][1],))
        if bias:
            out = g.op("Add", [out, g.const(g.rng.standard_normal(g.shapes[w][1]), "B")], g.shapes[out])
        return out
    if kind == "Gemm":
        trans_a = int(draw(st.booleans()))
        trans_b = int(draw(st.booleans()))
        k = shape[0] if trans_a else shape[1]
        n = draw(st.integers(1, 4))
        w = g.const(g.weight((n, k) if trans_b else (k, n), k), "W")
        inputs = [x, w] + ([g.const(g.rng.standard_normal(n), "B")] if bias else [])
        return g.op("Gemm", inputs, (shape[1] if trans_a else shape[0], n), transA=trans_a, transB=trans_b)
    c = shape[1]
    group = draw(st.sampled_from([g_ for g_ in (1, 2, c) if c % g_ == 0]))
    m = group * draw(st.integers(1, 2))
    pad = int(draw(st.integers(0, 3)) == 0)
    k = 1 + 2 * pad
    w = g.const(g.weight((m, c // group) + (k,) * (len(shape) - 2), c // group), "W")
    inputs = [x, w] + ([g.const(g.rng.standard_normal(m), "B")] if bias else [])
    return g.op("Conv", inputs, (shape[0], m) + shape[2:], group=group, pads=[pad] * (2 * (len(shape) - 2)))


@settings(max_examples=500 * FACTOR, **SETTINGS)
@given(st.data())
def test_bn_layout_linear(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    opset = data.draw(st.sampled_from([11, 13, 17]))
    symbolic = data.draw(st.booleans())
    g = G(dtype, opset, data.draw(st.integers(0, 10 ** 6)))
    rank = data.draw(st.integers(2, 4))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4))) + \
        tuple(data.draw(st.integers(1, 3)) for _ in range(rank - 2))
    x = g.input(shape, symbolic)
    b = g.bn(x)
    outs = []
    branches = data.draw(st.integers(1, 2))
    for _ in range(branches):
        y = data.draw(layout_chain(g, b, 3))
        if len(g.shapes[y]) > 5:
            continue
        extra = data.draw(st.integers(0, 7))
        if extra == 0:
            outs.append(g.op("Relu", [y], g.shapes[y]))  # a reader that needs BN's values: refuse
        elif extra == 1 and y != b:
            outs.append(y)  # a layout op's output is a graph output: refuse
        outs.append(data.draw(reader(g, y)))
    for o in dict.fromkeys(outs):
        g.output(o)
    if not g.outputs:
        g.output(b)
    check_invariants(g.model(data.draw(st.booleans())))


# -- family: linear → Relu / LeakyRelu / PRelu → Mul / Div / BN ----------------------------------------


@settings(max_examples=500 * FACTOR, **SETTINGS)
@given(st.data())
def test_activation_scale(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    g = G(dtype, data.draw(st.sampled_from([11, 17])), data.draw(st.integers(0, 10 ** 6)))
    y, _ = data.draw(linear_source(g, data.draw(st.booleans())))
    shape = g.shapes[y]
    rank = len(shape)
    # the channel axis of the linear op: 1 for Conv / Gemm, the last for MatMul
    matmul = any(n.op_type == "MatMul" for n in g.nodes)
    axis = rank - 1 if matmul else 1
    c = shape[axis]
    act = data.draw(st.sampled_from(["Relu", "LeakyRelu", "PRelu", "Sigmoid"]))
    if act == "PRelu":
        slope_kind = data.draw(st.sampled_from(["scalar", "one", "channel", "full"]))
        if slope_kind == "scalar":
            slope = np.array(data.draw(st.floats(-2, 2)))
        elif slope_kind == "one":
            slope = np.array([data.draw(st.floats(-2, 2))])
        elif slope_kind == "channel":
            slope = g.rng.standard_normal((c,) + (1,) * (rank - 1 - axis))
        else:
            slope = g.rng.standard_normal(shape[1:])
        a = g.op("PRelu", [y, g.const(slope, "slope")], shape)
    elif act == "LeakyRelu":
        a = g.op("LeakyRelu", [y], shape, alpha=data.draw(st.floats(-1, 2)))
    else:
        a = g.op(act, [y], shape)
    follower = data.draw(st.sampled_from(["Mul", "Div", "MulFirst", "BN"]))
    sign = data.draw(st.sampled_from(["positive", "positive", "mixed", "zero"]))
    mag = data.draw(st.sampled_from([1.0, 1e-3, 1e3]))
    if follower == "BN" and axis == 1:
        z = g.bn(a, positive=sign != "mixed", shift=data.draw(st.integers(0, 3)) == 0)
    else:
        cshape = data.draw(st.sampled_from(["channel", "scalar", "full_rank", "wrong"]))
        if cshape == "channel":
            value = g.rng.uniform(0.5, 2.0, (c,) + (1,) * (rank - 1 - axis))
        elif cshape == "scalar":
            value = np.array(g.rng.uniform(0.5, 2.0))
        elif cshape == "full_rank":
            value = g.rng.uniform(0.5, 2.0, tuple(d if i == axis else 1 for i, d in enumerate(shape)))
        else:
            value = g.rng.uniform(0.5, 2.0, shape[-1:])
        value = value * mag
        if sign == "mixed":
            value = value * np.where(g.rng.random(value.shape) < 0.5, -1, 1)
        elif sign == "zero" and value.size:
            value.flat[0] = 0.0 if follower != "Div" else -1.0
        if dtype == np.float16 and mag == 1e3:
            value = value / 10
        k = g.const(value, "k")
        op = "Div" if follower == "Div" else "Mul"
        inputs = [k, a] if follower == "MulFirst" else [a, k]
        z = g.op(op, inputs, np.broadcast_shapes(shape, value.shape))
    g.output(z)
    extra = data.draw(st.integers(0, 6))
    if extra == 0:
        g.output(a)
    elif extra == 1:
        g.output(g.op("Neg", [a], shape))
    check_invariants(g.model(data.draw(st.booleans())))


# -- family: linear ops → Concat(axis 1) → BN ---------------------------------------------------------


@st.composite
def concat_producer(draw, g: G, kind_rank: str, batch: int, spatial: tuple[int, ...], shared: dict) -> str:
    c = draw(st.integers(1, 4))
    if kind_rank == "2d":
        kind = draw(st.sampled_from(["Gemm", "MatMul", "MatMul3"]))
        if kind == "MatMul3":  # [B, T, K] @ W → Transpose(0, 2, 1) → Reshape [B*?]: keep it 2-D: Flatten
            x = g.input((batch, 1, 3))
            y = g.linear("MatMul", x, c, bias=draw(st.booleans()))
            return g.op("Squeeze", [y, g.const(np.array([1], np.int64), "axes")], (batch, c)) if g.opset >= 13 \
                else g.op("Squeeze", [y], (batch, c), axes=[1])
        x = g.input((batch, 3))
        if "w2" in shared and draw(st.booleans()):
            w = shared["w2"]
            c = g.shapes[w][1]
            return g.linear("MatMul", x, c, bias=draw(st.booleans()), weight=w)
        y = g.linear(kind, x, c, bias=draw(st.booleans()), trans_b=int(draw(st.booleans())))
        if kind == "MatMul":
            shared.setdefault("w2", g.nodes[-1].input[1] if g.nodes[-1].op_type == "MatMul" else
                              g.nodes[-2].input[1])
        return y
    kind = draw(st.sampled_from(["Conv", "ConvTranspose", "MatMulT", "Pool"]))
    if kind == "Conv":
        x = g.input((batch, 2) + spatial)
        if "wc" in shared and draw(st.booleans()):
            w, group = shared["wc"]
            return g.op("Conv", [x, w], (batch, g.shapes[w][0]) + spatial, group=group,
                        pads=[g.shapes[w][2] // 2] * 2 * len(spatial))
        group = draw(st.sampled_from([1, 2]))
        y = g.linear("Conv", x, 2 * c, bias=draw(st.booleans()), group=group)
        shared.setdefault("wc", (g.nodes[-1].input[1], group))
        return y
    if kind == "ConvTranspose":
        x = g.input((batch, 2) + tuple(d // 2 for d in spatial))
        return g.linear("ConvTranspose", x, c, bias=draw(st.booleans()))
    if kind == "MatMulT" and len(spatial) == 1:
        x = g.input((batch, spatial[0], 3))
        y = g.linear("MatMul", x, c, bias=draw(st.booleans()))
        return g.op("Transpose", [y], (batch, c, spatial[0]), perm=[0, 2, 1])
    x = g.input((batch, c) + spatial)
    return g.op("Relu", [x], g.shapes[x])  # not a linear op: refuse


@settings(max_examples=500 * FACTOR, **SETTINGS)
@given(st.data())
def test_concat_bn(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    g = G(dtype, data.draw(st.sampled_from([11, 17])), data.draw(st.integers(0, 10 ** 6)))
    kind_rank = data.draw(st.sampled_from(["2d", "nd"]))
    batch = data.draw(st.integers(1, 2))
    spatial = data.draw(st.sampled_from([(4,), (2, 4), (4, 2)]))
    shared: dict = {}
    ys = [data.draw(concat_producer(g, kind_rank, batch, spatial, shared))
          for _ in range(data.draw(st.integers(2, 4)))]
    rank = len(g.shapes[ys[0]])
    if data.draw(st.integers(0, 8)) == 0:
        ys.append(ys[0])  # the same producer twice
    axis = data.draw(st.sampled_from([1, 1 - rank]))
    shape = list(g.shapes[ys[0]])
    shape[1] = sum(g.shapes[y][1] for y in ys)
    cat = g.op("Concat", ys, tuple(shape), axis=axis)
    z = g.bn(cat)
    g.output(z)
    extra = data.draw(st.integers(0, 7))
    if extra == 0:
        g.output(ys[-1])
    elif extra == 1:
        g.output(cat)
    elif extra == 2:
        g.output(g.op("Neg", [ys[0]], g.shapes[ys[0]]))
    check_invariants(g.model(data.draw(st.booleans())))


# -- family: quantized weights -------------------------------------------------------------------------


@settings(max_examples=500 * FACTOR, **SETTINGS)
@given(st.data())
def test_qdq(data):
    op = data.draw(st.sampled_from(["Conv", "ConvTranspose", "Gemm", "MatMul"]))
    follower = data.draw(st.sampled_from(["bn", "mul", "add", "sub", "div"]))
    qtype = data.draw(st.sampled_from(["int8", "uint8", "int16"]))
    bias = data.draw(st.sampled_from(["none", "float", "int32"]))
    output_qdq = data.draw(st.booleans())
    kwargs = dict(
        follower=follower, qtype=qtype, per_channel=data.draw(st.booleans()), bias=bias,
        input_qdq=data.draw(st.booleans()) or bias == "int32", output_qdq=output_qdq,
        group=data.draw(st.sampled_from([1, 2])) if op in ("Conv", "ConvTranspose") else 1,
        trans_b=int(data.draw(st.booleans())) if op == "Gemm" else 0,
        positive=data.draw(st.booleans()), extreme=data.draw(st.integers(0, 4)) == 0,
        bias_convention=data.draw(st.sampled_from(["product", "other"])), seed=data.draw(st.integers(0, 1000)),
        share=data.draw(st.sampled_from([None, None, "dq", "scale", "integers"])),
        scale_dtype=data.draw(st.sampled_from([np.float32, np.float32, np.float16])),
        zero_point=data.draw(st.booleans()) or qtype == "uint8",
    )
    layout = data.draw(st.sampled_from(["axis", "axis", "other_axis", "blocked"]))
    if layout == "other_axis" and kwargs["per_channel"]:
        kwargs["dq_axis"] = 0 if op in ("ConvTranspose", "MatMul") or (op == "Gemm" and not kwargs["trans_b"]) else 1
    elif layout == "blocked" and qtype != "int16" and kwargs["scale_dtype"] == np.float32:
        kwargs["block_size"] = 2
    if kwargs["scale_dtype"] == np.float32 and qtype == "int8" and not kwargs.get("block_size") \
            and data.draw(st.integers(0, 3)) == 0:
        kwargs["opset"] = 10 if not kwargs["per_channel"] else 13
    m = 6
    rank = 4 if op in ("Conv", "ConvTranspose") else 2
    factor_kind = data.draw(st.sampled_from(["default", "tiny", "huge", "uniform_neg", "scalar"]))
    if follower in ("mul", "div") and factor_kind != "default":
        rng = np.random.default_rng(kwargs["seed"])
        shape = [1, m, 1, 1] if rank == 4 else [m]
        if factor_kind == "tiny":
            value = rng.uniform(0.5, 2, shape) * 1e-6
        elif factor_kind == "huge":
            value = rng.uniform(0.5, 2, shape) * 1e3
        elif factor_kind == "uniform_neg":
            value = -np.full(shape, 0.7)
        else:
            value = np.array(-0.5 if not kwargs["positive"] else 0.5)
        kwargs["factor"] = value
    if kwargs["scale_dtype"] == np.float16:
        # the new scale is rounded to float16 (2^-11) while the weight is float32: by design (test_quantized's
        # test_float16_scales_fold); through cancellation against the bias that can move a quantized output by
        # several quanta, so only float outputs are compared, within that rounding
        kwargs["output_qdq"] = output_qdq = False
    try:
        model = qdq_model(op, **kwargs)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError):
        return
    ref = run_ort(model, random_feeds(model, 0))["y"]
    if not np.all(np.isfinite(ref)):
        return
    check_invariants(model, quantum=Y_SCALE if output_qdq else None,
                     scale_rounding=2.0 ** -11 if kwargs["scale_dtype"] == np.float16 else 0.0)


# -- hand-written nasty cases ----------------------------------------------------------------------------

_rng = np.random.default_rng(7)
N = helper.make_node


def _f(*shape) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _model(nodes, inits, x_shape, y_shape, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "nasty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _bnp(c: int, pre: str = "bn") -> dict:
    return {f"{pre}_s": _f(c), f"{pre}_b": _f(c), f"{pre}_m": _f(c), f"{pre}_v": np.abs(_f(c)) + 0.5}


def _bn(x: str, y: str, pre: str = "bn"):
    return N("BatchNormalization", [x, f"{pre}_s", f"{pre}_b", f"{pre}_m", f"{pre}_v"], [y], name=y)


def _dq(name: str, w: np.ndarray, axis: int | None):
    """DequantizeLinear ``name`` of int8 quantizing ``w`` (per channel on ``axis``, or per tensor)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) if axis is not None else np.abs(w).max()) / 100
    view = [1] * w.ndim
    if axis is not None:
        view[axis] = -1
    q = np.clip(np.rint(w / np.reshape(scale, view)), -127, 127).astype(np.int8)
    node = N("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], name=f"{name}_dq",
             **({"axis": axis} if axis is not None else {}))
    return node, {f"{name}_q": q, f"{name}_s": np.asarray(scale, np.float32),
                  f"{name}_z": np.zeros(np.shape(scale), np.int8)}


def _axes(v) -> np.ndarray:
    return np.array(v, np.int64)


def _nasty_cases() -> dict:
    cases = {}
    # a bias Add that raises MatMul's rank: BN then normalizes the rows (refuse), for float and QDQ weights
    cases["matmul_rank_raising_bias_bn"] = (_model(
        [N("MatMul", ["x", "W"], ["mm"], name="mm"), N("Add", ["mm", "B"], ["a"], name="add"), _bn("a", "y")],
        {"W": _f(5, 3), "B": _f(1, 1, 3), **_bnp(3)}, [3, 5], [1, 3, 3]), False)
    node, inits = _dq("W", _f(5, 3), 1)
    cases["qdq_matmul_rank_raising_bias_bn"] = (_model(
        [node, N("MatMul", ["x", "W"], ["mm"], name="mm"), N("Add", ["mm", "B"], ["a"], name="add"), _bn("a", "y")],
        {**inits, "B": _f(1, 1, 3), **_bnp(3)}, [3, 5], [1, 3, 3]), False)
    cases["matmul_rank_raising_bias_relu_mul"] = (_model(
        [N("MatMul", ["x", "W"], ["mm"], name="mm"), N("Add", ["mm", "B"], ["a"], name="add"),
         N("Relu", ["a"], ["r"], name="relu"), N("Mul", ["r", "k"], ["y"], name="mul")],
        {"W": _f(5, 3), "B": _f(2, 1, 3), "k": np.abs(_f(3)) + 0.5}, [3, 5], [2, 3, 3]), False)
    cases["matmul_rank_raising_bias_transpose_bn"] = (_model(
        [N("MatMul", ["x", "W"], ["mm"], name="mm"), N("Add", ["mm", "B"], ["a"], name="add"),
         N("Transpose", ["a"], ["t"], perm=[0, 2, 1], name="t"), _bn("t", "y")],
        {"W": _f(5, 3), "B": _f(2, 1, 3), **_bnp(3)}, [4, 5], [2, 3, 4]), False)
    # Gemm's C of every broadcastable shape, float and QDQ weights, into BN, Mul, and Relu → Mul
    for c_shape in ([], [1], [3], [2, 3], [2, 1], [1, 3]):
        for quantized in (False, True):
            node, inits = _dq("W", _f(4, 3), 1) if quantized else (None, {"W": _f(4, 3)})
            pre = [node] if quantized else []
            c = {"C": _f(*c_shape) if c_shape else np.float32(0.7)}
            gemm = N("Gemm", ["x", "W", "C"], ["g"], name="gemm", alpha=0.5, beta=1.5)
            tag = f"gemm_C{c_shape}_{'qdq' if quantized else 'float'}"
            cases[tag + "_bn"] = (_model(pre + [gemm, _bn("g", "y")], {**inits, **c, **_bnp(3)}, [2, 4], [2, 3]), True)
            cases[tag + "_mul"] = (_model(pre + [gemm, N("Mul", ["g", "k"], ["y"], name="mul")],
                                          {**inits, **c, "k": _f(3)}, [2, 4], [2, 3]), True)
            cases[tag + "_relu_mul"] = (_model(
                pre + [gemm, N("Relu", ["g"], ["r"], name="r"), N("Mul", ["r", "k"], ["y"], name="mul")],
                {**inits, **c, "k": np.abs(_f(3)) + 0.1}, [2, 4], [2, 3]), not quantized)
    # BN → layout ops → linear op: rank 1 MatMul input, Gemm transA, Flatten → Gemm transB, grouped and depthwise Conv
    cases["bn_squeeze_matmul_1d"] = (_model(
        [_bn("x", "b"), N("Squeeze", ["b", "ax"], ["s"], name="sq"), N("MatMul", ["s", "W"], ["y"], name="mm")],
        {**_bnp(4), "ax": _axes([0]), "W": _f(4, 3)}, [1, 4], [3]), True)
    cases["bn_transpose_gemm_transA"] = (_model(
        [_bn("x", "b"), N("Transpose", ["b"], ["t"], perm=[1, 0], name="t"),
         N("Gemm", ["t", "W", "C"], ["y"], transA=1, name="g")],
        {**_bnp(4), "W": _f(4, 3), "C": _f(3)}, [2, 4], [2, 3]), True)
    cases["bn_flatten_gemm_transB_C2d"] = (_model(
        [_bn("x", "b"), N("Flatten", ["b"], ["t"], name="fl"),
         N("Gemm", ["t", "W", "C"], ["y"], transB=1, beta=0.5, name="g")],
        {**_bnp(4), "W": _f(3, 4), "C": _f(2, 3)}, [2, 4, 1, 1], [2, 3]), True)
    cases["bn_reshape_conv_group"] = (_model(
        [_bn("x", "b"), N("Reshape", ["b", "sh"], ["t"], name="r"), N("Conv", ["t", "W"], ["y"], group=2, name="c")],
        {**_bnp(4), "sh": _axes([0, 0, 2, 3]), "W": _f(4, 2, 1, 1)}, [1, 4, 6], [1, 4, 2, 3]), True)
    cases["bn_unsqueeze_conv1d_depthwise"] = (_model(
        [_bn("x", "b"), N("Unsqueeze", ["b", "ax"], ["t"], name="u"), N("Conv", ["t", "W", "B"], ["y"], group=4, name="c")],
        {**_bnp(4), "ax": _axes([-1]), "W": _f(8, 1, 1), "B": _f(8)}, [2, 4], [2, 8, 1]), True)
    cases["bn_transpose_matmul_and_padded_conv"] = (_model(
        [_bn("x", "b"), N("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="t"), N("MatMul", ["t", "W"], ["m1"], name="mm1"),
         N("Conv", ["b", "Wc"], ["c"], pads=[1, 1], name="c"), N("Transpose", ["c"], ["ct"], perm=[0, 2, 1], name="t2"),
         N("Add", ["m1", "ct"], ["y"], name="add")],
        {**_bnp(4), "W": _f(4, 3), "Wc": _f(3, 4, 3)}, [2, 4, 5], [2, 5, 3]), False)
    cases["bn_three_transposes_matmul"] = (_model(
        [_bn("x", "b")] + [N("Transpose", [i], [o], perm=[0, 2, 1], name=o) for i, o in (("b", "t1"), ("t1", "t2"), ("t2", "t3"))]
        + [N("MatMul", ["t3", "W"], ["y"], name="mm")], {**_bnp(4), "W": _f(4, 3)}, [2, 4, 5], [2, 5, 3]), True)
    cases["bn_matmul_reads_it_as_both_inputs"] = (_model(
        [_bn("x", "b"), N("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="t"), N("MatMul", ["t", "b"], ["y"], name="mm")],
        {**_bnp(4)}, [2, 4, 4], [2, 4, 4]), False)
    # concat: Gemm → Unsqueeze next to a 1x1 Conv along axis -3; one input; a QDQ producer (refuse); Relu → Mul after it
    cases["concat_gemm_unsqueeze_and_conv"] = (_model(
        [N("Flatten", ["x"], ["xf"], name="fl"), N("Gemm", ["xf", "Wg"], ["g"], name="g"), N("Unsqueeze", ["g", "ax"], ["gu"], name="u"),
         N("Conv", ["x", "Wc", "Bc"], ["c"], name="c"), N("Concat", ["gu", "c"], ["cat"], axis=-3, name="cat"), _bn("cat", "y")],
        {"Wg": _f(4, 3), "ax": _axes([2, 3]), "Wc": _f(2, 4, 1, 1), "Bc": _f(2), **_bnp(5)}, [2, 4, 1, 1], [2, 5, 1, 1]), None)
    cases["concat_single_input"] = (_model(
        [N("Conv", ["x", "Wc"], ["c"], name="c"), N("Concat", ["c"], ["cat"], axis=1, name="cat"), _bn("cat", "y")],
        {"Wc": _f(3, 4, 1, 1), **_bnp(3)}, [1, 4, 2, 2], [1, 3, 2, 2]), True)
    node, inits = _dq("Wq", _f(3, 4, 1, 1), 0)
    cases["concat_qdq_and_float_producer"] = (_model(
        [node, N("Conv", ["x", "Wq"], ["c1"], name="c1"), N("Conv", ["x", "Wc"], ["c"], name="c"),
         N("Concat", ["c1", "c"], ["cat"], axis=1, name="cat"), _bn("cat", "y")],
        {**inits, "Wc": _f(3, 4, 1, 1), **_bnp(6)}, [1, 4, 2, 2], [1, 6, 2, 2]), False)
    cases["concat_relu_mul"] = (_model(
        [N("Conv", ["x", "Wc"], ["c"], name="c"), N("Conv", ["x", "Wc2"], ["c2"], name="c2"),
         N("Concat", ["c", "c2"], ["cat"], axis=1, name="cat"), N("Relu", ["cat"], ["r"], name="r"), N("Mul", ["r", "k"], ["y"], name="mul")],
        {"Wc": _f(3, 4, 1, 1), "Wc2": _f(3, 4, 1, 1), "k": np.abs(_f(1, 6, 1, 1)) + 0.2}, [1, 4, 2, 2], [1, 6, 2, 2]), False)
    # activations: a chain of two scaled activations, a Mul whose constant broadcasts over the batch (refuse)
    cases["activation_chain"] = (_model(
        [N("Conv", ["x", "Wc"], ["c"], name="c"), N("Relu", ["c"], ["r"], name="r"), N("Mul", ["r", "k"], ["m"], name="mul"),
         N("LeakyRelu", ["m"], ["r2"], alpha=0.1, name="r2"), N("Div", ["r2", "k2"], ["y"], name="div")],
        {"Wc": _f(3, 4, 1, 1), "k": np.abs(_f(1, 3, 1, 1)) + 0.2, "k2": np.abs(_f(3, 1, 1)) + 0.2}, [1, 4, 2, 2], [1, 3, 2, 2]), True)
    cases["activation_mul_broadcasts_batch"] = (_model(
        [N("Conv", ["x", "Wc"], ["c"], name="c"), N("Relu", ["c"], ["r"], name="r"), N("Mul", ["r", "k"], ["y"], name="mul")],
        {"Wc": _f(3, 4, 1, 1), "k": np.abs(_f(2, 3, 1, 1)) + 0.2}, [1, 4, 2, 2], [2, 3, 2, 2]), False)
    cases["activation_mul_raises_rank"] = (_model(
        [N("Conv", ["x", "Wc"], ["c"], name="c"), N("PRelu", ["c", "sl"], ["r"], name="r"), N("Mul", ["r", "k"], ["y"], name="mul")],
        {"Wc": _f(3, 4, 1, 1), "sl": _f(3, 1, 1), "k": np.abs(_f(1, 1, 3, 1, 1)) + 0.2}, [1, 4, 2, 2], [1, 1, 3, 2, 2]), False)
    # QDQ through layout ops; per tensor before opset 13 (refuse), a scalar factor there (folds)
    node, inits = _dq("Wq", _f(5, 3), 1)
    cases["qdq_matmul3d_transpose_bn"] = (_model(
        [node, N("MatMul", ["x", "Wq"], ["mm"], name="mm"), N("Transpose", ["mm"], ["t"], perm=[0, 2, 1], name="t"), _bn("t", "y")],
        {**inits, **_bnp(3)}, [2, 4, 5], [2, 3, 4]), True)
    for opset, expect in ((17, True), (11, False)):
        node, inits = _dq("Wq", _f(3, 2, 1, 1), None)
        cases[f"qdq_conv_reshape_bn_per_tensor_opset{opset}"] = (_model(
            [node, N("Conv", ["x", "Wq"], ["c"], name="c"), N("Reshape", ["c", "sh"], ["r"], name="r"), _bn("r", "y")],
            {**inits, "sh": _axes([0, 0, -1]), **_bnp(3)}, [2, 2, 3, 3], [2, 3, 9], opset=opset), expect)
    node, inits = _dq("Wq", _f(3, 2, 1, 1), None)
    cases["qdq_scalar_negative_factor_opset11"] = (_model(
        [node, N("Conv", ["x", "Wq"], ["c"], name="c"), N("Mul", ["c", "k"], ["y"], name="m")],
        {**inits, "k": np.float32(-0.5)}, [2, 2, 3, 3], [2, 3, 3, 3], opset=11), True)
    return cases


NASTY = _nasty_cases()


@pytest.mark.parametrize("name", list(NASTY))
def test_nasty_case(name):
    model, expect = NASTY[name]
    check_invariants(copy.deepcopy(model), expect=expect)


def _with_if_reading(model: onnx.ModelProto, tensor: str, shape) -> onnx.ModelProto:
    """``model`` plus an If whose branches read ``tensor`` of the main graph (an outer-scope reference)."""
    model = copy.deepcopy(model)
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    then = helper.make_graph([N("Neg", [tensor], ["then_out"], name="neg_in")], "then", [], [out("then_out")])
    other = helper.make_graph([N("Relu", [tensor], ["else_out"], name="relu_in")], "else", [], [out("else_out")])
    model.graph.node.append(N("If", ["cond"], ["if_out"], name="if", then_branch=then, else_branch=other))
    model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    model.graph.output.append(out("if_out"))
    return model


def _subgraph_cases() -> dict:
    bn_layout = _model([_bn("x", "b"), N("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="tr"), N("MatMul", ["t", "W"], ["y"], name="mm")],
                       {**_bnp(4), "W": _f(4, 3)}, [2, 4, 5], [2, 5, 3])
    act = _model([N("Conv", ["x", "W"], ["c"], name="conv"), N("Relu", ["c"], ["r"], name="relu"), N("Mul", ["r", "k"], ["y"], name="mul")],
                 {"W": _f(4, 2, 1, 1), "k": np.abs(_f(1, 4, 1, 1)) + 0.5}, [1, 2, 3, 3], [1, 4, 3, 3])
    concat = _model([N("Conv", ["x", "W1"], ["c1"], name="conv1"), N("Conv", ["x", "W2"], ["c2"], name="conv2"),
                     N("Concat", ["c1", "c2"], ["cat"], axis=1, name="cat"), _bn("cat", "y")],
                    {**_bnp(4), "W1": _f(2, 2, 1, 1), "W2": _f(2, 2, 1, 1)}, [1, 2, 3, 3], [1, 4, 3, 3])
    node, inits = _dq("W", _f(4, 2, 1, 1), 0)
    qdq = _model([node, N("Conv", ["x", "W"], ["c"], name="conv"), _bn("c", "y")], {**inits, **_bnp(4)}, [1, 2, 3, 3], [1, 4, 3, 3])
    return {
        "bn_layout_bn_output": (bn_layout, "b", [2, 4, 5], False),
        "bn_layout_transpose_output": (bn_layout, "t", [2, 5, 4], False),
        "activation_relu_output": (act, "r", [1, 4, 3, 3], False),
        "activation_conv_output": (act, "c", [1, 4, 3, 3], False),
        "concat_producer_output": (concat, "c1", [1, 2, 3, 3], False),
        "concat_output": (concat, "cat", [1, 4, 3, 3], False),
        "qdq_dequantized_weight": (qdq, "W", [4, 2, 1, 1], True),  # folds into a new DequantizeLinear
        "qdq_weight_scale": (qdq, "W_s", [4], True),
        "qdq_conv_output": (qdq, "c", [1, 4, 3, 3], False),
    }


SUBGRAPH = _subgraph_cases()


@pytest.mark.parametrize("name", list(SUBGRAPH))
def test_a_tensor_read_inside_an_if_branch(name):
    """A subgraph reading the tensor a fold changes or removes: refused, or folded leaving its values alone."""
    model, tensor, shape, expect = SUBGRAPH[name]
    check_invariants(_with_if_reading(model, tensor, shape), expect=expect)


def _half_model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, y_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _bn15(c: int, scale_dtype, stats_dtype, positive: bool = False, shift: bool = True) -> dict:
    gamma = np.abs(_f(c)) + 0.5 if positive else _f(c)
    beta, mean = (_f(c), _f(c)) if shift else (np.zeros(c), np.zeros(c))
    return {"bn_s": gamma.astype(scale_dtype), "bn_b": beta.astype(scale_dtype), "bn_m": mean.astype(stats_dtype),
            "bn_v": (np.abs(_f(c)) + 0.5).astype(stats_dtype)}


def _h(a) -> np.ndarray:
    return np.asarray(a).astype(np.float16)


@pytest.mark.parametrize("scale_dtype, stats_dtype", [(np.float32, np.float32), (np.float32, np.float16),
                                                      (np.float16, np.float32)])
@pytest.mark.parametrize("family", ["bn_layout_linear", "linear_layout_bn", "concat", "activation"])
def test_float16_data_with_a_bn15_of_other_dtypes(family, scale_dtype, stats_dtype):
    """BN-15 lets scale/bias (T1) and mean/var (T2) differ from the float16 data: every family folds exactly."""
    if family == "bn_layout_linear":
        model = _half_model([_bn("x", "b"), N("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="tr"),
                             N("MatMul", ["t", "W"], ["y"], name="mm")],
                            {**_bn15(4, scale_dtype, stats_dtype), "W": _h(_f(4, 3))}, [2, 4, 5], [2, 5, 3])
    elif family == "linear_layout_bn":
        model = _half_model([N("MatMul", ["x", "W"], ["mm"], name="mm"), N("Transpose", ["mm"], ["t"], perm=[0, 2, 1], name="tr"),
                             _bn("t", "y")], {**_bn15(3, scale_dtype, stats_dtype), "W": _h(_f(5, 3))}, [2, 4, 5], [2, 3, 4])
    elif family == "concat":
        model = _half_model([N("Conv", ["x", "W1"], ["c1"], name="c1"), N("Conv", ["x", "W2", "B2"], ["c2"], name="c2"),
                             N("Concat", ["c1", "c2"], ["cat"], axis=1, name="cat"), _bn("cat", "y")],
                            {**_bn15(5, scale_dtype, stats_dtype), "W1": _h(_f(2, 2, 1, 1)), "W2": _h(_f(3, 2, 1, 1)),
                             "B2": _h(_f(3))}, [1, 2, 3, 3], [1, 5, 3, 3])
    else:
        model = _half_model([N("Conv", ["x", "W1", "B1"], ["c1"], name="c1"), N("Relu", ["c1"], ["r"], name="r"), _bn("r", "y")],
                            {**_bn15(3, scale_dtype, stats_dtype, positive=True, shift=False), "W1": _h(_f(3, 2, 1, 1)),
                             "B1": _h(_f(3))}, [1, 2, 3, 3], [1, 3, 3, 3])
    check_invariants(model, expect=True)


@pytest.mark.parametrize("case, name", [
    ("activation_chain", "k"), ("activation_chain", "Wc"), ("concat_single_input", "bn_s"),
    ("concat_gemm_unsqueeze_and_conv", "Wg"), ("bn_transpose_gemm_transA", "bn_v"), ("bn_transpose_gemm_transA", "C"),
    ("qdq_matmul3d_transpose_bn", "Wq_s"), ("qdq_matmul3d_transpose_bn", "Wq_z"),
    ("qdq_scalar_negative_factor_opset11", "k"), ("gemm_C[3]_qdq_mul", "C"), ("gemm_C[3]_qdq_mul", "k"),
])
def test_an_overridable_parameter_is_never_folded(case, name):
    """An initializer also listed as a graph input (IR >= 4) is a default the caller may override."""
    model = copy.deepcopy(NASTY[case][0])
    init = next(i for i in model.graph.initializer if i.name == name)
    model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    result = check_invariants(model, expect=False)
    assert any(name in r.reason for r in result.refusals), [r.reason for r in result.refusals]


def _shared_cases() -> dict:
    def two_outputs(nodes, inits, x_shape, y_shape, z_shape):
        model = _model(nodes, inits, x_shape, y_shape)
        model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, z_shape))
        return model
    cases = {
        "concat": two_outputs(
            [N("Conv", ["x", "W"], ["c1"], name="c1"), N("Conv", ["x", "W2", "B"], ["c2"], name="c2"),
             N("Concat", ["c1", "c2"], ["cat"], axis=1, name="cat"), _bn("cat", "y"), N("Conv", ["x", "W", "B"], ["z"], name="c3")],
            {"W": _f(3, 2, 1, 1), "W2": _f(3, 2, 1, 1), "B": _f(3), **_bnp(6)}, [1, 2, 3, 3], [1, 6, 3, 3], [1, 3, 3, 3]),
        "bn_layout_linear": two_outputs(
            [N("Transpose", ["x"], ["xt"], perm=[0, 2, 1], name="tr2"), _bn("x", "b"),
             N("Transpose", ["b"], ["t"], perm=[0, 2, 1], name="tr"), N("MatMul", ["t", "W"], ["y"], name="mm"),
             N("MatMul", ["xt", "W"], ["z"], name="mm2")],
            {**_bnp(4), "W": _f(4, 4)}, [2, 4, 4], [2, 4, 4], [2, 4, 4]),
        "activation": two_outputs(
            [N("Conv", ["x", "W", "B"], ["c"], name="c"), N("Relu", ["c"], ["r"], name="r"), N("Mul", ["r", "k"], ["y"], name="m"),
             N("Conv", ["x", "W", "B"], ["z"], name="c2")],
            {"W": _f(3, 2, 1, 1), "B": _f(3), "k": np.abs(_f(1, 3, 1, 1)) + 0.3}, [1, 2, 3, 3], [1, 3, 3, 3], [1, 3, 3, 3]),
    }
    node, inits = _dq("W", _f(3, 2, 1, 1), 0)
    cases["qdq"] = two_outputs(
        [node, N("Conv", ["x", "W", "B"], ["c"], name="c"), _bn("c", "y"), N("Conv", ["x", "W", "B"], ["z"], name="c2")],
        {**inits, "B": _f(3), **_bnp(3)}, [1, 2, 3, 3], [1, 3, 3, 3], [1, 3, 3, 3])
    return cases


SHARED = _shared_cases()


@pytest.mark.parametrize("name", list(SHARED))
def test_a_weight_shared_with_an_op_outside_the_fold_keeps_its_values(name):
    check_invariants(copy.deepcopy(SHARED[name]), expect=True)


# -- every family at once: random networks of blocks -----------------------------------------------------


@st.composite
def block(draw, g: G, y: str) -> str:
    """One random block on ``y``: a linear op, BN, layout ops, an activation, a per-channel Mul/Div/Add,
    or a Concat of two linear branches; rules then meet in every order."""
    shape = g.shapes[y]
    rank = len(shape)
    kinds = ["matmul", "layout"]
    if rank >= 2:
        kinds += ["bn", "bn", "act", "scale"]
    if rank == 2:
        kinds.append("gemm")
    if 3 <= rank <= 5:
        kinds += ["conv", "conv", "concat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "matmul":
        return g.linear("MatMul", y, draw(st.integers(1, 4)), bias=draw(st.booleans()))
    if kind == "gemm":
        return g.linear("Gemm", y, draw(st.integers(1, 4)), bias=draw(st.booleans()), trans_b=int(draw(st.booleans())))
    if kind == "conv":
        c = shape[1]
        group = draw(st.sampled_from([d for d in (1, 2, c) if c % d == 0]))
        return g.linear("Conv", y, group * draw(st.integers(1, 2)), bias=draw(st.booleans()), group=group)
    if kind == "concat":
        a = g.linear("Conv", y, draw(st.integers(1, 3)), bias=draw(st.booleans()))
        b = g.linear("Conv", y, draw(st.integers(1, 3)), bias=draw(st.booleans()))
        out = list(g.shapes[a])
        out[1] += g.shapes[b][1]
        return g.op("Concat", [a, b], tuple(out), axis=draw(st.sampled_from([1, 1 - rank])))
    if kind == "layout":
        y = draw(layout_chain(g, y, 2))
        shape = g.shapes[y]
        if len(shape) > 5:
            y = g.op("Reshape", [y, g.const(np.array([0, -1], np.int64))], (shape[0], int(np.prod(shape[1:]))))
        return y
    if kind == "bn":
        return g.bn(y, positive=draw(st.booleans()), shift=draw(st.booleans()))
    c = shape[1]
    per_channel = (c,) + (1,) * (rank - 2)
    if kind == "act":
        act = draw(st.sampled_from(["Relu", "LeakyRelu", "PRelu"]))
        if act == "PRelu":
            return g.op("PRelu", [y, g.const(g.rng.standard_normal(per_channel) * 0.3, "slope")], shape)
        return g.op(act, [y], shape, **({"alpha": 0.2} if act == "LeakyRelu" else {}))
    op = draw(st.sampled_from(["Mul", "Div", "Add", "Sub"]))
    value = g.rng.uniform(0.5, 2.0, per_channel) * (1 if draw(st.booleans()) else np.where(g.rng.random(per_channel) < 0.3, -1, 1))
    return g.op(op, [y, g.const(value, "k")], shape)


@settings(max_examples=400 * FACTOR, **SETTINGS)
@given(st.data())
def test_random_networks_of_every_family(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float32, np.float16]))
    opset = data.draw(st.sampled_from([11, 13, 17]))
    g = G(dtype, opset, data.draw(st.integers(0, 10 ** 6)))
    if dtype == np.float32 and data.draw(st.integers(0, 3)) == 0:
        g.quant = dict(qtype=np.int8, per_channel=opset >= 13 and data.draw(st.booleans()), zp=data.draw(st.booleans()))
    symbolic = data.draw(st.booleans())
    rank = data.draw(st.integers(2, 4))
    x = g.input((data.draw(st.integers(1, 2)), 2 * data.draw(st.integers(1, 2))) +
                tuple(data.draw(st.integers(1, 3)) for _ in range(rank - 2)), symbolic)
    y, tensors = x, []
    for _ in range(data.draw(st.integers(2, 7))):
        y = data.draw(block(g, y))
        tensors.append(y)
    g.output(y)
    if len(tensors) > 1 and data.draw(st.integers(0, 3)) == 0:
        g.output(data.draw(st.sampled_from(tensors[:-1])))
    check_invariants(g.model(data.draw(st.booleans())))
