"""The graphs the rules edit: onnx-graphsurgeon plus what folding needs on top of it.

A model has several scopes: the main graph, the bodies of If/Loop/Scan nodes (subgraphs, which
may read the outer scope's tensors) and model-local functions. ``import_model`` returns a
``ModelGraphs`` with one ``FoldGraph`` per scope. Each FoldGraph wraps a ``gs.Graph`` with
- constant lookup that follows the runtime's rule for initializers listed as graph inputs and
  evaluates small constant subgraphs (Identity, Constant, ConstantOfShape, ...); outer-scope
  constants count as constants inside subgraphs, function inputs never do;
- fresh, unique names for new tensors and nodes (never reuse a name: shared weights stay intact);
- O(1) producer/consumer queries (graphsurgeon links both directions, across scopes) and
  deferred removal, so a whole pass stays linear in the number of nodes.

Export does not use graphsurgeon's exporter: ``ModelGraphs.export`` patches the ModelProto with
the recorded edits, so everything folding did not touch is kept byte for byte (graphsurgeon's
round trip drops node doc strings and metadata, copies outer initializers into subgraphs, and
loses IR-3 and overridable initializer inputs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.logger.logger import G_LOGGER

from .constants import MAX_CONSTANT_ELEMENTS, TensorReader, check_evaluable, evaluate_node, sparse_to_dense, tensor_value
from .errors import NoFold
from .foldmath import narrow



class _QuietGraphsurgeon:
    """graphsurgeon prints its warnings to stdout (``print``), and bnfold, a library, prints
    nothing: while any fold runs, its logger is held at ERROR, and given back as it was when the
    last concurrent fold ends (a count under a lock, so threads do not restore each other's
    value). The user's own graphsurgeon calls outside a fold keep their severity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = G_LOGGER.severity

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = G_LOGGER.severity
                G_LOGGER.severity = max(self._saved, G_LOGGER.ERROR)
            self._depth += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                G_LOGGER.severity = self._saved


#: ``with quiet_graphsurgeon:`` around everything that calls graphsurgeon (folding.fold).
quiet_graphsurgeon = _QuietGraphsurgeon()

#: Values up to this many elements are cached; larger ones (weights) are read once per fold, and
#: caching them would hold a second copy of the model's weights.
MAX_CACHED_ELEMENTS = 1 << 16

#: Give up evaluating a constant subgraph deeper than this: it is not a parameter any more.
MAX_CONSTANT_DEPTH = 64


class _TooDeep(NoFold):
    """A constant subgraph deeper than MAX_CONSTANT_DEPTH below where the walk started."""


def overridable_inputs(model: onnx.ModelProto) -> set[str]:
    """Initializers a caller may override at run time (IR >= 4: also listed as graph inputs).

    In IR version 3 every initializer had to be listed as an input, and all were constants.
    """
    if model.ir_version < 4:
        return set()
    inits = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name in inits}


class Names:
    """Names in use (tensor or node names) and fresh ones derived from a base, O(1) amortized.

    Exporters repeat names (legal for nodes), so one base is asked for many times: the next
    suffix to try is remembered per base instead of probing ``base_1, base_2, ...`` each time.
    """

    def __init__(self, taken: set[str]):
        self.taken = taken
        self._next: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.taken

    def fresh(self, base: str) -> str:
        name = base
        if name in self.taken:
            k = self._next.get(base, 1)
            while f"{base}_{k}" in self.taken:
                k += 1
            self._next[base] = k + 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


@dataclass
class Namespace:
    """Tensor names that refer to the same tensors: the main graph with its subgraphs, or one
    model-local function with its subgraphs (a function body has names of its own)."""

    overridable: set[str] = field(default_factory=set)  # initializers callers may override (main graph only)
    #: Outputs of every scope here: a subgraph's outputs may name outer tensors, which graphsurgeon
    #: does not list as consumers; treating all of them as outputs everywhere is the safe side.
    outputs: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)  # initializers nothing reads any more
    vanished: set[str] = field(default_factory=set)  # tensor names that no longer exist


