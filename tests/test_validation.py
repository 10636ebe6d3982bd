"""``bnfold.validate``: runs original and folded model in a child process and compares outputs.

What a passing result means: both models ran and every output is within tolerance. Nothing may be
reported as passing that was not measured, and a runtime crash must become a clear error.
"""

from __future__ import annotations

import copy
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import bnfold
import builders
from bnfold.runtime import make_inputs
from bnfold import tolerances
from bnfold.tolerances import CLEAR_FAIL_EPS, DEFAULT_TOLERANCES, FAST_PASS_EPS


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def fold_pair(**kwargs) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A ``builders.conv_bn_model(**kwargs)`` and its fold (which must have folded the BN)."""
    original = builders.conv_bn_model(**kwargs)
    result = bnfold.fold(original)
    assert [f.node for f in result.folds] == ["bn"]
    return original, result.model


def perturbed(model: onnx.ModelProto, name: str = "W", delta: float = 0.05) -> onnx.ModelProto:
    """A copy of ``model`` with one element of initializer ``name`` moved by ``delta``."""
    model = copy.deepcopy(model)
    [tensor] = [t for t in model.graph.initializer if t.name == name]
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += delta
    tensor.CopyFrom(numpy_helper.from_array(array, name))
    return model


def folded_weight_name(model: onnx.ModelProto) -> str:
    [conv] = [n for n in model.graph.node if n.op_type == "Conv"]
    return conv.input[1]


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)



def bn_in_local_function_model() -> onnx.ModelProto:
    """Conv -> local function 'BNFn' whose body is an opset-9 BN with empty optional outputs.

    onnxruntime inlines the function and segfaults on that BN exactly as on a top-level one.
    """
    base = builders.conv_bn_model(opset=9)
    [bn] = [n for n in base.graph.node if n.op_type == "BatchNormalization"]
    body = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "", "", "", ""], epsilon=1e-5)
    function = helper.make_function("local", "BNFn", ["x", "s", "b", "m", "v"], ["y"], [body],
                                    [helper.make_opsetid("", 9)])
    call = helper.make_node("BNFn", list(bn.input), list(bn.output), name="bn", domain="local")
    nodes = [call if n is bn else n for n in base.graph.node]
    graph = helper.make_graph(nodes, "g", base.graph.input, base.graph.output, base.graph.initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9), helper.make_opsetid("local", 1)],
                              ir_version=8, functions=[function])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def pair():
    return fold_pair()


@pytest.fixture(scope="module")
def correct(pair):
    """The validation of a correct fold with every default (computed once: each run spawns a process)."""
    return bnfold.validate(*pair)


# ---------------------------------------------------------------------------------------------
# correct and wrong folds
# ---------------------------------------------------------------------------------------------


def test_correct_fold_passes_with_small_nonzero_error(correct):
    assert correct.passed and correct.error is None
    assert correct.backend.startswith("onnxruntime")
    assert correct.inputs == {"X": [1, 4, 8, 8]} and correct.seed == 0
    [out] = correct.outputs
    assert (out.name, out.dtype, out.shape, out.passed) == ("Y", "float32", [1, 8, 6, 6], True)
    assert (out.verdict, out.stage) == ("passed", "fast pass")
    assert 0 < out.needed <= FAST_PASS_EPS  # folding moved the rounding, by a few eps of the output's scale
    assert 0 < out.max_rel and out.scale > 1
    assert [s["label"] for s in correct.sets] == ["normal", "image", "wide"]


def test_reported_errors_are_the_real_ones(pair, correct):
    """max_abs is the measured difference of the two models on the inputs the worker generated."""
    original, folded = pair
    feeds = make_inputs(original, {}, seed=0)
    assert {k: list(v.shape) for k, v in feeds.items()} == correct.inputs
    [ref], [got] = ort_outputs(original, feeds), ort_outputs(folded, feeds)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert correct.outputs[0].max_abs == pytest.approx(diff.max(), rel=1e-6)


def test_validate_accepts_paths(pair, correct, tmp_path):
    paths = []
    for name, model in zip(("original.onnx", "folded.onnx"), pair):
        onnx.save(model, tmp_path / name)
        paths.append(tmp_path / name)
    assert bnfold.validate(str(paths[0]), paths[1]) == correct


def test_wrong_fold_fails(pair):
    original, folded = pair
    wrong = perturbed(folded, folded_weight_name(folded))

    result = bnfold.validate(original, wrong)

    assert result.verdict == "failed"  # it ran, and it measured a difference
    assert result.reason.startswith("output 'Y': ") and "from the exact answer where the original is" in result.reason
    [out] = result.outputs
    assert out.passed is False and out.verdict == "failed" and out.stage == "exact reference"
    assert out.needed > CLEAR_FAIL_EPS and out.exact_folded > 1000 * out.exact_original


def test_wrong_output_shape_fails(pair):
    original, _ = pair
    other = bnfold.fold(builders.conv_bn_model(c_out=4)).model  # same output name, 4 channels instead of 8

    result = bnfold.validate(original, other)

    assert result.verdict == "failed"
    [out] = result.outputs
    assert out.passed is False and out.max_abs == float("inf")
    assert out.why == "the folded model's output is float32[1, 4, 6, 6], the original's float32[1, 8, 6, 6]"


def test_missing_output_fails():
    """A folded model that lost a graph output cannot pass: that output was never compared."""
    original = builders.conv_bn_model(conv_out_is_graph_output=True)
    assert [o.name for o in original.graph.output] == ["Y", "conv_out"]
    truncated = copy.deepcopy(original)
    del truncated.graph.output[1]

    result = bnfold.validate(original, truncated)

    assert result.passed is False


# ---------------------------------------------------------------------------------------------
# input shapes
# ---------------------------------------------------------------------------------------------


def test_symbolic_dims_default_to_one_and_input_shapes_override():
    original, folded = fold_pair(symbolic_batch=True)

    default = bnfold.validate(original, folded)
    given = bnfold.validate(original, folded, input_shapes={"X": [3, 4, 8, 8]})

    assert default.passed and default.inputs == {"X": [1, 4, 8, 8]}
    assert default.outputs[0].shape == [1, 8, 6, 6]
    assert given.passed and given.inputs == {"X": [3, 4, 8, 8]}
    assert given.outputs[0].shape == [3, 8, 6, 6]


def test_input_shapes_naming_no_input_is_a_usage_error(pair):
    with pytest.raises(bnfold.BnfoldError, match="--input-shape nope=1x4x8x8: the model has no input 'nope'"):
        bnfold.validate(*pair, input_shapes={"nope": [1, 4, 8, 8]})


def test_symbolic_spatial_dims_are_searched_and_input_shapes_win():
    """At 1x1 the 3x3 Conv cannot run; the search takes the first size where every output varies."""
    original = builders.symbolic_spatial_model()
    folded = bnfold.fold(original).model

    searched = bnfold.validate(original, folded)
    given = bnfold.validate(original, folded, input_shapes={"X": [1, 4, 8, 8]})

    assert searched.passed and searched.inputs == {"X": [1, 4, 32, 32]}
    assert "set to 32: the first size tried where every output varies" in searched.shapes_chosen
    assert given.passed and given.inputs == {"X": [1, 4, 8, 8]} and "given (--input-shape)" in given.shapes_chosen


def test_zero_sized_input_is_not_a_pass():
    """An empty batch compares zero elements: nothing was measured, so it must not pass."""
    original, folded = fold_pair(symbolic_batch=True)

    result = bnfold.validate(original, folded, input_shapes={"X": [0, 4, 8, 8]})

    assert result.passed is False


# ---------------------------------------------------------------------------------------------
# backends, crashes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, model_kwargs", [
    ("float64", {"dtype": np.float64}),
    ("bfloat16", {"dtype": "bfloat16", "opset": 22, "ir_version": 10}),
])
def test_no_onnxruntime_kernel_falls_back_to_reference(dtype, model_kwargs):
    original, folded = fold_pair(**model_kwargs)

    good = bnfold.validate(original, folded)
    bad = bnfold.validate(original, perturbed(folded, folded_weight_name(folded), delta=0.5))

    for result in (good, bad):
        assert "onnx.reference" in result.backend
        assert result.outputs[0].dtype == dtype
    assert good.passed and good.error is None
    assert good.outputs[0].stage == "fast pass"  # bfloat16: within 2 of its own eps
    assert bad.verdict == "failed" and not bad.outputs[0].passed
    assert bad.outputs[0].stage == "exact reference"
    assert bad.outputs[0].exact_folded > 1e-3 and bad.outputs[0].exact_folded > 50 * bad.outputs[0].exact_original


def test_opset9_bn_with_empty_outputs_does_not_crash():
    """onnxruntime segfaults on this original model in-process; the worker strips the empty outputs."""
    original, folded = fold_pair(opset=9, bn_extra_outputs="empty")
    [bn] = [n for n in original.graph.node if n.op_type == "BatchNormalization"]
    assert list(bn.output) == ["Y", "", "", "", ""]

    result = bnfold.validate(original, folded)

    assert result.passed and result.error is None
    assert result.backend.startswith("onnxruntime") and 0 < result.outputs[0].max_abs


def test_bn_with_empty_outputs_inside_a_local_function_does_not_crash():
    model = bn_in_local_function_model()

    result = bnfold.validate(model, model)

    assert result.error is None and result.passed


def test_killed_worker_is_reported_as_a_crash(pair, tmp_path, monkeypatch):
    """If the validation process dies from a signal (segfault, OOM killer) the error says so."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -KILL $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr("sys.executable", str(fake))

    result = bnfold.validate(*pair)

    assert result.passed is False and result.outputs == []
    assert "crashed" in result.error and "SIGKILL" in result.error


