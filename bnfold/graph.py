"""The graph the rules edit: onnx-graphsurgeon plus what folding needs on top of it.

``FoldGraph`` wraps a ``gs.Graph`` with
- constant lookup that follows the runtime's rule for initializers listed as graph inputs,
  and evaluates small constant subgraphs (Identity, Constant, ConstantOfShape, ...);
- fresh, unique tensor names for new weights (never reuse a name: shared weights stay intact);
- O(1) producer/consumer queries (graphsurgeon keeps both directions linked) and deferred node
  removal, so a whole pass stays linear in the number of nodes.

``import_model``/``export_model`` do the round trip and repair what graphsurgeon changes on the
way (doc_string, metadata_props, IR-3 initializer inputs, overridable inputs, functions).
"""

from __future__ import annotations

import copy

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

    def __init__(self, graph: gs.Graph, overridable: set[str]):
        self.graph = graph
        self.overridable = overridable
        self.opset = int(graph.opset)
        self._output_names = {t.name for t in graph.outputs}
        self._input_names = {t.name for t in graph.inputs}
        self._names = set(graph.tensors(check_duplicates=False).keys()) | set(overridable)
        self._constants: dict[int, tuple[gs.Tensor, np.ndarray]] = {}
        self._removed: set[int] = set()

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
    def fresh_name(self, base: str) -> str:
        """A tensor name not used anywhere in the model, derived from ``base``."""
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def new_constant(self, base: str, values: np.ndarray) -> gs.Constant:
        """A new constant tensor with a fresh name, stored exactly as ``values`` (dtype kept)."""
        name = self.fresh_name(base)
        return gs.Constant(name, gs.ir.tensor.LazyValues(numpy_helper.from_array(np.asarray(values), name)))

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
        if not private:
            return self.new_constant(base, values)
        return gs.Constant(old.name, gs.ir.tensor.LazyValues(numpy_helper.from_array(np.asarray(values), old.name)))

    def remove_node(self, node: gs.Node) -> None:
        """Detach ``node`` and delete whatever only it kept alive (constant feeders, Identity chains)."""
        inputs = [t for t in node.inputs if t.name]
        node.inputs.clear()
        node.outputs.clear()
        self._removed.add(id(node))
        for tensor in inputs:
            self.release(tensor)

    def release(self, tensor: gs.Tensor) -> None:
        """Delete the producer of ``tensor`` (recursively) once none of its outputs is used."""
        stack = [tensor]
        while stack:
            t = stack.pop()
            node = self.producer(t)
            if node is None or self.is_used(t) or any(self.is_used(o) for o in node.outputs):
                continue
            inputs = [i for i in node.inputs if i.name]
            node.inputs.clear()
            node.outputs.clear()
            self._removed.add(id(node))
            stack.extend(inputs)

    def replace_input(self, node: gs.Node, index: int, tensor: gs.Tensor) -> None:
        """Make ``node`` read ``tensor`` at input ``index`` (appending empty optionals as needed)."""
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        old = node.inputs[index]
        node.inputs[index] = tensor
        if old.name and old is not tensor:
            self.release(old)

    def is_removed(self, node: gs.Node) -> bool:
        return id(node) in self._removed

    def commit(self) -> None:
        """Drop removed nodes from the node list, in one O(n) sweep."""
        if self._removed:
            self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self._removed]
            self._removed.clear()


def import_model(model: onnx.ModelProto) -> FoldGraph:
    """Import ``model`` for editing."""
    return FoldGraph(gs.import_onnx(model), overridable_inputs(model))


def export_model(fg: FoldGraph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export the edited graph, restoring what graphsurgeon's round trip does not keep.

    Kept exactly from ``original``: ir_version, opset_import, producer, domain, model_version,
    doc_string, metadata_props, functions, the graph's name, doc_string and outputs, and its
    inputs (overridable initializer inputs included). For IR < 4 every initializer is listed as
    an input again, as that IR requires; inputs of initializers that folding removed go away.
    """
    fg.commit()
    out = gs.export_onnx(fg.graph, do_type_check=False)
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(original, field))
    for field in ("opset_import", "metadata_props", "functions", "training_info"):
        del getattr(out, field)[:]
        getattr(out, field).extend(getattr(original, field))
    graph, orig_graph = out.graph, original.graph
    graph.name, graph.doc_string = orig_graph.name, orig_graph.doc_string
    del graph.output[:]
    graph.output.extend(orig_graph.output)
    if orig_graph.sparse_initializer:
        del graph.sparse_initializer[:]
        graph.sparse_initializer.extend(orig_graph.sparse_initializer)
    _restore_inputs(graph, original)
    return out


def _restore_inputs(graph: onnx.GraphProto, original: onnx.ModelProto) -> None:
    orig_graph = original.graph
    orig_inits = {t.name: t for t in orig_graph.initializer}
    present = {t.name for t in graph.initializer}
    inputs = []
    for value_info in orig_graph.input:
        name = value_info.name
        if name not in orig_inits:
            inputs.append(value_info)  # a real input
        elif name in present:
            inputs.append(value_info)  # an initializer input that still exists
        elif original.ir_version >= 4:
            # An overridable input graphsurgeon dropped because nothing read it: keep it as it was.
            graph.initializer.append(copy.deepcopy(orig_inits[name]))
            inputs.append(value_info)
    if original.ir_version < 4:
        listed = {vi.name for vi in inputs}
        for tensor in graph.initializer:
            if tensor.name not in listed:
                inputs.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.input[:]
    graph.input.extend(inputs)
