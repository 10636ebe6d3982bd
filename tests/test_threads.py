"""The Python API is safe to call from several threads at once.

Every public function keeps its state in its own call: no module-level buffer, list or setting
is shared (a module-level copy buffer let four concurrent ``bnfold.optimize`` calls write each
other's weights: 2 to 12 of 12 outputs corrupt). Each test runs the same calls sequentially and
from 4 threads at once and requires identical results, byte for byte where files are written.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
import builders

THREADS = 4


def fold_and_copy_model(seed: int) -> onnx.ModelProto:
    """Conv → BN (folds) → Conv with a weight nothing touches (copied from the input file as it is)."""
    model = builders.conv_bn_model(c_in=16, c_out=128, seed=seed)
    rng = np.random.default_rng(100 + seed)
    x = model.graph.output[0].name
    for k in range(3):  # weights of 590 KB each: copies that take long enough to overlap
        model.graph.initializer.append(numpy_helper.from_array(
            (rng.standard_normal((128, 128, 3, 3)) * 0.03).astype(np.float32), f"W{k + 2}"))
        model.graph.node.append(helper.make_node("Conv", [x, f"W{k + 2}"], [f"Z{k}"], name=f"conv{k + 2}",
                                                 pads=[1, 1, 1, 1]))
        x = f"Z{k}"
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, 128, 6, 6]))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("threads")
    paths = []
    for seed in range(12):
        path = folder / f"m{seed}.onnx"
        onnx.save(fold_and_copy_model(seed), path)
        paths.append(path)
    return paths


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _concurrently(function, items):
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(function, items))


@pytest.mark.parametrize("validate", [False, True], ids=["no-validation", "validation"])
def test_optimize_from_threads_writes_what_a_sequential_run_writes(sources, tmp_path, validate):
    chosen = sources if not validate else sources[:6]

    def run(tag):
        def one(src: Path):
            dst = tmp_path / f"{src.stem}.{tag}.onnx"
            report = bnfold.optimize(src, dst, validate_output=validate)
            assert report.written and report.ok
            return _digest(dst), None if report.validation is None else [
                (o.name, o.max_abs) for o in report.validation.outputs]
        return one

    sequential = [run("seq")(src) for src in chosen]
    for round_ in range(1 if validate else 3):  # a race shows in most rounds, not in every one
        assert _concurrently(run(f"threads{round_}"), chosen) == sequential
    assert len({digest for digest, _ in sequential}) == len(chosen)  # the models differ: the check can fail


def test_fold_and_validate_from_threads_agree_with_sequential_calls(sources):
    models = [onnx.load(p) for p in sources[:8]]

    def fold_one(model):
        result = bnfold.fold(model)
        return result.model.SerializeToString(), [f.to_dict() for f in result.folds]

    assert _concurrently(fold_one, models) == [fold_one(m) for m in models]

    folded = [bnfold.fold(m).model for m in models[:4]]

    def validate_one(k):
        check = bnfold.validate(models[k], folded[k])
        return check.passed, [(o.name, o.max_abs) for o in check.outputs]

    sequential = [validate_one(k) for k in range(4)]
    assert all(passed for passed, _ in sequential)
    assert _concurrently(validate_one, range(4)) == sequential
