"""bench/: the chain generator makes what the benchmark claims, and the driver starts and renders.

Cheap by design: no torch, no peers (CI has neither); the benchmark itself is run by hand.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from conftest import run_ort

import bnfold

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chain_has_n_conv_bn_pairs_and_folds_to_n_convs():
    model = _load("make_chains").make_chain(7, seed=3)
    onnx.checker.check_model(model, full_check=True)
    assert Counter(n.op_type for n in model.graph.node) == {"Conv": 7, "BatchNormalization": 7}
    assert model.opset_import[0].version == 17
    result = bnfold.fold(model)
    assert Counter(n.op_type for n in result.model.graph.node) == {"Conv": 7}
    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    before, after = run_ort(model, {"x": x})["y"], run_ort(result.model, {"x": x})["y"]
    assert np.std(before) > 0.1   # the chain neither vanishes nor saturates
    np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-4)


def test_chain_is_seeded():
    make_chain = _load("make_chains").make_chain
    assert make_chain(3, seed=1).SerializeToString() == make_chain(3, seed=1).SerializeToString()
    assert make_chain(3, seed=1).SerializeToString() != make_chain(3, seed=2).SerializeToString()


def test_compare_help_runs():
    proc = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--render-only" in proc.stdout and "--only" in proc.stdout


def test_render_states_failures_and_targets():
    render = _load("render").render
    ok = {"status": "ok", "time": 1.0, "times": [1.0], "peak_bytes": 2**27, "bn_left": 0, "nodes": 5,
          "errors": {"max_abs": 1e-6, "max_rel": 1e-5, "passed": True}}
    data = {
        "schema": 1,
        "settings": {"recipes": {"bnfold": "b", "onnxslim": "s", "loadsave": "l"}, "chains": [1000]},
        "models": {"m": {"group": "torchvision", "bn": 3, "nodes": 8, "weight_bytes": 2**26}},
        "results": {"m": {"bnfold": {**ok, "time": 2.0},
                          "onnxslim": {"status": "failed", "message": "RecursionError: maximum recursion depth"},
                          "loadsave": {**ok, "bn_left": 3, "nodes": 8}}},
        "latency": {"m": {"unavailable": "bnfold bench not available"}},
    }
    text = render(data)
    assert "RecursionError: maximum recursion depth" in text        # the failure is written down
    assert "2.00× (2.00 s vs 1.00 s)" in text                       # 1.5× load+save target missed
    assert "bnfold bench not available" in text


def test_a_render_keeps_the_hand_written_sections(tmp_path):
    render = _load("render")
    old = f"## Results\n\nold numbers\n\n{render.HAND_WRITTEN}\n\n## Start-up\n\nmeasured by hand\n"
    assert render.with_hand_written("## Results\n\nnew numbers\n", old) == (
        f"## Results\n\nnew numbers\n\n{render.HAND_WRITTEN}\n\n## Start-up\n\nmeasured by hand\n")
    assert render.with_hand_written("## Results\n", None) == "## Results\n"
    assert render.with_hand_written("## Results\n", "## Results\n\nno marker\n") == "## Results\n"
    docs = (BENCH.parent / "docs" / "BENCHMARKS.md").read_text()
    tail = docs[docs.index(render.HAND_WRITTEN):]  # the file carries the marker before its hand-written sections
    assert "## Start-up" in tail and "## Quantized weights (QDQ)" in tail and "## Results per model" not in tail
