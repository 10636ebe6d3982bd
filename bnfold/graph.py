"""The graph the rules edit: onnx-graphsurgeon plus what folding needs on top of it.

``FoldGraph`` wraps a ``gs.Graph`` with
- constant lookup that follows the runtime's rule for initializers listed as graph inputs,
  and evaluates small constant subgraphs (Identity, Constant, ConstantOfShape, ...);
- fresh, unique tensor names for new weights (never reuse a name: shared weights stay intact);
- O(1) producer/consumer queries (graphsurgeon keeps both directions linked) and deferred node
  removal, so a whole pass stays linear in the number of nodes.

``export_model`` does not use graphsurgeon's exporter: it patches the original ModelProto with
the recorded edits, so everything folding did not touch is kept byte for byte.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.logger.logger import G_LOGGER

from .constants import MAX_CONSTANT_ELEMENTS, evaluate_node, tensor_value
from .errors import NoFold

G_LOGGER.severity = G_LOGGER.ERROR  # bnfold reports for itself; graphsurgeon's warnings are noise here

#: Give up evaluating a constant subgraph deeper than this: it is not a parameter any more.
MAX_CONSTANT_DEPTH = 64


def overridable_inputs(model: onnx.ModelProto) -> set[str]:
    """Initializers a caller may override at run time (IR >= 4: also listed as graph inputs).

    In IR version 3 every initializer had to be listed as an input, and all were constants.
    """
    if model.ir_version < 4:
        return set()
    inits = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name in inits}


class FoldGraph:
    """A graphsurgeon graph with the queries and edits the rewrite rules use."""

    def __init__(self, graph: gs.Graph, overridable: set[str], names: set[str] | None = None):
        self.graph = graph
        self.overridable = overridable
        self.opset = int(graph.opset)
        self._output_names = {t.name for t in graph.outputs}
        self._input_names = {t.name for t in graph.inputs}
        self._names = set(graph.tensors(check_duplicates=False).keys()) | (names or set())
        self._constants: dict[int, tuple[gs.Tensor, np.ndarray]] = {}
        self._order = list(graph.nodes)  # graphsurgeon imports nodes in GraphProto order
        self._removed: set[int] = set()
        self._touched: set[int] = set()
        self._new_initializers: dict[str, onnx.TensorProto] = {}
        self._dropped: set[str] = set()  # initializers nothing reads any more
        self._vanished: set[str] = set()  # tensor names that no longer exist

    # -- queries -------------------------------------------------------------------------
    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    @staticmethod
    def consumers(tensor: gs.Tensor) -> list[gs.Node]:
        return list(tensor.outputs)

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self._output_names

    def is_used(self, tensor: gs.Tensor) -> bool:
        """Whether anything reads ``tensor``: a node or the graph's outputs."""
        return bool(tensor.outputs) or self.is_graph_output(tensor)

    def constant(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray:
        """The value of ``tensor`` if it is a constant of this graph; NoFold says why not."""
        cached = self._constants.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        value = self._resolve(tensor, depth)
        self._constants[id(tensor)] = (tensor, value)
        return value

    def _resolve(self, tensor: gs.Tensor, depth: int) -> np.ndarray:
        name = tensor.name
        if name in self.overridable:
            raise NoFold(f"'{name}' is an initializer also listed as a graph input, so callers may override it")
        if isinstance(tensor, gs.Constant):
            return tensor_value(tensor)
        node = self.producer(tensor)
        if node is None:
            if name in self._input_names:
                raise NoFold(f"'{name}' is a graph input, not a constant")
            raise NoFold(f"'{name}' has no producer in this graph")
        if depth >= MAX_CONSTANT_DEPTH:
            raise NoFold(f"'{name}' comes from a constant subgraph deeper than {MAX_CONSTANT_DEPTH} nodes")
        inputs = [None if not t.name else self.constant(t, depth + 1) for t in node.inputs]
        if any(v is not None and v.size > MAX_CONSTANT_ELEMENTS for v in inputs):
            raise NoFold(f"'{name}' is computed from a tensor too large to evaluate")
        outputs = evaluate_node(node, inputs, self.opset)
        return np.asarray(outputs[node.outputs.index(tensor)])

    # -- edits ---------------------------------------------------------------------------
    # Rules edit the graphsurgeon graph; every edit is also recorded here, so that export can
    # patch the original ModelProto instead of regenerating it (which would drop node doc
    # strings and metadata, and copy outer-scope initializers into subgraphs).
    def fresh_name(self, base: str) -> str:
        """A tensor name not used anywhere in the model, derived from ``base``."""
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def _constant(self, name: str, values: np.ndarray) -> gs.Constant:
        proto = numpy_helper.from_array(np.asarray(values), name)
        self._new_initializers[name] = proto
        return gs.Constant(name, gs.ir.tensor.LazyValues(proto))

    def new_constant(self, base: str, values: np.ndarray) -> gs.Constant:
        """A new constant tensor with a fresh name, stored exactly as ``values`` (dtype kept)."""
        return self._constant(self.fresh_name(base), values)

    def replacement_constant(self, old: gs.Tensor, values: np.ndarray, base: str) -> gs.Constant:
        """A constant to replace ``old`` as an input of exactly one node.

        Reuses ``old``'s name only when ``old`` is a plain initializer that node alone reads;
        otherwise (shared, produced by a node, a graph output) a fresh name, so every other user
        keeps the original values.
        """
        private = (
            isinstance(old, gs.Constant)
            and len(old.outputs) == 1
            and not self.is_graph_output(old)
            and old.name not in self.overridable
        )
        return self._constant(old.name, values) if private else self.new_constant(base, values)

    def _detach(self, node: gs.Node) -> list[gs.Tensor]:
        inputs = [t for t in node.inputs if t.name]
        self._vanished.update(t.name for t in node.outputs if t.name)
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
                self._dropped.add(t.name)
                continue
            node = self.producer(t)
            if node is None or any(self.is_used(o) for o in node.outputs):
                continue
            stack.extend(self._detach(node))

    def replace_input(self, node: gs.Node, index: int, tensor: gs.Tensor) -> None:
        """Make ``node`` read ``tensor`` at input ``index`` (appending empty optionals as needed)."""
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        old = node.inputs[index]
        node.inputs[index] = tensor
        self._touched.add(id(node))
        if old.name and old is not tensor:
            self.release(old)

    def replace_output(self, node: gs.Node, index: int, tensor: gs.Tensor) -> None:
        """Make ``node`` produce ``tensor`` (which must have no producer) at output ``index``."""
        old = node.outputs[index]
        node.outputs[index] = tensor
        self._touched.add(id(node))
        if old.name and old is not tensor:
            self._vanished.add(old.name)

    def is_removed(self, node: gs.Node) -> bool:
        return id(node) in self._removed

    # -- export ----------------------------------------------------------------------------
    def patch(self, graph: onnx.GraphProto, ir_version: int) -> None:
        """Apply the recorded edits to ``graph``, the GraphProto this graph was imported from (or a copy).

        Untouched nodes, initializers and value_info entries are left as they are, byte for byte.
        Deletions use a stable sort and one slice delete: O(n), no copy of tensor data.
        """
        if len(graph.node) != len(self._order):
            raise RuntimeError("graph changed since import")
        for i, node in enumerate(self._order):
            if id(node) in self._touched and id(node) not in self._removed:
                proto = graph.node[i]
                del proto.input[:], proto.output[:]
                proto.input.extend(t.name for t in node.inputs)
                proto.output.extend(t.name for t in node.outputs)
        _delete_flagged(graph.node, [id(n) in self._removed for n in self._order])

        new = dict(self._new_initializers)
        dropped = self._dropped - set(new)
        for tensor in graph.initializer:
            if tensor.name in new:
                tensor.CopyFrom(new.pop(tensor.name))
        _delete_flagged(graph.initializer, [t.name in dropped for t in graph.initializer])
        graph.initializer.extend(new.values())

        gone = self._vanished | dropped
        _delete_flagged(graph.value_info, [v.name in gone for v in graph.value_info])
        if ir_version < 4:  # IR 3: every initializer is also listed as an input
            _delete_flagged(graph.input, [v.name in dropped for v in graph.input])
            graph.input.extend(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new.values()
            )


def _delete_flagged(field, flags: list[bool]) -> None:
    """Remove the elements of a repeated protobuf field whose flag is set, keeping the others' order.

    A stable sort moves the doomed elements to the end, one slice delete drops them: no element
    is copied (deleting one by one would be quadratic).
    """
    if not any(flags):
        return
    items = list(field)  # keeps the wrappers alive, so their ids stay valid during the sort
    marks = {id(x): f for x, f in zip(items, flags)}
    field.sort(key=lambda x: marks[id(x)])
    del field[len(flags) - sum(flags):]


def _all_names(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Every tensor name in ``graph`` and its subgraphs: a new name must collide with none of them."""
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    for field in (graph.input, graph.output, graph.value_info):
        names.update(v.name for v in field)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _all_names(sub, names)
    return names


def import_model(model: onnx.ModelProto) -> FoldGraph:
    """Import ``model`` for editing."""
    return FoldGraph(gs.import_onnx(model), overridable_inputs(model), _all_names(model.graph, set()))


def export_model(fg: FoldGraph, model: onnx.ModelProto) -> onnx.ModelProto:
    """Write the edits of ``fg`` into ``model`` (the ModelProto it was imported from, or a copy).

    Everything folding did not touch stays exactly as it was: ir_version, opset_import,
    producer, doc_string, metadata_props, functions, node names, doc strings and attributes, the
    graph's inputs (overridable initializer inputs included) and outputs.
    """
    fg.patch(model.graph, model.ir_version)
    return model