@dataclass
class ModelState:
    """What all scopes of one model share: names in use, evaluated constants, node owners.

    New names are fresh across the whole model (functions included), which is stricter than
    needed and never wrong.
    """

    names: Names
    node_names: Names
    ir_version: int
    read: TensorReader | None = None  # reads tensors whose data is external (a lazily read model)
    constants: dict[int, tuple[gs.Tensor, np.ndarray]] = field(default_factory=dict)
    owner: dict[int, FoldGraph] = field(default_factory=dict)  # node id -> the scope it belongs to
    #: Tensor id -> the unrounded (float32) values of a float16/bfloat16 constant a fold wrote: the
    #: next fold of it starts from there, so a chain folded one op at a time is rounded once.
    shadows: dict[int, tuple[gs.Tensor, np.ndarray]] = field(default_factory=dict)
    #: Tensor id -> why it is not a constant, as found since the last edit of any scope (every edit
    #: clears it: an edit changes producers, and so the reasons). Rules ask the same question of
    #: the same tensor many times (each rule matching a Mul/Add asks for its operands).
    not_constant: dict[int, tuple[gs.Tensor, str]] = field(default_factory=dict)


class FoldGraph:
    """One scope (main graph, subgraph or function) with the queries and edits rules use."""

    def __init__(self, graph: gs.Graph, state: ModelState, ns: Namespace, opset: int, scope: str, kind: str,
                 path: tuple, proto: onnx.GraphProto | onnx.FunctionProto):
        self.graph = graph
        self.state = state
        self.ns = ns  # the names this scope shares with its enclosing and enclosed graphs
        self.opset = opset  # of the default domain, where this scope's ops are defined
        self.scope = scope  # "main", "<node>/<attribute>", "function <domain>.<name>[:<overload>]"
        self.kind = kind  # "graph" or "function"
        self.path = path  # where this scope sits in the model (its depth orders export)
        self.proto = proto  # this scope in the model being folded: new weights are written there at once
        # This scope's own dense initializers (a sparse one is never rewritten under its name).
        self._initializers = {t.name for t in proto.initializer} if kind == "graph" else set()
        # Where new constants can be initializers: not in functions, and not in the subgraphs of an
        # IR-3 model, where every initializer must be a graph input (a Loop body's inputs are fixed).
        self._holds_initializers = kind == "graph" and (path == () or state.ir_version >= 4)
        self._initializer_index: dict[str, int] | None = None
        ns.outputs.update(t.name for t in graph.outputs)
        self._input_names = {t.name for t in graph.inputs}
        self._order = list(graph.nodes)  # graphsurgeon imports nodes in proto order
        self._positions: dict[int, int] | None = None  # node id -> index in proto.node, when needed
        state.owner.update((id(n), self) for n in self._order)
        self._removed: set[int] = set()
        self._touched: set[int] = set()
        self._attr_edits: dict[int, dict[str, Any]] = {}
        self._inserted: list[tuple[gs.Node | None, gs.Node]] = []  # (after this node or at the top, new node)
        self._new_initializers: dict[str, tuple[np.dtype, tuple]] = {}  # name -> (dtype, shape)

    # -- queries -------------------------------------------------------------------------
    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    @staticmethod
    def consumers(tensor: gs.Tensor) -> list[gs.Node]:
        return list(tensor.outputs)

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor`` is an output of this graph (or of any scope: see ModelState.outputs)."""
        return tensor.name in self.ns.outputs

    def is_used(self, tensor: gs.Tensor) -> bool:
        """Whether anything reads ``tensor``: a node (in any scope) or this scope's outputs."""
        return bool(tensor.outputs) or self.is_graph_output(tensor)

    def is_removed(self, node: gs.Node) -> bool:
        return id(node) in self._removed

    def owns(self, node: gs.Node) -> bool:
        """Whether ``node`` belongs to this scope (not to an enclosing or enclosed graph)."""
        return self.state.owner.get(id(node)) is self

    def nodes_by_op(self, ops: Collection[str]) -> list[gs.Node]:
        """This scope's live nodes whose op type is in ``ops``, in graph order (then the inserted ones)."""
        return [n for n in self.graph.nodes if n.op in ops and id(n) not in self._removed]

    def looks_constant(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor`` is (structurally) a constant: an initializer, or computed from constants.

        An initializer counts even when callers may override it: ``constant`` then refuses it with
        that reason. Cheap for activations: ``constant`` stops at the first producer that is not an
        op constants are made with.
        """
        if isinstance(tensor, gs.Constant):
            return True
        try:
            self.constant(tensor)
        except NoFold:
            return False
        return True

    def constant(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray:
        """The value of ``tensor`` if it is a constant here; NoFold says why not."""
        cached = self.state.constants.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        refused = self.state.not_constant.get(id(tensor))
        if refused is not None and refused[0] is tensor:
            raise NoFold(refused[1])
        try:
            value = self._resolve(tensor, depth)
        except _TooDeep:
            raise  # depends on where the walk started: not remembered
        except NoFold as exc:
            self.state.not_constant[id(tensor)] = (tensor, exc.reason)
            raise
        if value.size <= MAX_CACHED_ELEMENTS:  # statistics are read more than once; weights are not
            self.state.constants[id(tensor)] = (tensor, value)
        return value

    def _resolve(self, tensor: gs.Tensor, depth: int) -> np.ndarray:
        name = tensor.name
        if name in self.ns.overridable:
            raise NoFold(f"'{name}' is an initializer also listed as a graph input, so callers may override it")
        if isinstance(tensor, gs.Constant):
            return tensor_value(tensor, self.state.read)
        node = self.producer(tensor)
        if node is None:
            if name in self._input_names:
                what = "a function input" if self.kind == "function" else "a graph input"
                raise NoFold(f"'{name}' is {what}, not a constant")
            raise NoFold(f"'{name}' has no producer (an input of an enclosing graph)")
        if depth >= MAX_CONSTANT_DEPTH:
            raise _TooDeep(f"'{name}' comes from a constant subgraph deeper than {MAX_CONSTANT_DEPTH} nodes")
        check_evaluable(node)  # before walking further up: activations are refused at once
        if node.op == "Constant" and not node.attrs:  # graphsurgeon drops a sparse_value attribute
            return self._sparse_constant(node)
        inputs = [None if not t.name else self.constant(t, depth + 1) for t in node.inputs]
        if any(v is not None and v.size > MAX_CONSTANT_ELEMENTS for v in inputs):
            raise NoFold(f"'{name}' is computed from a tensor too large to evaluate")
        outputs = evaluate_node(node, inputs, self.opset)
        return np.asarray(outputs[node.outputs.index(tensor)])

    def _sparse_constant(self, node: gs.Node) -> np.ndarray:
        """The value of a Constant node holding ``sparse_value``, read from its NodeProto."""
        owner = self.state.owner[id(node)]
        if owner._positions is None:
            owner._positions = {id(n): i for i, n in enumerate(owner._order)}
        index = owner._positions.get(id(node))
        attrs = [] if index is None else owner.proto.node[index].attribute
        sparse = next((a.sparse_tensor for a in attrs if a.name == "sparse_value" and not a.ref_attr_name), None)
        if sparse is None:
            raise NoFold(f"Constant node {node.name!r} holds a value bnfold does not read")
        return sparse_to_dense(sparse)

    # -- edits ---------------------------------------------------------------------------
    # Rules edit the graphsurgeon graph through these methods, which also record each edit so
    # that export can patch the ModelProto instead of regenerating it.
    def fresh_name(self, base: str) -> str:
        """A tensor name not used anywhere in the model, derived from ``base``."""
        return self.state.names.fresh(base)

    def precise(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The unrounded values a fold computed for ``tensor``, if it wrote one in a narrow float
        dtype (see ``ModelState.shadows``); None otherwise (the stored values are exact)."""
        shadow = self.state.shadows.get(id(tensor))
        return shadow[1] if shadow is not None and shadow[0] is tensor else None

    def _constant(self, name: str, values: np.ndarray, exact: np.ndarray | None = None) -> gs.Tensor:
        tensor = self._store(name, values)
        if exact is not None and narrow(np.asarray(values).dtype):
            self.state.shadows[id(tensor)] = (tensor, np.asarray(exact, dtype=np.float32))
        return tensor

    def _store(self, name: str, values: np.ndarray) -> gs.Tensor:
        values = np.asarray(values)
        if self._holds_initializers:
            # Written into the model at once, so the array can go: one copy of the new weights.
            self._initializers.add(name)
            constant = gs.Constant(name, values)
            _export_constant(self._initializer_proto(name), constant)
            self._new_initializers[name] = (values.dtype, values.shape)
            return constant
        # Otherwise the value becomes a Constant node at the top of the body.
        tensor = gs.Variable(name, dtype=values.dtype, shape=list(values.shape))
        node = gs.Node("Constant", self.state.node_names.fresh(f"{name}_constant"),
                       attrs={"value": gs.Constant(name, values)}, outputs=[tensor])
        self._insert(None, node)
        self.state.constants[id(tensor)] = (tensor, values)
        return tensor

    def _initializer_proto(self, name: str) -> onnx.TensorProto:
        """This scope's initializer ``name`` in the model (a new one at the end if there is none)."""
        if self._initializer_index is None:
            self._initializer_index = {t.name: i for i, t in enumerate(self.proto.initializer)}
        index = self._initializer_index.get(name)
        if index is None:
            index = self._initializer_index[name] = len(self.proto.initializer)
            self.proto.initializer.add()
        return self.proto.initializer[index]

    def new_constant(self, base: str, values: np.ndarray, exact: np.ndarray | None = None) -> gs.Tensor:
        """A new constant tensor with a fresh name, stored exactly as ``values`` (dtype kept);
        ``exact``: the float64 values ``values`` were rounded from (kept for narrow dtypes)."""
        return self._constant(self.fresh_name(base), values, exact)

    def replacement_constant(self, old: gs.Tensor, values: np.ndarray, base: str,
                             exact: np.ndarray | None = None) -> gs.Tensor:
        """A constant to replace ``old`` as an input of exactly one node.

        Reuses ``old``'s name only when ``old`` is a plain initializer of this scope that one node
        alone reads and ``values`` has its dtype and shape; otherwise (shared, produced by a node, a
        graph output, from an outer scope, or a new dtype or shape that a graph input of IR 3 or a
        value_info entry may still declare) a fresh name, so every other user keeps the original
        values and every declaration of the old name stays true.
        """
        values = np.asarray(values)
        private = (
            isinstance(old, gs.Constant)
            and old.name in self._initializers
            and len(old.outputs) == 1
            and not self.is_graph_output(old)
            and old.name not in self.ns.overridable
            and _stored_type(old) == (onnx.helper.np_dtype_to_tensor_dtype(values.dtype), values.shape)
        )
        return self._constant(old.name, values, exact) if private else self.new_constant(base, values, exact)

    def add_node(self, op: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], *, after: gs.Node,
                 name: str, attrs: dict[str, Any] | None = None) -> gs.Node:
        """Insert a new node right after ``after`` (its name made unique from ``name``)."""
        node = gs.Node(op, self.state.node_names.fresh(name), attrs=dict(attrs or {}),
                       inputs=list(inputs), outputs=list(outputs))
        self._insert(after, node)
        return node

    def new_tensor(self, base: str, dtype: Any = None, shape: list | None = None) -> gs.Variable:
        """A new tensor that nothing produces or reads yet, with a fresh name derived from ``base``."""
        return gs.Variable(self.fresh_name(base), dtype=dtype, shape=shape)

    def insert_after(self, node: gs.Node, op: str, operands: list[gs.Tensor], *, name: str,
                     output: str) -> gs.Node:
        """A new ``op`` node between ``node`` and the readers of its first output ``y``: ``node``
        produces a new tensor instead (named from ``output``, with y's dtype), which the new node
        reads first and then ``operands``; the new node produces ``y``. Returns the new node."""
        y = node.outputs[0]
        self.replace_output(node, 0, self.new_tensor(output, dtype=y.dtype))
        return self.add_node(op, [node.outputs[0], *operands], [y], after=node, name=name)

    def _insert(self, after: gs.Node | None, node: gs.Node) -> None:
        self.state.not_constant.clear()
        self.graph.nodes.append(node)
        self._inserted.append((after, node))
        self.state.owner[id(node)] = self

    def set_attr(self, node: gs.Node, name: str, value: Any) -> None:
        """Set attribute ``name`` of ``node`` (an int, float, list or gs.Constant)."""
        self.state.not_constant.clear()
        node.attrs[name] = value
        self._attr_edits.setdefault(id(node), {})[name] = value

    def _detach(self, node: gs.Node) -> list[gs.Tensor]:
        self.state.not_constant.clear()
        inputs = [t for t in node.inputs if t.name]
        self.ns.vanished.update(t.name for t in node.outputs if t.name)
        node.inputs.clear()
        node.outputs.clear()
        self._removed.add(id(node))
        return inputs

    def remove_node(self, node: gs.Node) -> None:
        """Detach ``node`` and delete whatever only it kept alive (constant feeders, Identity chains)."""
        for tensor in self._detach(node):
            self.release(tensor)

    def release(self, tensor: gs.Tensor) -> None:
        """Delete ``tensor`` once nothing reads it: its initializer, or its producer (recursively)."""
        stack = [tensor]
        while stack:
            t = stack.pop()
            if self.is_used(t):
                continue
            if isinstance(t, gs.Constant):
                self.ns.dropped.add(t.name)
                continue
            node = self.producer(t)
            if node is None or any(self.is_used(o) for o in node.outputs):
                continue
            stack.extend(self.state.owner[id(node)]._detach(node))  # the node may live in an enclosing scope

    def replace_input(self, node: gs.Node, index: int, tensor: gs.Tensor) -> None:
        """Make ``node`` read ``tensor`` at input ``index`` (appending empty optionals as needed)."""
        self.state.not_constant.clear()
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        old = node.inputs[index]
        node.inputs[index] = tensor
        self._touched.add(id(node))
        if old.name and old is not tensor:
            self.release(old)

    def replace_output(self, node: gs.Node, index: int, tensor: gs.Tensor) -> None:
        """Make ``node`` produce ``tensor`` (which must have no producer) at output ``index``."""
        self.state.not_constant.clear()
        old = node.outputs[index]
        node.outputs[index] = tensor
        self._touched.add(id(node))
        if old.name and old is not tensor:
            self.ns.vanished.add(old.name)

    def take_output(self, node: gs.Node, donor: gs.Node) -> gs.Tensor:
        """Make ``node`` produce ``donor``'s first output in place of its own first output, and
        remove ``donor`` (and whatever only it kept alive): ``donor``'s readers read ``node`` now.
        The output keeps its name, dtype and shape; it is returned."""
        y = donor.outputs[0]
        donor.outputs.clear()
        self.replace_output(node, 0, y)
        self.remove_node(donor)
        return y

    @property
    def changed(self) -> bool:
        return bool(self._removed or self._touched or self._inserted or self._attr_edits or self._new_initializers)

    # -- export ----------------------------------------------------------------------------
    def patch(self, ir_version: int) -> None:
        """Apply the recorded edits to this scope's proto in the model being folded.

        Untouched nodes, initializers and value_info entries are left as they are, byte for byte.
        Deletions and insertions use one stable sort and one slice delete: O(n), no tensor copies.
        """
        proto = self.proto
        if len(proto.node) != len(self._order):
            raise RuntimeError(f"{self.scope}: graph changed since import")
        for i, node in enumerate(self._order):
            if id(node) in self._removed:
                continue
            if id(node) in self._touched:
                p = proto.node[i]
                del p.input[:], p.output[:]
                p.input.extend(t.name for t in node.inputs)
                p.output.extend(t.name for t in node.outputs)
            for name, value in self._attr_edits.get(id(node), {}).items():
                _set_attribute(proto.node[i], name, value)
        self._patch_node_list(proto)
        shapes = self._new_initializers  # already written into the model (see _constant)
        dropped = self.ns.dropped - set(shapes)
        gone = self.ns.vanished | dropped
        if self.kind == "function":  # no initializers; value_info since IR 10
            _delete_flagged(proto.value_info, [v.name in gone for v in proto.value_info])
            return
        _delete_flagged(proto.initializer, [t.name in dropped for t in proto.initializer])
        _delete_flagged(proto.sparse_initializer, [t.values.name in dropped for t in proto.sparse_initializer])
        self._initializer_index = None
        _delete_flagged(proto.value_info, [v.name in gone for v in proto.value_info])
        if ir_version < 4 and self.scope == "main":  # IR 3: every initializer is also listed as an input
            _delete_flagged(proto.input, [v.name in dropped for v in proto.input])
            listed = {v.name for v in proto.input}
            proto.input.extend(
                onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))
                for name, (dtype, shape) in shapes.items() if name not in listed
            )

    def _patch_node_list(self, proto) -> None:
        if not (self._removed or self._inserted):
            return
        position = {id(n): (i, 0) for i, n in enumerate(self._order)}
        inserted = []
        for k, (after, node) in enumerate(self._inserted, start=1):
            position[id(node)] = (position[id(after)][0] if after is not None else -1, k)
            if id(node) not in self._removed:
                inserted.append(node)
        gs_nodes = self._order + inserted
        proto.node.extend(_node_proto(n) for n in inserted)
        keys = [(id(n) in self._removed, position[id(n)]) for n in gs_nodes]
        items = list(proto.node)  # keeps the wrappers alive, so their ids stay valid during the sort
        key_of = {id(p): key for p, key in zip(items, keys)}
        proto.node.sort(key=lambda p: key_of[id(p)])
        removed = sum(1 for n in self._order if id(n) in self._removed)
        if removed:
            del proto.node[len(items) - removed:]