def test_timeout_is_an_error_not_a_pass(pair):
    result = bnfold.validate(*pair, timeout=0.001)
    assert result.verdict == "unproven" and "did not finish" in result.error


# ---------------------------------------------------------------------------------------------
# tolerances and seeds
# ---------------------------------------------------------------------------------------------


def test_the_criterion_comes_from_bnfold_tolerances(correct):
    """Without --atol/--rtol the scale-relative criterion decides; elementwise defaults stay for overrides."""
    assert (DEFAULT_TOLERANCES["float32"].atol, DEFAULT_TOLERANCES["float32"].rtol) == (1e-4, 1e-3)
    out = correct.outputs[0]
    assert (out.atol, out.rtol) == (None, None)
    assert tolerances.fast_pass(out.max_abs, out.scale, np.float32)
    assert out.max_abs == pytest.approx(out.needed * tolerances.epsilon(np.float32) * out.scale)


@pytest.mark.parametrize("atol, rtol, passed", [
    (0.0, 0.0, False),  # the few-ulp error of a correct fold is no longer tolerated
    (None, 0.0, True),  # rtol alone overridden: the default atol still covers the error
    (1e-3, None, True),
])
def test_tolerance_overrides_apply(pair, correct, atol, rtol, passed):
    result = bnfold.validate(*pair, atol=atol, rtol=rtol)

    [out] = result.outputs
    assert (out.atol, out.rtol) == (1e-4 if atol is None else atol, 1e-3 if rtol is None else rtol)
    assert out.stage == "elementwise"
    assert out.max_abs == correct.outputs[0].max_abs  # same seed: same inputs, same error
    assert out.passed is passed and result.passed is passed


