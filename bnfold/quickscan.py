"""``bnfold check``'s quick path: prove from a file's bytes that checking it finds nothing.

Most files a pre-commit hook or a CI gate checks are clean (folded already, or with no
BatchNormalization at all), and the ordinary check of one costs the imports of onnx, numpy and
onnx-graphsurgeon before it reads a byte. ``is_clean(path)`` walks the protobuf wire format
instead (``bnfold.wire``), with none of them, and answers True only when the ordinary check
(``check.check_file``: ``ModelFile.read(path, lazy=True)``, then ``fold``) would find no fold, no
refusal and no error. Anything it cannot prove is False, and the ordinary path decides; a False
says nothing about the file.

True needs every one of these:

- **Encoding.** Every field of every message is one onnx.proto defines here, with its wire type;
  strings are UTF-8; singular fields appear once (ModelProto.graph may repeat: bnfold's writer
  streams it); subgraphs nest at most ``MAX_DEPTH`` deep. Left to the ordinary path: training
  info, device configurations, sparse tensors, tensor segments, external data (any tensor with
  ``external_data`` or ``data_location``), attribute types other than float, int, string, tensor,
  graph and their lists (graphsurgeon skips the others, so their graphs would not be scopes),
  attributes of one node sharing a name, value types other than tensors, element types outside
  FLOAT..BFLOAT16.
- **Reading.** What ``ModelFile.read`` refuses: an ir_version of 0 or less, no opset_import, a main
  graph without nodes and outputs; and what graphsurgeon's import cannot take: no opset for the
  default domain. The big initializers the lazy read leaves on disk (``bnfold.io.LAZY_BYTES``
  bytes of ``raw_data`` or more, main graph) must have exactly the bytes their type and shape
  need (the reader checks it). Then the ONNX checker runs, as the reader runs it: on the
  weight-less skeleton (``wire.skeleton``) in a private folder, or on the file itself when no
  initializer is big enough. The checker is onnx's C++ extension, loaded on its own (a few
  milliseconds; the onnx package is not imported).
- **Rules.** No rule can match, and no constant a match looks at can fail to evaluate. The rules
  start from ``ANCHORS`` (``tests/test_quickscan.py`` checks this against ``DEFAULT_RULES``):
  - no BatchNormalization in any graph, subgraph or function, whatever its domain;
  - for each Mul/Add/Sub/Div with two inputs (``elementwise_operands``): neither operand's constant
    lookup (``FoldGraph.constant``) evaluates anything that could raise (``_resolve``: an
    initializer read through another op must be well formed, a Constant must hold a plain value,
    Identity is the only other op allowed to compute), and no operand that may be constant faces
    an operand that may come from a linear op (Conv, ConvTranspose, Gemm, MatMul, an Add of a
    MatMul), from an activation reading one, or from a BatchNormalization; except an Add of a
    constant straight after a MatMul (its bias, which the rules leave alone).
  Over-approximations only: a producer is looked up by name through the enclosing scopes, and
  any domain counts as the default one.

Measured on a folded 9 MB export: 0.08 s for the whole ``bnfold check`` process against 0.22 s on
the ordinary path (docs/BENCHMARKS.md, "Start-up").
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import mmap
import os
import sys
import tempfile
from pathlib import Path

from . import wire

#: Op types the rules start from (``Rule.anchors`` of ``bnfold.rules.DEFAULT_RULES``).
BATCHNORM = "BatchNormalization"
AFFINE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})
ANCHORS = frozenset({BATCHNORM}) | AFFINE_OPS

#: ``bnfold.constants.FOLDABLE_CONSTANT_OPS``: the ops a constant lookup walks through.
FOLDABLE_CONSTANT_OPS = frozenset({
    "Identity", "Constant", "ConstantOfShape", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze",
    "Flatten", "Expand", "Concat", "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg", "Abs",
    "Pow", "Transpose", "Slice", "Gather", "Shape", "Size", "Tile", "Max", "Min", "Clip",
})
#: The linear ops the rules fold into (``bnfold.rules`` KINDS).
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: The activations activation-scale moves a scale through, or names as not moving it.
ACTIVATIONS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "ThresholdedRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu",
    "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Softmax",
    "LogSoftmax",
})

#: ``bnfold.io.LAZY_BYTES``: main-graph initializers with this much raw_data stay on disk.
LAZY_BYTES = 1024
#: Deepest subgraph nesting proven here (protobuf parsers stop at 100 nested messages).
MAX_DEPTH = 8
#: ``bnfold.graph.MAX_CONSTANT_DEPTH``.
MAX_CONSTANT_DEPTH = 64

#: Element types: TensorProto.DataType FLOAT (1) to BFLOAT16 (16).
ELEM_TYPES = frozenset(range(1, 17))
#: Bytes per element of the types whose values are read here (all but STRING), as numpy has them.
ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
#: TensorProto typed-data fields ``numpy_helper.to_array`` reads plainly, per element type.
TYPED_FIELD = {1: 4, 6: 5, 7: 7, 11: 10}  # FLOAT float_data, INT32 int32_data, INT64 int64_data, DOUBLE double_data

#: AttributeProto.AttributeType -> the field holding its value (FLOAT..STRINGS; graphsurgeon imports these).
ATTRIBUTE_FIELDS = {1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 9}
_ATTRIBUTE_VALUE_FIELDS = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 22, 23})

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Unproven(Exception):
    """Something the quick path does not prove: the ordinary path decides."""


# -- what the walk keeps ---------------------------------------------------------------------------


class _Tensor:
    __slots__ = ("name", "data_type", "dims", "raw", "typed")

    def __init__(self) -> None:
        self.name = ""
        self.data_type = 0
        self.dims: list[int] = []
        self.raw: int | None = None  # bytes of raw_data
        self.typed: dict[int, int] = {}  # typed-data field number -> elements

    def elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def readable(self) -> bool:
        """Whether ``numpy_helper.to_array`` reads it without an error: a plain type, and exactly the
        data its shape needs, in one field."""
        if self.data_type not in ITEMSIZE or any(d < 0 for d in self.dims):
            return False
        n = self.elements()
        if self.raw is not None:
            return not self.typed and self.raw == n * ITEMSIZE[self.data_type]
        return set(self.typed) == {TYPED_FIELD.get(self.data_type)} and self.typed[TYPED_FIELD[self.data_type]] == n


class _Attribute:
    __slots__ = ("name", "type", "reference", "fields", "tensor", "graph")

    def __init__(self) -> None:
        self.name = ""
        self.type = 0
        self.reference = False
        self.fields: set[int] = set()
        self.tensor: _Tensor | None = None
        self.graph: _Graph | None = None


class _Node:
    __slots__ = ("op", "inputs", "outputs", "attributes", "scope")

    def __init__(self, scope: _Graph) -> None:
        self.op = ""
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.attributes: list[_Attribute] = []
        self.scope = scope


class _Graph:
    """A graph or a function body: its nodes, what its names are, the scope around it."""

    __slots__ = ("nodes", "initializers", "initializer_list", "outputs", "outer", "producers")

    def __init__(self, outer: _Graph | None = None) -> None:
        self.nodes: list[_Node] = []
        self.initializers: dict[str, _Tensor] = {}
        self.initializer_list: list[_Tensor] = []  # every entry, names repeated or not
        self.outputs = 0
        self.outer = outer
        self.producers: dict[str, _Node] = {}


class _Model:
    __slots__ = ("ir_version", "opsets", "graph", "functions")

    def __init__(self) -> None:
        self.ir_version: int | None = None
        self.opsets: list[str] = []  # domains
        self.graph: _Graph | None = None
        self.functions: list[_Graph] = []


# -- the wire walk ---------------------------------------------------------------------------------


def _varint(buf, start: int, end: int) -> int:
    value, pos = wire._read_varint(buf, start, end)
    if pos != end:
        raise _Unproven("malformed varint")
    return value


def _varints(buf, start: int, end: int) -> list[int]:
    values, pos = [], start
    while pos < end:
        value, pos = wire._read_varint(buf, pos, end)
        values.append(value)
    return values


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(buf, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Unproven("a string that is not UTF-8") from None


class _Fields:
    """The fields of one message, each checked against ``spec`` (number -> allowed wire types)."""

    def __init__(self, buf, start: int, end: int, spec: dict[int, tuple[int, ...]], singular: frozenset[int]):
        self.buf, self.start, self.end, self.spec, self.singular = buf, start, end, spec, singular

    def __iter__(self):
        seen = set()
        for number, wire_type, _, start, end in wire.fields(self.buf, self.start, self.end):
            if wire_type not in self.spec.get(number, ()):
                raise _Unproven(f"field {number} (wire type {wire_type})")
            if number in self.singular:
                if number in seen:
                    raise _Unproven(f"field {number} twice")
                seen.add(number)
            yield number, wire_type, start, end


def _message(spec: dict[int, tuple[int, ...]], repeated: tuple[int, ...] = ()):
    return spec, frozenset(spec) - frozenset(repeated)


_S, _V, _PACKED_V = (_LEN,), (_VARINT,), (_VARINT, _LEN)
_STRING_ENTRY = _message({1: _S, 2: _S})
_OPSET = _message({1: _S, 2: _V})
_DIMENSION = _message({1: _V, 2: _S, 3: _S})
_TENSOR_TYPE = _message({1: _V, 2: _S})
_SHAPE = _message({1: _S}, repeated=(1,))
_TYPE = _message({1: _S, 6: _S})
_VALUE_INFO = _message({1: _S, 2: _S, 3: _S, 4: _S}, repeated=(4,))
_ANNOTATION = _message({1: _S, 2: _S}, repeated=(2,))
_TENSOR = _message({1: _PACKED_V, 2: _V, 4: (_I32, _LEN), 5: _PACKED_V, 6: _S, 7: _PACKED_V, 8: _S, 9: _S, 10: (_I64, _LEN),
                    11: _PACKED_V, 12: _S, 16: _S}, repeated=(1, 4, 5, 6, 7, 10, 11, 16))
_ATTRIBUTE = _message({1: _S, 2: (_I32,), 3: _V, 4: _S, 5: _S, 6: _S, 7: (_I32, _LEN), 8: _PACKED_V, 9: _S, 13: _S,
                       20: _V, 21: _S}, repeated=(7, 8, 9))
_NODE = _message({1: _S, 2: _S, 3: _S, 4: _S, 5: _S, 6: _S, 7: _S, 8: _S, 9: _S}, repeated=(1, 2, 5, 9))
_GRAPH = _message({1: _S, 2: _S, 5: _S, 10: _S, 11: _S, 12: _S, 13: _S, 14: _S, 16: _S},
                  repeated=(1, 5, 11, 12, 13, 14, 16))
_FUNCTION = _message({1: _S, 4: _S, 5: _S, 6: _S, 7: _S, 8: _S, 9: _S, 10: _S, 11: _S, 12: _S, 13: _S, 14: _S},
                     repeated=(4, 5, 6, 7, 9, 11, 12, 14))
_MODEL = _message({1: _V, 2: _S, 3: _S, 4: _S, 5: _V, 6: _S, 7: _S, 8: _S, 14: _S, 25: _S}, repeated=(7, 8, 14, 25))


def _walk(buf, start: int, end: int, message) -> _Fields:
    return _Fields(buf, start, end, *message)


def _plain(buf, start: int, end: int, message, strings: tuple[int, ...], children=()) -> None:
    """A message of strings and varints (and the listed kinds of sub-message), checked all through."""
    for number, _, s, e in _walk(buf, start, end, message):
        if number in strings:
            _text(buf, s, e)
        for child_number, child in children:
            if number == child_number:
                child(buf, s, e)


def _string_entry(buf, start: int, end: int) -> None:
    _plain(buf, start, end, _STRING_ENTRY, (1, 2))


def _opset(buf, start: int, end: int) -> str:
    domain = ""
    for number, _, s, e in _walk(buf, start, end, _OPSET):
        if number == 1:
            domain = _text(buf, s, e)
    return domain


def _value_info(buf, start: int, end: int) -> None:
    for number, _, s, e in _walk(buf, start, end, _VALUE_INFO):
        if number in (1, 3):
            _text(buf, s, e)
        elif number == 4:
            _string_entry(buf, s, e)
        else:
            _type(buf, s, e)


def _type(buf, start: int, end: int) -> None:
    numbers = set()
    for number, _, s, e in _walk(buf, start, end, _TYPE):
        numbers.add(number)
        if number == 6:
            _text(buf, s, e)
            continue
        elem = None
        for n, _, s2, e2 in _walk(buf, s, e, _TENSOR_TYPE):
            if n == 1:
                elem = _varint(buf, s2, e2)
            else:
                for _, _, s3, e3 in _walk(buf, s2, e2, _SHAPE):
                    _plain(buf, s3, e3, _DIMENSION, (2, 3))
        if elem not in ELEM_TYPES:
            raise _Unproven(f"element type {elem}")
    if numbers and 1 not in numbers:
        raise _Unproven("a value type that is not a tensor type")


def _annotation(buf, start: int, end: int) -> None:
    _plain(buf, start, end, _ANNOTATION, (1,), ((2, _string_entry),))


def _count_fixed(start: int, end: int, size: int) -> int:
    if (end - start) % size:
        raise _Unproven("packed data of a partial element")
    return (end - start) // size


def _tensor(buf, start: int, end: int) -> _Tensor:
    t = _Tensor()
    for number, wire_type, s, e in _walk(buf, start, end, _TENSOR):
        if number == 1:
            t.dims += [_int64(v) for v in (_varints(buf, s, e) if wire_type == _LEN else [_varint(buf, s, e)])]
        elif number == 2:
            t.data_type = _varint(buf, s, e)
        elif number in (8, 12):
            name = _text(buf, s, e)
            if number == 8:
                t.name = name
        elif number == 9:
            t.raw = e - s
        elif number == 16:
            _string_entry(buf, s, e)
        else:  # typed data
            if number in (5, 7, 11):
                count = len(_varints(buf, s, e)) if wire_type == _LEN else 1
            elif number == 4:
                count = _count_fixed(s, e, 4) if wire_type == _LEN else 1
            elif number == 10:
                count = _count_fixed(s, e, 8) if wire_type == _LEN else 1
            else:  # string_data
                count = 1
            t.typed[number] = t.typed.get(number, 0) + count
    if t.data_type not in ELEM_TYPES:  # graphsurgeon cannot size other types
        raise _Unproven(f"tensor '{t.name}' of element type {t.data_type}")
    return t


def _attribute(buf, start: int, end: int, scope: _Graph, depth: int) -> _Attribute:
    a = _Attribute()
    graph = None
    for number, _, s, e in _walk(buf, start, end, _ATTRIBUTE):
        a.fields.add(number)
        if number in (1, 13, 21):
            text = _text(buf, s, e)
            if number == 1:
                a.name = text
            elif number == 21:
                a.reference = True
        elif number == 20:
            a.type = _varint(buf, s, e)
        elif number in (4, 9):
            _text(buf, s, e)  # graphsurgeon decodes strings
        elif number == 5:
            a.tensor = _tensor(buf, s, e)
        elif number == 6:
            graph = (s, e)
        elif number == 8:
            _varints(buf, s, e)
    if a.type not in ATTRIBUTE_FIELDS:
        raise _Unproven(f"attribute '{a.name}' of type {a.type}")
    if a.fields & _ATTRIBUTE_VALUE_FIELDS - {ATTRIBUTE_FIELDS[a.type]}:
        raise _Unproven(f"attribute '{a.name}' with a value of another type")
    if graph is not None and not a.reference:
        if depth >= MAX_DEPTH:
            raise _Unproven("subgraphs nested too deep")
        a.graph = _Graph(outer=scope)
        _graph(buf, *graph, a.graph, depth + 1)
    return a


def _node(buf, start: int, end: int, scope: _Graph, depth: int) -> _Node:
    n = _Node(scope=scope)
    names = set()
    for number, _, s, e in _walk(buf, start, end, _NODE):
        if number == 1:
            n.inputs.append(_text(buf, s, e))
        elif number == 2:
            n.outputs.append(_text(buf, s, e))
        elif number == 4:
            n.op = _text(buf, s, e)
        elif number == 5:
            attribute = _attribute(buf, s, e, scope, depth)
            if attribute.name in names:
                raise _Unproven(f"attribute '{attribute.name}' twice")
            names.add(attribute.name)
            n.attributes.append(attribute)
        elif number == 9:
            _string_entry(buf, s, e)
        else:  # name, doc_string, domain, overload
            _text(buf, s, e)
    if n.op == BATCHNORM:  # the usual reason to decline: say so before walking the rest
        raise _Unproven("a BatchNormalization")
    return n


def _graph(buf, start: int, end: int, g: _Graph, depth: int) -> None:
    for number, _, s, e in _walk(buf, start, end, _GRAPH):
        if number == 1:
            g.nodes.append(_node(buf, s, e, g, depth))
        elif number == 5:
            tensor = _tensor(buf, s, e)
            g.initializers[tensor.name] = tensor
            g.initializer_list.append(tensor)
        elif number in (11, 12, 13):
            _value_info(buf, s, e)
            g.outputs += number == 12
        elif number == 14:
            _annotation(buf, s, e)
        elif number == 16:
            _string_entry(buf, s, e)
        else:  # name, doc_string
            _text(buf, s, e)


def _function(buf, start: int, end: int) -> _Graph:
    g = _Graph()
    for number, _, s, e in _walk(buf, start, end, _FUNCTION):
        if number == 7:
            g.nodes.append(_node(buf, s, e, g, 0))
        elif number == 9:
            _opset(buf, s, e)
        elif number == 11:
            if _attribute(buf, s, e, g, MAX_DEPTH).type == 5:
                raise _Unproven("a graph as a function attribute's default")  # graphsurgeon cannot import it
        elif number == 12:
            _value_info(buf, s, e)
        elif number == 14:
            _string_entry(buf, s, e)
        else:  # name, input, output, attribute, doc_string, domain, overload
            _text(buf, s, e)
    return g


def _model(buf) -> _Model:
    m = _Model()
    for number, _, s, e in _walk(buf, 0, len(buf), _MODEL):
        if number == 1:
            m.ir_version = _int64(_varint(buf, s, e))
        elif number == 5:
            _varint(buf, s, e)
        elif number == 7:  # repeated occurrences merge into one graph
            if m.graph is None:
                m.graph = _Graph()
            _graph(buf, s, e, m.graph, 0)
        elif number == 8:
            m.opsets.append(_opset(buf, s, e))
        elif number == 14:
            _string_entry(buf, s, e)
        elif number == 25:
            m.functions.append(_function(buf, s, e))
        else:  # producer_name, producer_version, domain, doc_string
            _text(buf, s, e)
    return m


# -- the rules -------------------------------------------------------------------------------------


def _scopes(g: _Graph):
    """``g`` and every graph inside it, each with its producers filled in."""
    for node in g.nodes:
        for name in node.outputs:
            if name:
                g.producers[name] = node
    yield g
    for node in g.nodes:
        for a in node.attributes:
            if a.graph is not None:
                yield from _scopes(a.graph)


def _lookup(name: str, scope: _Graph) -> _Node | _Tensor | None:
    """What ``name`` is in ``scope``: a node's output, an initializer, or neither (an input)."""
    g: _Graph | None = scope
    while g is not None:
        node = g.producers.get(name)
        if node is not None:
            return node
        tensor = g.initializers.get(name)
        if tensor is not None:
            return tensor
        g = g.outer
    return None


