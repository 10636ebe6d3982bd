"""Random valid models (tests/random_models.py): every fold keeps every invariant.

A fixed list of seeds, one test each, named by the seed; a failure prints the model's features
and every problem found. Reproduce one with ``python tests/fuzz_models.py --seeds N``; run
thousands with ``python tests/fuzz_models.py --count 5000 --seed 123 -j 2``.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from random_models import COVERAGE, check_generated, load_as_onnxruntime, random_model, save

#: The seeds CI runs: about 20 s on the 2-core development machine (each model 10-20 ms: fold,
#: full check, onnxruntime sessions on 3 input sets, refold, and for a third of them optimize from files).
#: Plus seeds long runs found that reach a failure no seed below 1000 reached (against the engine at
#: 173c592, 9cbbb54 and 0b4dec6): a 3-D MatMul output whose rank changed (1011), mixed float types
#: after a fold (1103, 2503), Conv attribute references (1565, 1704), Scan bodies (1620, 2348),
#: a no-length tensor before another in a side file (2408), BN shapes (2623, 4436), Gemm beta as an
#: attribute reference without C (2929, 5746). A generator change remaps every seed: then these are
#: just more seeds, and test_ci_seeds_reach_every_feature still holds the coverage.
REGRESSION_SEEDS = (1011, 1103, 1565, 1620, 1704, 2348, 2408, 2503, 2623, 2929, 4436, 5746)
CI_SEEDS = (*range(0, 1000), *REGRESSION_SEEDS)


@pytest.mark.parametrize("seed", CI_SEEDS, ids=lambda s: f"seed{s}")
def test_random_model_keeps_every_invariant(seed, tmp_path):
    gen = random_model(seed)
    outcome = check_generated(gen, tmp_path)
    assert not outcome.problems, f"{gen.describe()}\n\n" + "\n".join(outcome.problems)


def test_ci_seeds_reach_every_feature():
    """The fixed seeds keep reaching every failure class the generator was written for."""
    descriptions = [random_model(seed).describe() for seed in CI_SEEDS]
    missing = [name for name, pattern in COVERAGE.items() if not any(re.search(pattern, d) for d in descriptions)]
    assert not missing, f"no CI seed has: {missing}"


def test_same_seed_same_model():
    for seed in (3, 77, 512):
        a, b = random_model(seed), random_model(seed)
        assert a.model.SerializeToString() == b.model.SerializeToString()
        assert a.describe() == b.describe()


def test_saved_external_data_reads_back(tmp_path):
    """save() lays out side files (junk, gaps, offsets and lengths left out) that read back, the way
    onnxruntime reads them, to the model's own tensors."""
    seeds = [s for s in CI_SEEDS if random_model(s).external][:20]
    assert seeds
    for seed in seeds:
        gen = random_model(seed)
        path = save(gen, tmp_path / f"seed{seed}")
        onnx.checker.check_model(str(path), full_check=gen.full_check)
        loaded = {t.name: numpy_helper.to_array(t) for t in load_as_onnxruntime(path).graph.initializer}
        inline = {t.name: numpy_helper.to_array(t) for t in gen.model.graph.initializer}
        assert loaded.keys() == inline.keys()
        for name, value in inline.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=f"seed {seed}: {name}")