def test_large_override_lets_a_wrong_fold_pass(pair):
    """Overrides are honoured even when they make a wrong fold pass (the user asked for it)."""
    original, folded = pair
    result = bnfold.validate(original, perturbed(folded, folded_weight_name(folded)), atol=10.0)

    assert result.passed and result.outputs[0].atol == 10.0 and result.outputs[0].max_abs > 1e-3


def test_same_seed_same_numbers_other_seed_other_inputs(pair, correct):
    again = bnfold.validate(*pair, seed=0)
    other = bnfold.validate(*pair, seed=1)

    assert again.to_dict() == correct.to_dict()
    assert other.seed == 1 and other.passed
    assert other.outputs[0].max_abs != correct.outputs[0].max_abs


def test_max_ref_reports_the_size_of_the_original_output():
    """Outputs that are zero everywhere prove nothing: the result says how big they were and fails."""
    model = builders.conv_bn_model()
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded)
    (out,) = result.outputs
    assert out.max_ref > 0.1 and not out.uninformative
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    for tensor in zeroed.graph.initializer:
        if tensor.name in ("bn_scale", "bn_bias"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros(tensor.dims, np.float32), tensor.name))
    result = bnfold.validate(zeroed, bnfold.fold(zeroed).model)
    assert not result.passed and result.outputs[0].max_ref == 0.0 and result.outputs[0].uninformative
    assert result.outputs[0].passed  # within tolerance, and that is the point: so is any wrong fold
    assert result.error.startswith("nothing was proven: every output ('Y') is zero or not finite everywhere")


# -- honest reports (issue 14, class 11) -----------------------------------------------------------------


