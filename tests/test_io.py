"""Writing models: the streamed writer produces exactly the model, piece by piece."""

from __future__ import annotations

import io

import onnx
import pytest
from builders import conv_bn_model, two_branch_model

from bnfold.io import _weight_bytes, _write_streamed, write_model


@pytest.mark.parametrize("make", [conv_bn_model, two_branch_model, lambda: conv_bn_model(params="constant")])
def test_streamed_file_parses_to_the_same_model(make):
    model = make()
    buffer = io.BytesIO()
    written = _write_streamed(model, buffer)
    assert written == len(buffer.getvalue())
    again = onnx.ModelProto.FromString(buffer.getvalue())
    assert again.SerializeToString() == model.SerializeToString()  # same message, field for field


def test_write_model_output_loads_and_checks(tmp_path):
    model = conv_bn_model()
    path = tmp_path / "m.onnx"
    assert write_model(model, path) == path.stat().st_size
    onnx.checker.check_model(str(path), full_check=True)
    assert onnx.load(path).SerializeToString() == model.SerializeToString()


def test_weight_bytes_counts_tensor_data():
    model = conv_bn_model(c_in=4, c_out=8, kernel=3)
    expected = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert _weight_bytes(model) == expected