_FAIL, _CONSTANT = "not a constant", "maybe a constant"


class _Constants:
    """What ``FoldGraph.constant`` does with a tensor, over-approximated: _FAIL (a NoFold before
    anything was evaluated), _CONSTANT (it may be one, and evaluating it cannot raise), or
    _Unproven (evaluating it might raise something else)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, str], str] = {}

    def looks_constant(self, name: str, scope: _Graph) -> str:
        if isinstance(_lookup(name, scope), _Tensor):
            return _CONSTANT  # an initializer: True without reading it
        return self.resolve(name, scope, 0)

    def resolve(self, name: str, scope: _Graph, depth: int) -> str:
        if not name:
            return _FAIL
        key = (id(scope), name)
        if key not in self._memo:
            self._memo[key] = self._resolve(name, scope, depth)
        return self._memo[key]

    def _resolve(self, name: str, scope: _Graph, depth: int) -> str:
        what = _lookup(name, scope)
        if what is None:
            return _FAIL  # a graph or function input, or an outer value graphsurgeon does not link
        if isinstance(what, _Tensor):
            if not what.readable():
                raise _Unproven(f"initializer '{name}' would be read and may not be well formed")
            return _CONSTANT
        node = what
        if node.op not in FOLDABLE_CONSTANT_OPS:
            return _FAIL  # check_evaluable refuses it first
        if depth >= MAX_CONSTANT_DEPTH:
            raise _Unproven("a deep constant subgraph")
        if node.op == "Constant":
            if node.inputs or not _plain_constant(node):
                raise _Unproven(f"Constant '{name}' may not hold a value that reads without an error")
            return _CONSTANT
        for tensor in node.inputs:  # resolved in order (omitted optional inputs skipped); a NoFold ends it
            if tensor and self.resolve(tensor, node.scope, depth + 1) == _FAIL:
                return _FAIL
        if node.op == "Identity" and len(node.outputs) == 1 and not node.attributes:
            return _CONSTANT
        raise _Unproven(f"'{name}' would be computed by {node.op}")


def _plain_constant(node: _Node) -> bool:
    """Whether a Constant holds one value ``constants.evaluate_node`` reads without an error."""
    if len(node.attributes) != 1 or node.attributes[0].reference:
        return False
    a = node.attributes[0]
    expected = {"value": 4, "value_float": 1, "value_floats": 6, "value_int": 2, "value_ints": 7}.get(a.name)
    if a.type != expected:
        return False
    return a.tensor is not None and a.tensor.readable() if a.name == "value" else True


def _from_linear(name: str, scope: _Graph, through_activation: bool = True) -> bool:
    """Whether ``name`` may come from what an affine rule folds into (a linear op, a MatMul's bias
    Add, an activation reading one, a BatchNormalization)."""
    node = _lookup(name, scope)
    if not isinstance(node, _Node):
        return False
    if node.op in LINEAR_OPS or node.op == BATCHNORM:
        return True
    if node.op == "Add":
        return any(isinstance(p := _lookup(t, node.scope), _Node) and p.op == "MatMul" for t in node.inputs)
    if node.op in ACTIVATIONS and through_activation:
        return not node.inputs or _from_linear(node.inputs[0], node.scope, through_activation=False)
    return False


def _matmul_bias(y: str, scope: _Graph, constants: _Constants) -> bool:
    """Whether ``y`` comes straight from a MatMul with a plain weight: an Add of a constant to it is
    that MatMul's bias, which affine-linear and qdq-affine do not match (their match looks up the
    weight, which must then evaluate without an error)."""
    node = _lookup(y, scope)
    if not (isinstance(node, _Node) and node.op == "MatMul" and len(node.inputs) >= 2):
        return False
    weight = _lookup(node.inputs[1], node.scope)
    if isinstance(weight, _Node) and weight.op == "DequantizeLinear":
        return False  # qdq-affine reads the quantized weight
    constants.looks_constant(node.inputs[1], node.scope)
    return True


def _prove_rules(scopes: list[_Graph]) -> None:
    constants = _Constants()
    for g in scopes:
        for node in g.nodes:
            if node.op == BATCHNORM:
                raise _Unproven("a BatchNormalization")
            if node.op not in AFFINE_OPS or len(node.inputs) != 2 or len(node.outputs) != 1:
                continue
            a, b = node.inputs
            if a == b and a:
                continue  # one tensor twice: not an affine map of one operand
            for y, operand in ((a, b), (b, a)):
                if constants.looks_constant(operand, g) != _CONSTANT:
                    continue
                if node.op == "Add" and _matmul_bias(y, g, constants):
                    continue  # the rules read it as the MatMul's bias: no match
                if _from_linear(y, g):
                    raise _Unproven(f"{node.op} of a constant and what a rule folds into")


# -- reading, as ModelFile.read does it --------------------------------------------------------------


def _prove_readable(m: _Model) -> int:
    """The big initializers the lazy read leaves on disk (their count); _Unproven where
    ``ModelFile.read`` or graphsurgeon's import would refuse the model."""
    if m.ir_version is None or m.ir_version <= 0 or not m.opsets:
        raise _Unproven("no ir_version or opset_import")
    if "" not in m.opsets and "ai.onnx" not in m.opsets:
        raise _Unproven("no opset for the default domain")
    if m.graph is None or (not m.graph.nodes and not m.graph.outputs):
        raise _Unproven("no graph")
    lazy = 0
    for tensor in m.graph.initializer_list:
        if tensor.raw is not None and tensor.raw >= LAZY_BYTES:
            lazy += 1
            if tensor.data_type not in ITEMSIZE or tensor.raw != tensor.elements() * ITEMSIZE[tensor.data_type] \
                    or any(d < 0 for d in tensor.dims):
                raise _Unproven(f"initializer '{tensor.name}' has other bytes than its type and shape need")
    return lazy