def with_extra_output(model: onnx.ModelProto, nodes: list[onnx.NodeProto], name: str, dims) -> onnx.ModelProto:
    """``model`` plus ``nodes`` computing the new graph output ``name`` (float, ``dims``)."""
    model = copy.deepcopy(model)
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    return model


def nan_output_model() -> onnx.ModelProto:
    """conv_bn_model, its output Y replaced by NaN = sqrt(-(|Y| + 1)) everywhere."""
    model = builders.conv_bn_model()
    y = model.graph.output[0]
    dims = [d.dim_value for d in y.type.tensor_type.shape.dim]
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    model.graph.node.extend([helper.make_node("Abs", [y.name], ["a"]), helper.make_node("Add", ["a", "one"], ["a1"]),
                             helper.make_node("Neg", ["a1"], ["n"]), helper.make_node("Sqrt", ["n"], ["nan"])])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("nan", onnx.TensorProto.FLOAT, dims))
    return model


def test_an_output_nan_everywhere_proves_nothing_even_against_a_wrong_fold():
    model = nan_output_model()
    folded = bnfold.fold(model).model
    wrong = perturbed(folded, folded_weight_name(folded), delta=100.0)  # 100x off: NaN all the same
    for candidate in (folded, wrong):
        result = bnfold.validate(model, candidate)
        (out,) = result.outputs
        assert out.uninformative and np.isnan(out.max_abs) and np.isnan(out.max_ref)
        assert not result.passed
        assert result.error.startswith("nothing was proven: every output ('nan') is zero or not finite")


def test_nan_where_the_original_is_finite_is_a_difference():
    model = builders.conv_bn_model()
    folded = bnfold.fold(model).model
    y = folded.graph.output[0].name
    broken = copy.deepcopy(folded)  # the folded model's output made NaN where it was negative
    for node in broken.graph.node:
        node.output[:] = [f"{o}_pre" if o == y else o for o in node.output]
    broken.graph.node.extend([helper.make_node("Sqrt", [f"{y}_pre"], ["s"]), helper.make_node("Mul", ["s", "s"], [y])])
    result = bnfold.validate(model, broken)
    assert result.verdict == "failed"
    assert result.outputs[0].max_abs == float("inf")


