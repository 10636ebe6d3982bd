"""onnxruntime's errors, as bnfold quotes them: the reason kept, the C++ boilerplate taken out.

onnxruntime prefixes a reason with its status, the C++ file and line and the full signature of the
function that threw (``onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&,
...)``): 240 characters that cut the reason itself off a one-line message.
"""

from __future__ import annotations

import numpy as np
import pytest

import builders
from bnfold.runtime import Backend, CannotRun, error_text


@pytest.mark.parametrize("raw, expected", [
    ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:256 onnxruntime::Model::Model("
     "onnx::ModelProto&&, const onnxruntime::PathString&, const onnxruntime::IOnnxRuntimeOpSchemaRegistryList*, const "
     "onnxruntime::logging::Logger&, const onnxruntime::ModelOptions&) Unsupported model IR version: 15, max supported "
     "IR version: 14\n", "FAIL: Unsupported model IR version: 15, max supported IR version: 14"),
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : /src/element_wise_ops.h:560 void onnxruntime::BroadcastIterator::"
     "Append(ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. 3 by 5",
     "INVALID_ARGUMENT: axis == 1 || axis == largest was false. 3 by 5"),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : /a/b.cc:12 virtual Status f(std::function<void ()>) const Boom",
     "RUNTIME_EXCEPTION: Boom"),
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: X\n index: 1 Got: 1 Expected: 4",
     "INVALID_ARGUMENT: Got invalid dimensions for input: X index: 1 Got: 1 Expected: 4"),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : /a/b.cc:12 unbalanced (x", "RUNTIME_EXCEPTION: /a/b.cc:12 unbalanced (x"),
    ("not onnxruntime's (a.cc:1 f(x) y)", "not onnxruntime's (a.cc:1 f(x) y)"),
])
def test_error_text_keeps_the_reason(raw, expected):
    assert error_text(raw) == expected
    assert error_text(RuntimeError(raw)) == expected


def test_error_text_is_one_bounded_line():
    text = error_text("[ONNXRuntimeError] : 1 : FAIL : " + "word\n" * 200, limit=50)
    assert len(text) == 50 and "\n" not in text and text.endswith("...")


def test_a_run_that_fails_is_quoted_without_the_boilerplate():
    model = builders.conv_bn_model()
    backend = Backend(model)
    assert backend.name == Backend.ONNXRUNTIME
    with pytest.raises(CannotRun) as failed:
        backend.run(backend.first, {model.graph.input[0].name: np.zeros((1, 1, 1, 1), np.float32)}, "original")
    assert str(failed.value).startswith("running the original model failed: INVALID_ARGUMENT: Got invalid dimensions "
                                        "for input: X for the following indices index: 1 Got: 1 Expected: 4")