def _export_constant(tensor: onnx.TensorProto, constant: gs.Constant) -> None:
    """Write ``constant``'s values into ``tensor`` (raw little-endian data), once; the constant then
    reads them from there, so the array can go and the weights are not held twice."""
    values = np.asarray(constant.values)
    tensor.Clear()
    tensor.name = constant.name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    tensor.dims.extend(values.shape)
    if sys.byteorder == "big":
        values = values.byteswap()
    tensor.raw_data = np.ascontiguousarray(values).tobytes()
    constant._values = gs.ir.tensor.LazyValues(tensor)


def _stored_type(constant: gs.Constant) -> tuple[int, tuple[int, ...]]:
    """The ONNX element type and shape ``constant`` is stored with (without reading its values)."""
    lazy = constant._values
    if isinstance(lazy, gs.ir.tensor.LazyValues) and isinstance(lazy.tensor, onnx.TensorProto):
        return lazy.tensor.data_type, tuple(lazy.tensor.dims)
    values = np.asarray(constant.values)
    return onnx.helper.np_dtype_to_tensor_dtype(values.dtype), values.shape


def _attribute_value(value: Any) -> Any:
    if isinstance(value, gs.Constant):
        return numpy_helper.from_array(tensor_value(value), value.name)
    return value


def _set_attribute(node: onnx.NodeProto, name: str, value: Any) -> None:
    attr = onnx.helper.make_attribute(name, _attribute_value(value))
    for i, existing in enumerate(node.attribute):
        if existing.name == name:
            node.attribute[i].CopyFrom(attr)
            return
    node.attribute.append(attr)


