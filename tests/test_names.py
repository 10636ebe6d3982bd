"""Fresh names: unique across the model, and O(1) amortized even when exporters repeat names.

Node names may repeat in ONNX (every BN named "bn"), and new tensor names derive from node names
(``bn.scale_folded``), so one base is asked for again and again. Probing ``base_1, base_2, ...``
from 1 each time made 8,000 pairs fold 4x slower than with unique names; ``Names`` remembers the
next suffix per base. The test counts membership probes instead of timing (timings are noise here).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import bnfold
from bnfold.graph import Names
from conftest import assert_equivalent, check_full


class CountingSet(set):
    """A set that counts how often membership is tested."""

    probes = 0

    def __contains__(self, item) -> bool:
        CountingSet.probes += 1
        return super().__contains__(item)


def test_names_from_one_base_cost_constant_probes_each():
    taken = CountingSet({"w", "w_1", "w_3"})
    names = Names(taken)
    CountingSet.probes = 0
    made = [names.fresh("w") for _ in range(5000)]
    assert len(set(made)) == 5000 and not {"w", "w_1", "w_3"} & set(made)
    assert made[:3] == ["w_2", "w_4", "w_5"]
    assert CountingSet.probes <= 2 * 5000 + 10  # quadratic probing would need ~12.5 million


def test_a_fresh_name_never_collides_with_a_taken_suffix():
    names = Names({"a", "a_1"})
    assert names.fresh("b") == "b"  # a free base is itself
    assert names.fresh("a") == "a_2"
    names.taken.add("a_3")  # taken by someone else meanwhile
    assert names.fresh("a") == "a_4"
    assert names.fresh("a_1") == "a_1_1"


def repeated_name_chain(pairs: int) -> onnx.ModelProto:
    """``pairs`` Conv → BN pairs in a row, every Conv named "conv" and every BN "bn"."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(pairs):
        w = f"w{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((2, 2, 1, 1)) * 0.7).astype(np.float32), w))
        stats = {"s": rng.uniform(0.8, 1.2, 2), "b": rng.standard_normal(2) * 0.1, "m": rng.standard_normal(2) * 0.1,
                 "v": rng.uniform(0.8, 1.2, 2)}
        inits += [numpy_helper.from_array(v.astype(np.float32), f"{k}{i}") for k, v in stats.items()]
        nodes.append(helper.make_node("Conv", [x, w], [f"c{i}"], name="conv"))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"y{i}"],
                                      name="bn"))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 2, 3, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_repeated_node_names_fold_into_unique_tensors():
    model = repeated_name_chain(300)
    result = bnfold.fold(model)
    assert len(result.folds) == 300
    folded = result.model
    check_full(folded)  # every tensor name produced once
    biases = [n.input[2] for n in folded.graph.node]
    assert len(set(biases)) == 300 and biases[0] == "conv.bias_folded"
    # onnxruntime refuses repeated node names (the checker does not): run copies with numbered ones
    assert_equivalent(numbered(model), numbered(folded))


def numbered(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(copy.graph.node):
        node.name = f"{node.name}#{i}"
    return copy
