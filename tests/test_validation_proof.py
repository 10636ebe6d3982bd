"""Validation on real-export shapes: dynamic dims, bool branches, real inputs, exact references, precision loss.

What a validation must do to prove something (issue 10): choose input shapes where every output
varies (a 1x1 image is zero everywhere after a mean subtraction), run several input sets (both
branches of an If on a bool input), take the user's inputs, accept a deep chain whose float32
original is itself far from exact when the fold is closer, and fail every known precision-loss
shape. Verdicts are passed / failed / unproven, and the CLI's exit codes 0 / 1 / 3 follow them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import bnfold
import builders
from bnfold.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from make_chains import make_chain  # noqa: E402

F = onnx.TensorProto.FLOAT


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def _init(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def centred_model(dims) -> onnx.ModelProto:
    """X[dims] → Conv 3x3 (pad 1, stride 2) → BN → minus its spatial mean: zero everywhere on a 1x1 image.

    ``dims`` is the declared input shape: ints, strings (dim_param) or -1 (paddle2onnx's dynamic dim).
    """
    rng = np.random.default_rng(0)
    inits = [_init("W", rng.standard_normal((4, 3, 3, 3)) * 0.3), _init("g", rng.uniform(0.5, 1.5, 4)),
             _init("b", rng.standard_normal(4)), _init("m", rng.standard_normal(4)), _init("v", rng.uniform(0.5, 2, 4))]
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
             helper.make_node("GlobalAveragePool", ["y"], ["mean"]),
             helper.make_node("Sub", ["y", "mean"], ["Y"])]
    x = helper.make_tensor_value_info("X", F, None)
    shape = x.type.tensor_type.shape
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    y = helper.make_tensor_value_info("Y", F, ["N", 4, "h", "w"])
    model = helper.make_model(helper.make_graph(nodes, "centred", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


# -- shapes that say something ----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [[-1, 3, "?", "?"], ["N", 3, "H", "W"], [-1, 3, -1, -1], ["", 3, "", ""]],
                         ids=["paddle-minus1-and-?", "named", "all-minus1", "empty-names"])
def test_symbolic_dims_are_searched_until_every_output_varies(dims):
    model = centred_model(dims)
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded)
    assert result.verdict == "passed", result.reason
    assert result.inputs == {"X": [1, 3, 32, 32]}  # batch 1, spatial searched: 32 is the first that varies
    assert "batch-like dims set to 1: X[0]" in result.shapes_chosen
    assert "other symbolic dims set to 32: the first size tried where every output varies" in result.shapes_chosen
    assert [s["inputs"] for s in result.sets] == [{"X": [1, 3, 32, 32]}] * 3


def test_at_1x1_the_same_model_proves_nothing_and_says_so():
    model = centred_model([1, 3, "H", "W"])
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded, input_shapes={"X": [1, 3, 1, 1]})
    assert result.verdict == "unproven"
    assert result.reason.startswith("nothing was proven: every output ('Y') is zero or not finite everywhere")
    assert result.outputs[0].verdict == "uninformative"


def test_the_cli_exit_code_for_could_not_prove_is_3_and_nothing_is_written(tmp_path):
    src = tmp_path / "centred.onnx"
    onnx.save(centred_model([1, 3, "H", "W"]), src)
    result = run("optimize", src, "--input-shape", "X=1x3x1x1")
    assert result.exit_code == 3, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"bnfold: error: {src}: validation could not prove the fold (nothing was proven:")
    assert line.endswith("nothing written (--accept-unproven writes it)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centred.onnx"]
    accepted = run("optimize", src, "--input-shape", "X=1x3x1x1", "--accept-unproven")
    assert accepted.exit_code == 0
    assert "written although validation could not prove the fold" in accepted.stderr
    assert (tmp_path / "centred.folded.onnx").exists()
    searched = run("optimize", src, "-o", tmp_path / "searched.onnx", "--json")
    assert searched.exit_code == 0 and json.loads(searched.stdout)["validation"]["verdict"] == "passed"


def test_check_fix_leaves_an_unproven_file_untouched_unless_settings_accept_it(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    model = builders.conv_bn_model()
    y = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Mystery", [y], ["Z"], domain="com.example"))  # no runtime has it
    model.graph.output[0].name = "Z"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, src)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    refused = run("check", "--fix", src)
    assert refused.exit_code == 1 and src.read_bytes() == before
    assert "validation could not prove the fold" in refused.stderr and "file left untouched" in refused.stderr
    (tmp_path / "pyproject.toml").write_text("[tool.bnfold]\naccept_unproven = true\n")
    accepted = run("check", "--fix", "--format", "json", src)
    assert accepted.exit_code == 0, accepted.output
    doc = json.loads(accepted.stdout)
    assert doc["files"][0]["fixed"] is True and doc["files"][0]["unproven"] is True
    assert src.read_bytes() != before


# -- several input sets ------------------------------------------------------------------------------------


def if_on_bool_model() -> onnx.ModelProto:
    """cond ? Conv_a → BN : Conv_b → BN; the branches compute different things."""
    rng = np.random.default_rng(1)

    def branch(tag):
        inits = [_init(f"W{tag}", rng.standard_normal((4, 2, 1, 1))), _init(f"g{tag}", rng.uniform(0.5, 1.5, 4)),
                 _init(f"b{tag}", rng.standard_normal(4)), _init(f"m{tag}", rng.standard_normal(4)),
                 _init(f"v{tag}", rng.uniform(0.5, 2, 4))]
        nodes = [helper.make_node("Conv", ["X", f"W{tag}"], [f"c{tag}"], name=f"conv_{tag}"),
                 helper.make_node("BatchNormalization", [f"c{tag}", f"g{tag}", f"b{tag}", f"m{tag}", f"v{tag}"],
                                  [f"y{tag}"], name=f"bn_{tag}")]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"y{tag}", F, None)], inits)

    node = helper.make_node("If", ["cond"], ["Y"], name="choose", then_branch=branch("then"), else_branch=branch("else"))
    graph = helper.make_graph([node], "if", [helper.make_tensor_value_info("X", F, [1, 2, 4, 4]),
                                             helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("Y", F, [1, 4, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("branch, set_label", [("then", "normal"), ("else", "image")])
def test_a_wrong_fold_in_either_branch_of_an_if_on_a_bool_input_fails(branch, set_label):
    """The first set has every bool True, the second every bool False: both branches run."""
    model = if_on_bool_model()
    folded = bnfold.fold(model).model
    assert bnfold.validate(model, folded).verdict == "passed"
    wrong = copy.deepcopy(folded)
    body = next(a.g for a in wrong.graph.node[0].attribute if a.name == f"{branch}_branch")
    conv = body.node[0]
    weight = next(t for t in body.initializer if t.name == conv.input[1])
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    result = bnfold.validate(model, wrong)
    assert result.verdict == "failed"
    assert result.outputs[0].worst_set == set_label


def test_random_sets_exercise_different_things():
    from bnfold.feeds import random_set

    model = if_on_bool_model()
    inputs = list(model.graph.input)
    normal, image, wide = (random_set(inputs, {"X": [1, 2, 4, 4], "cond": []}, 0, k) for k in range(3))
    assert normal["cond"] and not image["cond"]
    assert normal["X"].min() < 0 and image["X"].min() >= 0 and image["X"].max() < 1
    assert np.abs(wide["X"]).max() > 5 * np.abs(normal["X"]).max() / 2


# -- real inputs ---------------------------------------------------------------------------------------------


def test_inputs_from_npz_files_and_folders_and_dicts(tmp_path):
    model = centred_model([1, 3, "H", "W"])
    folded = bnfold.fold(model).model
    src, dst = tmp_path / "m.onnx", tmp_path / "m.folded.onnx"
    onnx.save(model, src)
    onnx.save(folded, dst)
    rng = np.random.default_rng(3)
    sets = tmp_path / "sets"
    sets.mkdir()
    for k, size in enumerate((16, 24)):
        np.savez(sets / f"set{k}.npz", X=rng.random((1, 3, size, size)).astype(np.float32))

    from_folder = bnfold.validate(src, dst, inputs=sets)
    assert from_folder.verdict == "passed"
    assert [s["inputs"] for s in from_folder.sets] == [{"X": [1, 3, 16, 16]}, {"X": [1, 3, 24, 24]}]
    assert from_folder.sets[0]["label"].endswith("set0.npz")
    assert from_folder.shapes_chosen == "from the 2 input files given (--inputs)"

    dicts = bnfold.validate(src, dst, inputs=[{"X": rng.random((1, 3, 8, 8)).astype(np.float32)}])
    assert dicts.verdict == "passed" and dicts.inputs == {"X": [1, 3, 8, 8]}

    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--inputs", sets / "set1.npz", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["validation"]["sets"][0]["inputs"] == {"X": [1, 3, 24, 24]}


@pytest.mark.parametrize("feeds, message", [
    ({"Y": np.zeros((1, 3, 8, 8), np.float32)}, "the model's inputs are X; this set misses X"),
    ({"X": np.zeros((1, 3, 8, 8), np.float64)}, "input 'X' is float64, the model takes float32"),
    ({"X": np.zeros((1, 3, 8), np.float32)}, "input 'X' has rank 3, the model takes rank 4"),
    ({"X": np.zeros((1, 5, 8, 8), np.float32)}, "input 'X' has size 5 on axis 1, the model takes 3"),
])
def test_an_input_set_that_does_not_fit_is_a_usage_error(tmp_path, feeds, message):
    src = tmp_path / "m.onnx"
    onnx.save(centred_model([1, 3, "H", "W"]), src)
    np.savez(tmp_path / "bad.npz", **feeds)
    result = run("optimize", src, "--inputs", tmp_path / "bad.npz")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"bnfold: error: {tmp_path / 'bad.npz'}: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "m.onnx"]


def test_an_npz_that_is_not_one_is_a_usage_error(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(centred_model([1, 3, "H", "W"]), src)
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    result = run("optimize", src, "--inputs", tmp_path / "fake.npz")
    assert result.exit_code == 2 and "not an .npz file of inputs" in result.stderr


# -- exact reference ------------------------------------------------------------------------------------------


def test_a_deep_chain_validates_against_the_exact_answer():
    """2,000 Conv+BN pairs: the float32 original is itself 3.5e-4 from exact and the fold closer; the
    exact reference says how far each is, and a wrong fold of the same chain fails against it."""
    model = make_chain(2000)
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded, reference="float64")
    assert result.verdict == "passed", result.reason
    [out] = result.outputs
    assert out.stage == "exact reference" and out.needed > 64
    assert out.exact_folded < out.exact_original
    assert result.reference["ran"] and result.reference["mode"] == "float64"
    wrong = copy.deepcopy(folded)
    w = next(t for t in wrong.graph.initializer[1000:] if len(t.dims) == 4)  # a folded weight half-way down
    values = numpy_helper.to_array(w).astype(np.float64)
    w.CopyFrom(numpy_helper.from_array((values * (1 + 2.0 ** -10)).astype(np.float32), w.name))
    assert bnfold.validate(model, wrong, reference="float64").verdict == "failed"


def test_reference_float64_judges_every_output_and_reports_the_distances(tmp_path):
    model = builders.conv_bn_model()
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded, reference="float64")
    assert result.verdict == "passed"
    [out] = result.outputs
    assert out.exact_original is not None and out.exact_folded is not None
    assert result.reference == {"mode": "float64", "ran": True, "error": None, "sets": [0, 1, 2]}
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    text = run("optimize", src, "--reference", "float64").stdout
    assert "exact float64 answer, output 'Y': original" in text


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
def test_an_input_named_like_a_parameter_of_savez_is_validated(name):
    """The input sets go to .npz files by input name: with np.savez(path, **feeds), an input named
    ``file`` was a TypeError and one named ``allow_pickle`` was dropped from the set (so it "missed"
    the input), from given sets and from the exact reference's sets alike."""
    model = builders.conv_bn_model()
    [x] = model.graph.input
    for node in model.graph.node:
        node.input[:] = [name if i == x.name else i for i in node.input]
    x.name = name
    folded = bnfold.fold(model).model
    rng = np.random.default_rng(0)
    given = bnfold.validate(model, folded, inputs=[{name: make_set(model, rng)}])
    assert given.verdict == "passed", given.reason
    assert given.inputs == {name: [int(d.dim_value) for d in x.type.tensor_type.shape.dim]}
    exact = bnfold.validate(model, folded, reference="float64")
    assert exact.verdict == "passed", exact.reason
    assert exact.reference["ran"] and exact.reference["error"] is None


def make_set(model: onnx.ModelProto, rng: np.random.Generator) -> np.ndarray:
    """Random float32 values of the (static) shape of the model's one input."""
    [x] = model.graph.input
    return rng.standard_normal([d.dim_value for d in x.type.tensor_type.shape.dim]).astype(np.float32)


# -- precision-loss shapes fail -------------------------------------------------------------------------------


def bn15_add_model(t1) -> onnx.ModelProto:
    """Relu → BN (scale/bias in ``t1``, data float32) → Add 1000.3 (float32)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(t1), "g"),
             numpy_helper.from_array(rng.standard_normal(4).astype(t1), "b"),
             _init("m", rng.standard_normal(4)), _init("v", rng.uniform(0.5, 2, 4)),
             _init("c", np.full((4, 1, 1), 1000.3))]
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"], name="bn"),
             helper.make_node("Add", ["y", "c"], ["Y"], name="add")]
    graph = helper.make_graph(nodes, "bn15", [helper.make_tensor_value_info("X", F, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("Y", F, [1, 4, 3, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def narrow_fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fold as bnfold once did it: the Add's constant rounded into the narrow BN bias."""
    wrong = copy.deepcopy(model)
    tensors = {t.name: t for t in wrong.graph.initializer}
    beta = numpy_helper.to_array(tensors["b"])
    c = numpy_helper.to_array(tensors["c"]).reshape(-1)
    tensors["b"].CopyFrom(numpy_helper.from_array((beta.astype(np.float64) + c).astype(beta.dtype), "b"))
    add = wrong.graph.node[2]
    wrong.graph.node.remove(add)
    wrong.graph.node[1].output[0] = "Y"
    del wrong.graph.initializer[[t.name for t in wrong.graph.initializer].index("c")]
    return wrong


@pytest.mark.parametrize("t1", [np.float16, "bfloat16"], ids=["float16-bias", "bfloat16-bias"])
def test_a_constant_rounded_into_a_narrow_bias_fails_and_the_widened_fold_passes(t1):
    import ml_dtypes

    dtype = ml_dtypes.bfloat16 if t1 == "bfloat16" else t1
    model = bn15_add_model(dtype)
    assert bnfold.validate(model, narrow_fold(model)).verdict == "failed"
    assert bnfold.validate(model, bnfold.fold(model).model).verdict == "passed"


def test_weights_rounded_to_float16_in_a_float32_model_fail():
    model = builders.conv_bn_model(c_in=16, c_out=16)
    folded = bnfold.fold(model).model
    rounded = copy.deepcopy(folded)
    for t in rounded.graph.initializer:
        values = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(values.astype(np.float16).astype(np.float32), t.name))
    result = bnfold.validate(model, rounded)
    assert result.verdict == "failed"
    assert result.outputs[0].exact_folded > 2 * result.outputs[0].exact_original


def test_a_rank_change_fails():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3] x) => (float[1, 4] z) {
            w = Constant <value = float[3, 4] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
            c = Constant <value = float[1, 4] {1.5, 2, 0.5, 3}> ()
            p = MatMul (x, w)
            z = Mul (p, c)
        }
    """)
    wrong = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3] x) => (float[4] z) {
            w = Constant <value = float[3, 4] {1.5, 4, 1.5, 12, 7.5, 12, 3.5, 24, 13.5, 20, 5.5, 36}> ()
            z = MatMul (x, w)
        }
    """)
    result = bnfold.validate(model, wrong)
    assert result.verdict == "failed"
    assert "the folded model's output is float32[4], the original's float32[1, 4]" in result.reason
