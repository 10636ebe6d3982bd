"""bnfold on onnx-ir: ``bnfold.fold`` on an ``onnx_ir.Model``, and ``FoldPass`` in onnx-ir's pass pipelines.

Specified here:
- an ``onnx_ir.Model`` folds exactly as its ModelProto does: the same folds, refusals and counts,
  and the same model once serialized (onnx-ir's serializer writes every initializer's value_info,
  so the ModelProto path's result is compared after the same round trip);
- the input is never changed and the result shares nothing with it: not its numpy arrays, not its
  graph, not its external data files (read into the result);
- ``FoldPass`` is a functional pass: a new model always, ``modified`` only when something folded,
  the report in the result (``report``) and on the pass (``reports``, which survives a PassManager);
- bad input is a BnfoldError with a one-line message: a model onnx-ir cannot serialize, external
  data onnx-ir cannot read, something that is not an ``onnx_ir.Model``;
- onnx-ir is imported by ``bnfold.irpass`` only (start-up of every other command pays nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest
from onnx import helper, numpy_helper

import bnfold
from bnfold.irpass import FoldPass, FoldPassResult
from bnfold.rules import DEFAULT_RULES
from bnfold.tolerances import tolerance_for
from builders import bn_after_relu_model, conv_bn_model, two_branch_model
from conftest import assert_equivalent, check_full, op_types, run_ort

MODELS = Path(__file__).parents[1] / "models"
F = onnx.TensorProto.FLOAT


def to_ir(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def ir_bytes(model: ir.Model) -> bytes:
    return to_proto(model).SerializeToString()


def functions_and_subgraphs_model() -> onnx.ModelProto:
    """Conv+BN three times: in the main graph, in an If's then-branch, in a local function's body.

    The branch and the function take their parameters from Constant nodes (they have no
    initializers); the model and the main Conv carry metadata_props, as PyTorch's exporter writes.
    """
    rng = np.random.default_rng(3)

    def constants(prefix: str) -> list[onnx.NodeProto]:
        values = {"W": rng.standard_normal((4, 2, 1, 1)) * 0.5, "g": rng.uniform(0.5, 1.5, 4),
                  "b": rng.standard_normal(4), "m": rng.standard_normal(4), "v": rng.uniform(0.5, 2.0, 4)}
        return [helper.make_node("Constant", [], [prefix + k], name=f"{prefix}const_{k}",
                                 value=numpy_helper.from_array(v.astype(np.float32), prefix + k))
                for k, v in values.items()]

    def conv_bn(prefix: str, x: str, out: str) -> list[onnx.NodeProto]:
        return [*constants(prefix),
                helper.make_node("Conv", [x, prefix + "W"], [prefix + "y"], name=prefix + "conv"),
                helper.make_node("BatchNormalization", [prefix + "y", *(prefix + k for k in "gbmv")], [out],
                                 name=prefix + "bn")]

    then_branch = helper.make_graph(conv_bn("t_", "x", "t_z"), "then", [],
                                    [helper.make_tensor_value_info("t_z", F, None)])
    else_branch = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["e_z"], name="e_cat", axis=1)],
                                    "else", [], [helper.make_tensor_value_info("e_z", F, None)])
    function = helper.make_function("local", "ConvBn", ["x"], ["f_z"], conv_bn("f_", "x", "f_z"),
                                    [helper.make_opsetid("", 17)])
    main = conv_bn("m_", "x", "y_main")
    conv = next(n for n in main if n.op_type == "Conv")
    conv.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'stem']")
    nodes = [*main,
             helper.make_node("If", ["cond"], ["y_if"], name="choose", then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("ConvBn", ["x"], ["y_fn"], name="call", domain="local")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", F, [1, 2, 3, 3]),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(name, F, [1, 4, 3, 3]) for name in ("y_main", "y_if", "y_fn")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function], ir_version=10)
    helper.set_model_props(model, {"exporter": "tests/test_irpass.py"})
    check_full(model)
    return model


def with_dead_node(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` plus a Relu of the first input whose output nothing reads (RemoveUnusedNodesPass's work)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.node.append(helper.make_node("Relu", [model.graph.input[0].name], ["unused"], name="dead"))
    return model


CASES = {
    "resnet_stack": (lambda: onnx.load(MODELS / "resnet_stack.onnx"), 9),
    "depthwise_block": (lambda: onnx.load(MODELS / "depthwise_block.onnx"), 6),
    "conv1d_bn": (lambda: onnx.load(MODELS / "conv1d_bn.onnx"), 2),
    "conv_bn": (conv_bn_model, 1),
    "two_branch": (two_branch_model, 2),
    "bn_after_relu": (bn_after_relu_model, 0),
    "functions_and_subgraphs": (functions_and_subgraphs_model, 3),
}


# -- the ir path is the ModelProto path ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_ir_model_folds_as_its_modelproto_does(case):
    build, expected_folds = CASES[case]
    proto = build()
    from_proto, from_ir = bnfold.fold(proto), bnfold.fold(to_ir(proto))
    assert isinstance(from_ir.model, ir.Model)
    assert len(from_ir.folds) == expected_folds
    assert from_ir.folds == from_proto.folds
    assert from_ir.refusals == from_proto.refusals
    assert (from_ir.before, from_ir.after) == (from_proto.before, from_proto.after)
    assert ir_bytes(from_ir.model) == ir_bytes(to_ir(from_proto.model))
    check_full(to_proto(from_ir.model))


@pytest.mark.parametrize("case", ["resnet_stack", "depthwise_block", "functions_and_subgraphs"])
def test_the_folded_ir_model_computes_what_the_input_computes(case):
    proto = CASES[case][0]()
    folded = to_proto(bnfold.fold(to_ir(proto)).model)
    assert "BatchNormalization" not in op_types(folded)
    if case == "functions_and_subgraphs":
        for cond in (True, False):
            feeds = {"x": np.random.default_rng(5).standard_normal((1, 2, 3, 3)).astype(np.float32),
                     "cond": np.array(cond)}
            _assert_same_outputs(proto, folded, feeds)
    else:
        assert_equivalent(proto, folded)


def _assert_same_outputs(original, folded, feeds):
    """``conftest.assert_equivalent`` on given feeds (it draws its own, and one value of the If's condition)."""
    expected, got = run_ort(original, feeds), run_ort(folded, feeds)
    assert list(got) == list(expected)
    for name, ref in expected.items():
        tol = tolerance_for(ref.dtype)
        np.testing.assert_allclose(got[name], ref, atol=tol.atol, rtol=tol.rtol, err_msg=name)


def test_metadata_the_exporter_writes_survives_the_fold():
    result = bnfold.fold(to_ir(functions_and_subgraphs_model()))
    model = result.model
    assert model.metadata_props == {"exporter": "tests/test_irpass.py"}
    conv = next(n for n in model.graph if n.name == "m_conv")
    assert conv.metadata_props == {"pkg.torch.onnx.name_scopes": "['', 'stem']"}
    assert list(model.functions) == [("local", "ConvBn", "")]
    body = model.functions["local", "ConvBn", ""]
    assert [n.op_type for n in body] == ["Constant", "Constant", "Conv"]  # W and the new bias
    if_node = next(n for n in model.graph if n.op_type == "If")
    assert "BatchNormalization" not in [n.op_type for n in if_node.attributes["then_branch"].as_graph()]


# -- the input is untouched, the result independent -----------------------------------------------------------


@pytest.mark.parametrize("case", ["resnet_stack", "bn_after_relu", "functions_and_subgraphs"])
def test_the_input_ir_model_is_not_changed(case):
    model = to_ir(CASES[case][0]())
    before = ir_bytes(model)
    result = bnfold.fold(model)
    assert result.model is not model
    assert ir_bytes(model) == before
    FoldPass()(model)
    assert ir_bytes(model) == before


def _numpy_backed(proto: onnx.ModelProto) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """The model with every initializer an ``ir.Tensor`` over a writable numpy array (returned by name)."""
    model = to_ir(proto)
    arrays = {}
    for name, value in model.graph.initializers.items():
        arrays[name] = np.array(value.const_value.numpy())
        value.const_value = ir.Tensor(arrays[name], name=name)
    return model, arrays


def test_the_result_shares_nothing_with_a_numpy_backed_input():
    model, arrays = _numpy_backed(onnx.load(MODELS / "resnet_stack.onnx"))
    before = ir_bytes(model)
    result = bnfold.fold(model).model
    folded = ir_bytes(result)
    kept = [v for v in result.graph.initializers.values() if v.name in arrays]
    assert kept, "some initializers (the Gemm's) are not touched by the folds"
    for value in kept:
        assert not np.shares_memory(value.const_value.numpy(), arrays[value.name])
    for array in arrays.values():  # the input's weights change after the fold...
        array *= 2
    assert ir_bytes(result) == folded  # ...the result does not
    result.graph.remove(next(iter(result.graph)), safe=False)  # and editing the result...
    result.metadata_props["edited"] = "yes"
    for array in arrays.values():
        array /= 2
    assert ir_bytes(model) == before  # ...leaves the input as it was


# -- FoldPass in onnx-ir's pipelines ----------------------------------------------------------------------------


def test_fold_pass_runs_in_a_pass_manager_beside_an_onnx_ir_pass():
    proto = with_dead_node(conv_bn_model())
    model = to_ir(proto)
    fold_bn = FoldPass()
    manager = ir.passes.PassManager([fold_bn, common_passes.RemoveUnusedNodesPass()])
    result = manager(model)
    assert result.modified
    assert [n.op_type for n in result.model.graph] == ["Conv"]  # BN folded, the dead Relu removed
    assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization", "Relu"]
    [report] = fold_bn.reports
    assert [(f.rule, f.node, f.into) for f in report.folds] == [("conv-bn", "bn", "conv")]
    assert report.model is None  # the pass keeps figures, not models
    assert_equivalent(conv_bn_model(), to_proto(result.model))


def test_in_a_pass_manager_of_two_steps_every_call_has_its_report():
    fold_bn = FoldPass()
    manager = ir.passes.PassManager([fold_bn], steps=2, early_stop=True)
    result = manager(to_ir(two_branch_model()))
    assert result.modified
    assert [len(r.folds) for r in fold_bn.reports] == [2, 0]  # the second look finds nothing left
    assert [r.refusals for r in fold_bn.reports] == [[], []]


def test_the_pass_result_carries_the_report_and_the_model():
    model = to_ir(conv_bn_model())
    result = FoldPass()(model)
    assert isinstance(result, FoldPassResult) and isinstance(result, ir.passes.PassResult)
    assert result.modified and result.report.changed
    assert result.report.model is result.model
    assert [n.op_type for n in result.model.graph] == ["Conv"]


def test_a_refusal_is_reachable_through_the_pass():
    model = to_ir(bn_after_relu_model())
    fold_bn = FoldPass()
    result = fold_bn(model)
    assert not result.modified
    [refusal] = result.report.refusals
    assert (refusal.node, refusal.op) == ("bn", "BatchNormalization")
    assert refusal.reason == bnfold.fold(bn_after_relu_model()).refusals[0].reason
    assert "Relu" in refusal.reason
    assert fold_bn.reports[-1].refusals == [refusal]


def test_nothing_to_fold_is_not_modified_and_still_a_new_model():
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"], name="relu")], "g",
                              [helper.make_tensor_value_info("X", F, [1, 4])],
                              [helper.make_tensor_value_info("Y", F, [1, 4])])
    model = to_ir(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    result = FoldPass()(model)  # onnx-ir checks that a functional pass returns another object
    assert not result.modified
    assert result.model is not model
    assert ir_bytes(result.model) == ir_bytes(model)
    assert (result.report.folds, result.report.refusals) == ([], [])
    assert not ir.passes.PassManager([FoldPass()])(model).modified


def test_the_pass_runs_the_rules_it_is_given():
    model = to_ir(conv_bn_model())
    assert FoldPass()(model).modified
    result = FoldPass(rules=[r for r in DEFAULT_RULES if r.name != "conv-bn"])(model)
    assert not result.modified
    [refusal] = result.report.refusals
    assert refusal.node == "bn" and "'conv-bn'" in refusal.reason


# -- external data ---------------------------------------------------------------------------------------------


def _saved_with_external_data(folder: Path, location: str = "weights.bin") -> tuple[Path, onnx.ModelProto]:
    """resnet_stack saved as ``folder/model.onnx`` with every tensor in ``folder/location``; and the model."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.load(MODELS / "resnet_stack.onnx"), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path, onnx.load(MODELS / "resnet_stack.onnx")


def _external(model: ir.Model) -> list[ir.ExternalTensor]:
    return [v.const_value for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]


def test_external_tensors_are_read_and_the_result_needs_no_file_of_the_input(tmp_path):
    path, proto = _saved_with_external_data(tmp_path / "src")
    model = ir.load(path)
    assert len(_external(model)) == len(model.graph.initializers)
    before = ir_bytes(model)
    result = bnfold.fold(model)
    assert result.folds == bnfold.fold(path).folds and len(result.folds) == 9
    assert _external(result.model) == []
    assert ir_bytes(model) == before and len(_external(model)) == len(model.graph.initializers)
    shutil.rmtree(tmp_path / "src")  # the input's files gone: the result still runs
    assert_equivalent(proto, to_proto(result.model))


def test_external_tensors_from_two_folders_are_each_read_from_their_own(tmp_path):
    path, _ = _saved_with_external_data(tmp_path / "a", "a.bin")
    other, _ = _saved_with_external_data(tmp_path / "b", "b.bin")
    model, elsewhere = ir.load(path), ir.load(other)
    name = "stem.conv.weight"
    model.graph.initializers[name].const_value = elsewhere.graph.initializers[name].const_value
    assert {os.fspath(t.base_dir) for t in _external(model)} == {str(tmp_path / "a"), str(tmp_path / "b")}
    result = bnfold.fold(model)
    assert result.folds == bnfold.fold(path).folds
    assert ir_bytes(result.model) == ir_bytes(bnfold.fold(ir.load(path)).model)


def test_one_location_in_two_folders_is_refused(tmp_path):
    path, _ = _saved_with_external_data(tmp_path / "a")
    other, _ = _saved_with_external_data(tmp_path / "b")
    model, elsewhere = ir.load(path), ir.load(other)
    name = "stem.conv.weight"
    model.graph.initializers[name].const_value = elsewhere.graph.initializers[name].const_value
    with pytest.raises(bnfold.BnfoldError, match=r"location 'weights.bin' is read from 2 folders") as info:
        bnfold.fold(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_external_data_onnx_ir_cannot_read_is_a_one_line_error(tmp_path, damage):
    path, _ = _saved_with_external_data(tmp_path)
    model = ir.load(path)
    data = tmp_path / "weights.bin"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    unreadable = r"^tensor '[^']+': cannot read its external data '.*weights\.bin'"
    with pytest.raises(bnfold.BnfoldError, match=unreadable) as info:
        FoldPass()(model)
    assert "\n" not in str(info.value)


# -- bad input -------------------------------------------------------------------------------------------------


def test_a_model_onnx_ir_cannot_serialize_is_a_one_line_error():
    model = to_ir(conv_bn_model())

    def never_materialized():
        raise RuntimeError("the weights were never materialized")

    weight = model.graph.initializers["W"]
    weight.const_value = ir.LazyTensor(never_materialized, dtype=ir.DataType.FLOAT, shape=ir.Shape([8, 4, 3, 3]),
                                       name="W")
    with pytest.raises(bnfold.BnfoldError) as info:
        FoldPass()(model)
    message = str(info.value)
    assert message.startswith("the onnx_ir.Model cannot be serialized to ONNX (RuntimeError: the weights were "
                              "never materialized, in LazyTensor<FLOAT,[8,4,3,3]>")
    assert "name='W'" in message and "\n" not in message


def test_what_is_not_an_ir_model_is_a_one_line_error():
    proto = conv_bn_model()
    model = to_ir(proto)
    with pytest.raises(bnfold.BnfoldError, match=r"^expected an onnx_ir.Model, got onnx.ModelProto \(bnfold.fold"):
        FoldPass()(proto)
    with pytest.raises(bnfold.BnfoldError, match=r"takes an onnx.ModelProto, an onnx_ir.Model or a path, not Graph$"):
        bnfold.fold(model.graph)
    with pytest.raises(bnfold.BnfoldError, match=r"^in_place is not for an onnx_ir.Model"):
        bnfold.fold(model, in_place=True)
    with pytest.raises(bnfold.BnfoldError, match=r"^base_dir is not for an onnx_ir.Model"):
        bnfold.fold(model, base_dir=".")
    assert ir_bytes(model) == to_proto(to_ir(proto)).SerializeToString()


# -- onnx-ir stays optional ------------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])


def test_nothing_but_irpass_imports_onnx_ir():
    help_run = subprocess.run([sys.executable, "-X", "importtime", "-m", "bnfold", "--help"], capture_output=True,
                              text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert help_run.returncode == 0, help_run.stderr
    assert "onnx_ir" not in help_run.stderr
    folded = _python("import sys, bnfold; r = bnfold.fold('models/resnet_stack.onnx'); "
                     "print(len(r.folds), 'onnx_ir' in sys.modules)")
    assert folded.stdout.split() == ["9", "False"], folded.stderr


def test_without_onnx_ir_the_pass_says_what_to_install():
    done = _python("import sys; sys.modules['onnx_ir'] = None\n"
                   "import bnfold\n"
                   "try:\n    bnfold.FoldPass\nexcept ImportError as e:\n    print(type(e).__name__, e)")
    assert done.stdout.strip() == ("ModuleNotFoundError bnfold's onnx-ir support needs onnx-ir: "
                                   "pip install 'bnfold[ir]'"), done.stderr


def test_the_pass_is_a_top_level_name():
    assert bnfold.FoldPass is FoldPass and bnfold.FoldPassResult is FoldPassResult