def test_an_informative_output_beside_a_nan_one_decides():
    model = with_extra_output(builders.conv_bn_model(), [
        helper.make_node("Abs", ["Y"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Sqrt", ["n"], ["half_nan"])], "half_nan", [1, 8, 6, 6])
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded)
    assert result.passed, result.error
    assert [o.uninformative for o in result.outputs] == [False, True]  # sqrt(-|Y|): NaN, or 0 where Y = 0
    wrong = perturbed(folded, folded_weight_name(folded))
    assert not bnfold.validate(model, wrong).passed


def random_op_model(seeded: bool) -> onnx.ModelProto:
    """conv_bn_model with noise from RandomNormalLike added to its output (unseeded unless ``seeded``)."""
    model = builders.conv_bn_model()
    y = model.graph.output[0].name
    attrs = {"seed": 3.0} if seeded else {}
    for node in model.graph.node:
        node.output[:] = [f"{o}_clean" if o == y else o for o in node.output]
    model.graph.node.extend([helper.make_node("RandomNormalLike", [f"{y}_clean"], ["noise"], scale=0.01, **attrs),
                             helper.make_node("Add", [f"{y}_clean", "noise"], [y])])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("seeded", [False, True], ids=["unseeded", "seeded"])
def test_random_ops_draw_the_same_numbers_in_both_models(seeded):
    """The runtime's generator is seeded alike for every session: an exact fold of a model with
    unseeded random ops passes (it was refused as "outputs differ"), and a wrong one still fails."""
    model = random_op_model(seeded)
    folded = bnfold.fold(model).model
    assert [n.op_type for n in folded.graph.node] == ["Conv", "RandomNormalLike", "Add"]
    result = bnfold.validate(model, folded)
    assert result.passed, (result.error, result.outputs)
    assert result.outputs[0].max_abs < 1e-4
    assert not bnfold.validate(model, perturbed(folded, folded_weight_name(folded))).passed


def test_a_model_that_does_not_reproduce_itself_is_reported_as_such(monkeypatch):
    """A difference counts against the fold only when a second run of the original reproduces the
    first; otherwise the report says the model is not deterministic, not that outputs differ."""
    from bnfold.compare import errors

    ref, got = np.ones(3, np.float32), np.full(3, 1.1, np.float32)
    out = {"name": "Y", "dtype": "float32", "shape": [3], "folded_dtype": "float32", "folded_shape": [3],
           "sets": [{"set": "normal", **errors(ref, got).to_dict()}]}
    assert bnfold.validation._judge({"outputs": [out]}, seed=0).verdict == "failed"
    judged = bnfold.validation._judge({"outputs": [{**out, "nondeterministic": True, "self_diff": 0.0045}]}, seed=0)
    assert judged.verdict == "unproven" and judged.outputs[0].verdict == "nondeterministic"
    assert judged.error == ("the original model is not deterministic: two runs of it differ (output 'Y' by 0.0045), "
                            "so its outputs cannot be compared with the folded model's")


def test_json_of_a_validation_is_strict(tmp_path):
    """NaN and infinite errors are strings: a strict parser (no NaN/Infinity tokens) reads the document."""
    import json

    from click.testing import CliRunner

    from bnfold.cli import cli

    model = with_extra_output(builders.conv_bn_model(), [
        helper.make_node("Abs", ["Y"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Sqrt", ["n"], ["half_nan"]), helper.make_node("IsNaN", ["half_nan"], ["mask"])],
        "half_nan", [1, 8, 6, 6])
    model.graph.output.append(helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, [1, 8, 6, 6]))
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    result = CliRunner().invoke(cli, ["optimize", str(src), "--json"], prog_name="bnfold")
    assert result.exit_code == 0, result.stderr

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    doc = json.loads(result.stdout, parse_constant=refuse)
    outputs = {o["name"]: o for o in doc["validation"]["outputs"]}
    assert set(outputs) == {"Y", "half_nan", "mask"} and all(o["passed"] for o in outputs.values())


# -- what the worker runs: the same computation in a form every runtime takes -------------------------------


def test_repeated_node_names_do_not_stop_validation():
    """ONNX allows two nodes of one name, onnxruntime refuses them: the worker's copies get unique ones."""
    model = builders.conv_bn_model(bn_count=2)
    for node in model.graph.node:
        node.name = "same"
    onnx.checker.check_model(model, full_check=True)
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded)
    assert result.passed, result.error
    assert result.backend.startswith("onnxruntime")


def test_a_float64_model_with_float32_bn_parameters_validates_exactly():
    """onnx.reference adds its float32 epsilon to a float32 variance even for float64 data (1e-7 off,
    where float64's tolerance is 1e-9): the worker's reference BN computes exactly."""
    model = builders.conv_bn_model(dtype=np.float64, opset=15)
    for tensor in model.graph.initializer:
        if tensor.name.startswith("bn_"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    onnx.checker.check_model(model, full_check=True)
    folded = bnfold.fold(model).model
    result = bnfold.validate(model, folded)
    assert result.backend.startswith("onnx.reference")
    assert result.passed, (result.error, result.outputs)
    assert result.outputs[0].max_abs < 1e-12
    assert not bnfold.validate(model, perturbed(folded, folded_weight_name(folded), delta=1e-6)).passed


def test_the_reference_bn_applies_inside_local_functions():
    """onnx.reference builds a function's evaluator without the worker's operators; ours brings them.
    At opset 13 onnx's own BN would use batch statistics there and fail a correct fold."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13, "local" : 1]>
        g (double[1, 2, 4] X) => (double[1, 2, 4] Y) {
            Y = local.conv_bn (X)
        }
        <domain: "local", opset_import: ["" : 13]>
        conv_bn (x) => (y) {
            w = Constant <value = double[2, 2, 1] {0.5, -1.0, 2.0, 0.25}> ()
            s = Constant <value = double[2] {1.5, 0.5}> ()
            b = Constant <value = double[2] {0.1, -0.2}> ()
            m = Constant <value = double[2] {0.3, 0.7}> ()
            v = Constant <value = double[2] {1.2, 0.8}> ()
            c = Conv (x, w)
            y = BatchNormalization (c, s, b, m, v)
        }
    """)
    onnx.checker.check_model(model, full_check=True)
    folded = bnfold.fold(model).model
    assert "BatchNormalization" not in [n.op_type for n in folded.functions[0].node]
    result = bnfold.validate(model, folded)
    assert result.backend.startswith("onnx.reference")
    assert result.passed, (result.error, result.outputs)