_CHECKER = "onnx.onnx_cpp2py_export"


def _checker():
    """onnx's C++ checker module, loaded without the onnx package (whose import loads numpy and
    ml_dtypes). Registered under its own name: a later ``import onnx`` uses this very module."""
    module = sys.modules.get(_CHECKER)
    if module is None:
        spec = importlib.machinery.PathFinder.find_spec("onnx")
        if spec is None or not spec.submodule_search_locations:
            raise _Unproven("onnx is not installed")
        for folder in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                candidate = os.path.join(folder, "onnx_cpp2py_export" + suffix)
                if os.path.isfile(candidate):
                    break
            else:
                continue
            break
        else:
            raise _Unproven("onnx's checker extension was not found")
        spec = importlib.util.spec_from_file_location(_CHECKER, candidate)
        if spec is None or spec.loader is None:
            raise _Unproven("onnx's checker extension cannot be loaded")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_CHECKER] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_CHECKER]
            raise
    return module.checker


def attach_checker() -> None:
    """Once onnx is imported after ``is_clean`` loaded its extension, make it the package's
    attribute too, as an ordinary import would have."""
    onnx = sys.modules.get("onnx")
    module = sys.modules.get(_CHECKER)
    if onnx is not None and module is not None and not hasattr(onnx, "onnx_cpp2py_export"):
        setattr(onnx, "onnx_cpp2py_export", module)  # (a module object: not an attribute its type declares)