def _node_proto(node: gs.Node) -> onnx.NodeProto:
    attrs = {k: _attribute_value(v) for k, v in node.attrs.items()}
    return onnx.helper.make_node(node.op, [t.name for t in node.inputs], [t.name for t in node.outputs],
                                 name=node.name, domain=node.domain or None, **attrs)


def _delete_flagged(repeated, flags: list[bool]) -> None:
    """Remove the elements of a repeated protobuf field whose flag is set, keeping the others' order.

    A stable sort moves the doomed elements to the end, one slice delete drops them: no element
    is copied (deleting one by one would be quadratic).
    """
    if not any(flags):
        return
    items = list(repeated)  # keeps the wrappers alive, so their ids stay valid during the sort
    marks = {id(x): f for x, f in zip(items, flags)}
    repeated.sort(key=lambda x: marks[id(x)])
    del repeated[len(flags) - sum(flags):]


def _subgraphs(node: onnx.NodeProto):
    """(attribute name, index or None, GraphProto) for each graph-valued attribute of ``node``
    (an attribute reference of a function body holds no graph)."""
    for attr in node.attribute:
        if attr.ref_attr_name:
            continue
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, None, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield attr.name, k, g


def _default_opset(opset_import) -> int | None:
    """The version of the default ONNX domain in ``opset_import``, if it is there."""
    return next((int(o.version) for o in opset_import if o.domain in ("", "ai.onnx")), None)


