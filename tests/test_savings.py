"""What each fold saves per inference: multiply-adds, activation traffic, parameter bytes.

A removed BatchNormalization costs one multiply-add per element of its output and one read and one
write of it; a removed Mul/Add/Sub/Div one operation per element and the same traffic; an op a
fold adds (a MatMul's new bias Add) counts against it. Shapes come from validation's inputs, else
the declared ones; without a static shape the saving is "unknown", never a guess.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

import bnfold
import builders
from bnfold.cli import cli
from bnfold.savings import measure
from bnfold.stats import model_stats


def test_a_conv_bn_fold_saves_one_multiply_add_and_a_read_and_write_per_output_element(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(c_out=8, spatial=8, kernel=3), src)  # output [1, 8, 6, 6]
    report = bnfold.optimize(src, tmp_path / "out.onnx")
    [saving] = report.savings.folds
    assert saving.shape == [1, 8, 6, 6]
    assert saving.macs == 288 and saving.activation_bytes == 2 * 288 * 4
    assert (report.savings.macs, report.savings.activation_bytes, report.savings.unknown) == (288, 2304, 0)
    assert report.savings.shapes == {"X": [1, 4, 8, 8]}
    doc = report.to_dict()
    assert doc["savings"]["folds"][0] == {"macs": 288, "activation_bytes": 2304, "shape": [1, 8, 6, 6]}
    # parameter bytes: the BN's four [8] float32 vectors gone; the conv's bias is rewritten in place
    assert doc["before"]["parameter_bytes"] - doc["after"]["parameter_bytes"] == 4 * 8 * 4


def test_float16_traffic_counts_two_bytes_an_element(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(dtype=np.float16), src)
    report = bnfold.optimize(src, tmp_path / "out.onnx")
    [saving] = report.savings.folds
    assert saving.activation_bytes == 2 * saving.macs * 2


def test_a_fold_that_adds_a_bias_add_saves_no_operation(tmp_path):
    """MatMul without bias → BN: the BN goes, a bias Add comes: the same work per element."""
    from linear_builders import matmul_bn_model

    model = matmul_bn_model(bias=None)
    result = bnfold.fold(model)
    savings = measure(model, result.model, result.folds)
    [saving] = savings.folds
    assert saving.macs == 0 and saving.activation_bytes == 0 and saving.shape is not None


def test_without_static_shapes_the_saving_is_unknown(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(symbolic_batch=True), src)
    unvalidated = bnfold.optimize(src, tmp_path / "a.onnx", validate_output=False)
    assert unvalidated.savings.unknown == 1 and unvalidated.savings.folds[0].macs is None
    given = bnfold.optimize(src, tmp_path / "b.onnx", validate_output=False, input_shapes={"X": [2, 4, 8, 8]})
    assert given.savings.unknown == 0 and given.savings.folds[0].macs == 2 * 288
    validated = bnfold.optimize(src, tmp_path / "c.onnx")  # validation's shapes: batch 1
    assert validated.savings.folds[0].macs == 288


def test_a_fold_in_a_subgraph_is_unknown():
    from test_conv_bn import with_if_running_conv_bn

    model = with_if_running_conv_bn(builders.conv_bn_model())
    result = bnfold.fold(model)
    savings = measure(model, result.model, result.folds, {"X": [1, 4, 8, 8], "cond": []})
    by_graph = {f.graph: s for f, s in zip(result.folds, savings.folds)}
    assert by_graph["main"].macs == 288
    assert by_graph["if/then_branch"].macs is None and savings.unknown == 2


def test_an_affine_chain_saves_each_op(tmp_path):
    from affine_builders import Step, linear_chain_model

    model = linear_chain_model("Conv", [Step("Mul", (1, 8, 1, 1)), Step("Add", (8, 1, 1))])
    result = bnfold.fold(model)
    savings = measure(model, result.model, result.folds)
    # the intermediate Mul output exists only before folding: it is measured there
    assert [(s.macs, s.shape) for s in savings.folds] == [(288, [1, 8, 6, 6])] * 2
    assert (savings.macs, savings.unknown) == (576, 0)


def test_the_report_says_what_the_run_bought(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)
    text = CliRunner().invoke(cli, ["optimize", str(src)], prog_name="bnfold").stdout
    assert "Saved per inference (X=1x4x8x8): 288 multiply-adds and 2.2 KiB of activation traffic; parameters" in \
        " ".join(text.split())
    doc = json.loads(CliRunner().invoke(cli, ["optimize", str(src), "-o", str(tmp_path / "j.onnx"), "--json"],
                                        prog_name="bnfold").stdout)
    assert doc["savings"]["macs"] == 288 and doc["savings"]["unknown"] == 0


def test_parameter_bytes_count_every_tensor():
    model = builders.conv_bn_model()
    stats = model_stats(model)
    expected = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert stats.parameter_bytes == expected