def _run_checker(path: Path, buf, lazy: int) -> None:
    """``onnx.checker.check_model`` with its defaults, where ``ModelFile.read(lazy=True)`` runs it."""
    check = _checker().check_model_path
    if not lazy:
        check(str(path), False, False, False)
        return
    skeleton, turned = wire.skeleton(buf, path.name, LAZY_BYTES)
    if turned != lazy:
        raise _Unproven("the skeleton differs from the walk")
    with tempfile.TemporaryDirectory(prefix="bnfold-check-") as tmp:  # as io._check_structure
        Path(tmp, path.name).touch()
        name = "model.onnx"
        while name == path.name:
            name = "_" + name
        structure = Path(tmp, name)
        structure.write_bytes(skeleton)
        check(str(structure), False, False, False)


def unproven(path: str | os.PathLike) -> str | None:
    """None when ``bnfold check`` of ``path`` would find nothing to fold, nothing refused and no
    error, proven without onnx, numpy or graphsurgeon; otherwise what was not proven, in words."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            m = _model(buf)
            lazy = _prove_readable(m)
            assert m.graph is not None, "_prove_readable refuses a model without a graph"
            scopes = list(_scopes(m.graph))
            for function in m.functions:
                scopes += _scopes(function)
            _prove_rules(scopes)
            _run_checker(path, buf, lazy)
    except _Unproven as exc:
        return str(exc)
    except Exception as exc:  # unreadable, wire.WireError, the checker's ValidationError, an extension that does not load
        return f"{type(exc).__name__}: {exc}"
    return None


def is_clean(path: str | os.PathLike) -> bool:
    """Whether ``unproven(path)`` is None: the ordinary check of ``path`` would report nothing."""
    return unproven(path) is None