def _all_names(graph: onnx.GraphProto | onnx.FunctionProto, names: set[str], node_names: set[str]) -> None:
    """Every tensor and node name in ``graph`` and its subgraphs: new names must collide with none."""
    if isinstance(graph, onnx.GraphProto):
        names.update(t.name for t in graph.initializer)
        names.update(t.values.name for t in graph.sparse_initializer)
        for repeated in (graph.input, graph.output, graph.value_info):
            names.update(v.name for v in repeated)
    else:
        names.update(graph.input)
        names.update(graph.output)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        node_names.add(node.name)
        for _, _, sub in _subgraphs(node):
            _all_names(sub, names, node_names)


class ModelGraphs:
    """Every scope of a model, main graph first, each as a FoldGraph."""

    def __init__(self, model: onnx.ModelProto, read: TensorReader | None = None):
        self.model = model  # edited: new weights go in at once, the rest at export
        names: set[str] = set()
        node_names: set[str] = set()
        _all_names(model.graph, names, node_names)
        for function in model.functions:
            _all_names(function, names, node_names)
        main = gs.import_onnx(model)
        self.state = ModelState(Names(names), Names(node_names), model.ir_version, read)
        self.scopes: list[FoldGraph] = []
        opset = int(main.opset)
        self._add_scope(main, model.graph, Namespace(overridable_inputs(model)), opset, "main", "graph", ())
        # graphsurgeon imports functions in the model's order; they are matched by position, since
        # IR-10 overloads share a domain and a name.
        if len(main.functions) != len(model.functions):
            raise RuntimeError("graphsurgeon did not import every function")
        for k, (gs_function, proto) in enumerate(zip(main.functions, model.functions)):
            if len(gs_function.nodes) != len(proto.node):
                raise RuntimeError(f"graphsurgeon imported function {proto.name} with other nodes")
            label = f"function {proto.domain}.{proto.name}" + (f":{proto.overload}" if proto.overload else "")
            own = _default_opset(proto.opset_import)
            self._add_scope(gs_function, proto, Namespace(), opset if own is None else own, label, "function",
                            ("function", k))

    def _add_scope(self, graph: gs.Graph, proto, ns: Namespace, opset: int, scope: str, kind: str,
                   path: tuple) -> None:
        """``graph`` and, recursively, the If/Loop/Scan bodies of its nodes, as scopes."""
        self.scopes.append(FoldGraph(graph, self.state, ns, opset, scope, kind, path, proto))
        for i, (node, node_proto) in enumerate(zip(graph.nodes, proto.node)):
            for attr, k, sub_proto in _subgraphs(node_proto):
                sub = node.attrs[attr] if k is None else node.attrs[attr][k]
                label = f"{node.name or node.op}/{attr}" + ("" if k is None else f"[{k}]")
                inner = label if scope == "main" else f"{scope}/{label}"
                self._add_scope(sub, sub_proto, ns, opset, inner, "graph", path + ((i, attr, k),))

    @property
    def main(self) -> FoldGraph:
        return self.scopes[0]

    def export(self) -> onnx.ModelProto:
        """Write every scope's edits into the model imported (new weights are in it already).

        Everything folding did not touch stays exactly as it was: ir_version, opset_import,
        producer, doc_string, metadata_props, node names, doc strings and attributes, the graph's
        inputs (overridable initializer inputs included) and outputs.
        """
        # Deepest scopes first: each scope holds its own proto, and a parent's patch reorders and
        # deletes the nodes its subgraphs live in.
        model = self.model
        for scope in sorted(self.scopes, key=lambda s: -len(s.path)):
            if scope.changed or scope.ns.dropped or scope.ns.vanished:
                scope.patch(model.ir_version)
        return model


def import_model(model: onnx.ModelProto, read: TensorReader | None = None) -> ModelGraphs:
    """Import ``model`` for editing: one FoldGraph per scope (external data read through ``read``)."""
    return ModelGraphs(model, read)
