"""The ``bnfold optimize`` command: outputs, reports (table and --json), exit codes, atomic writes.

Most runs go through click's CliRunner (in-process, but validation still spawns its worker);
one end-to-end run uses the installed ``bnfold`` console script in a real subprocess.
Bad input files and bad options are covered in test_bad_input.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

import bnfold
import builders
from bnfold.cli import cli

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SAMPLES = ["resnet_stack.onnx", "depthwise_block.onnx", "conv1d_bn.onnx"]
JSON_KEYS = {"input", "output", "written", "ok", "verdict", "unproven_accepted", "folds", "refusals", "validation", "before", "after", "seconds", "savings",
             "bench"}
VALIDATION_KEYS = {"verdict", "passed", "outputs", "backend", "inputs", "sets", "shapes_chosen", "reference", "seed",
                   "reason", "error"}
OUTPUT_KEYS = {"name", "dtype", "shape", "verdict", "stage", "max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel",
               "scale", "needed", "worst_set", "why", "exact_original", "exact_folded", "atol", "rtol", "passed",
               "informative", "nondeterministic", "self_diff"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def run(*args) -> Result:
    """``bnfold *args`` through CliRunner; a wide terminal so table rows are never wrapped."""
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "250"})


def bnfold_script() -> str:
    """The installed console script (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("bnfold")
    found = str(beside) if beside.exists() else shutil.which("bnfold")
    assert found, "the bnfold console script is not installed"
    return found


def copy_sample(name: str, folder: Path) -> Path:
    src = MODELS_DIR / name
    assert src.is_file(), f"sample model {src} is missing (run models/make_models.py)"
    return Path(shutil.copy(src, folder / name))


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def folder_state(folder: Path) -> dict[str, str]:
    """Every entry of ``folder`` (hidden temp files included) with the sha256 of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in folder.iterdir()
    }


def bn_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "BatchNormalization"]


def parameter_count(model: onnx.ModelProto) -> int:
    """Initializer elements plus Constant-node tensor elements (the report's definition)."""
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors)


def parameter_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the same tensors' values."""
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(numpy_helper.to_array(t).nbytes for t in tensors)


def table_row(text: str, first_cell: str) -> list[str]:
    """Cells of the (single) table body row whose first cell is ``first_cell``."""
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line]
    matches = [r for r in rows if r[0] == first_cell]
    assert len(matches) == 1, f"expected one row starting with {first_cell!r} in:\n{text}"
    return matches[0]


def human_size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def assert_one_error_line(result, *fragments: str) -> str:
    """stderr is exactly one ``bnfold: error:`` line containing every fragment; no traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith("bnfold: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]



def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# sample models: every BN folds, validation passes, the JSON report is accurate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_model_json_report(sample, tmp_path):
    src = copy_sample(sample, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / "folded.onnx"
    original = onnx.load(src)
    bns = {n.name: n for n in bn_nodes(original)}
    producer = {o: n for n in original.graph.node for o in n.output}
    assert bns, f"{sample} has no BatchNormalization to fold"

    result = run("optimize", src, "-o", dst, "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert set(doc) == JSON_KEYS
    assert (doc["input"], doc["output"], doc["written"], doc["ok"]) == (str(src), str(dst), True, True)
    assert sorted(f["node"] for f in doc["folds"]) == sorted(bns)
    for f in doc["folds"]:
        conv = producer[bns[f["node"]].input[0]]
        assert (f["op"], f["into"], f["into_op"]) == ("BatchNormalization", conv.name, "Conv")
    assert doc["refusals"] == []

    assert sorted(os.listdir(out_dir)) == ["folded.onnx"]  # no temp file left beside it
    folded = onnx.load(dst)
    onnx.checker.check_model(folded, full_check=True)
    assert bn_nodes(folded) == []
    assert doc["before"] == {"nodes": len(original.graph.node), "parameters": parameter_count(original),
                             "parameter_bytes": parameter_bytes(original), "file_bytes": src.stat().st_size}
    assert doc["after"] == {"nodes": len(folded.graph.node), "parameters": parameter_count(folded),
                            "parameter_bytes": parameter_bytes(folded), "file_bytes": dst.stat().st_size}
    assert doc["after"]["nodes"] == doc["before"]["nodes"] - len(bns)

    v = doc["validation"]
    assert set(v) == VALIDATION_KEYS
    assert v["passed"] is True and v["error"] is None and v["seed"] == 0
    assert v["backend"].startswith("onnxruntime")
    declared = original.graph.input[0].type.tensor_type.shape.dim
    assert v["inputs"] == {"input": [1] + [d.dim_value for d in declared[1:]]}  # symbolic N -> 1
    assert [o["name"] for o in v["outputs"]] == [o.name for o in original.graph.output]
    for o in v["outputs"]:
        assert set(o) == OUTPUT_KEYS
        assert (o["dtype"], o["atol"], o["rtol"], o["passed"], o["verdict"]) == ("float32", None, None, True, "passed")
        assert o["stage"] in ("fast pass", "exact reference") and o["needed"] < 1000
        assert 0 <= o["max_abs"] <= 1e-4
    assert {"load", "fold", "save", "validate"} <= set(doc["seconds"])
    assert src.read_bytes() == (MODELS_DIR / sample).read_bytes()


def test_table_lists_folds_refusals_validation_and_sizes(tmp_path):
    src = save(builders.fold_and_refusal_model(), tmp_path / "m.onnx")
    dst = tmp_path / "m.out.onnx"

    result = run("optimize", src, "-o", dst)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    text = result.stdout
    assert f"{src} → {dst}" in text
    assert table_row(text, "BatchNormalization 'bn'")[1:3] == ["Conv 'conv'", "conv-bn"]
    refusal = table_row(text, "BatchNormalization 'bn_tail'")
    assert refusal[1] == "conv-bn" and "Relu 'relu'" in refusal[2] and "not a linear op" in refusal[2]
    assert "Validation passed" in text and "X=1x4x8x8" in text

    name, dtype, scale, max_abs, p99_abs, needed, worst, verdict = table_row(text, "Z")
    assert (dtype, verdict) == ("float32", "passed (fast pass)")
    assert 0 < float(max_abs) <= 1e-4 and float(p99_abs) <= float(max_abs) and float(scale) > 0.1
    assert float(needed) <= 256 and worst in ("normal", "image", "wide")

    original, folded = onnx.load(src), onnx.load(dst)
    assert [n.name for n in bn_nodes(folded)] == ["bn_tail"]
    assert table_row(text, "nodes")[1:3] == [str(len(original.graph.node)), str(len(folded.graph.node))]
    assert table_row(text, "parameters")[1:3] == [f"{parameter_count(original):,}", f"{parameter_count(folded):,}"]
    assert table_row(text, "file size")[1:3] == [human_size(src.stat().st_size), human_size(dst.stat().st_size)]


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_no_validate_writes_without_validation(tmp_path, as_json):
    src = copy_sample("conv1d_bn.onnx", tmp_path)
    dst = tmp_path / "nv.onnx"

    result = run("optimize", src, "-o", dst, "--no-validate", *(["--json"] if as_json else []))

    assert result.exit_code == 0, result.output
    assert bn_nodes(onnx.load(dst)) == []
    if as_json:
        doc = json.loads(result.stdout)
        assert doc["validation"] is None and doc["written"] and doc["ok"] and len(doc["folds"]) == 2
    else:
        assert "Validation: not run (--no-validate)" in result.stdout


def test_nothing_to_fold_reports_the_refusal(tmp_path):
    src = save(builders.bn_after_relu_model(), tmp_path / "relu_bn.onnx")
    dst = tmp_path / "out.onnx"

    result = run("optimize", src, "-o", dst, "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["folds"] == [] and doc["validation"] is None and doc["ok"] is True
    [refusal] = doc["refusals"]
    assert (refusal["node"], refusal["op"]) == ("bn", "BatchNormalization")
    assert "Relu 'relu'" in refusal["reason"]
    assert doc["after"]["nodes"] == doc["before"]["nodes"] == 3
    assert len(bn_nodes(onnx.load(dst))) == 1


def test_options_reach_the_validation(tmp_path):
    """--seed, --atol, --rtol and --input-shape all show up in what was measured."""
    src = copy_sample("conv1d_bn.onnx", tmp_path)

    result = run("optimize", src, "-o", tmp_path / "o.onnx", "--json",
                 "--seed", "7", "--atol", "0.5", "--rtol", "0.25", "--input-shape", "input=3x8x64")

    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)["validation"]
    assert v["seed"] == 7 and v["inputs"] == {"input": [3, 8, 64]}
    [out] = v["outputs"]
    assert (out["shape"], out["atol"], out["rtol"], out["passed"]) == ([3, 16, 64], 0.5, 0.25, True)


def test_opset9_bn_with_empty_optional_outputs_folds_and_validates(tmp_path):
    """onnxruntime segfaults on this original model in-process; the CLI must still succeed."""
    src = save(builders.conv_bn_model(opset=9, bn_extra_outputs="empty"), tmp_path / "op9.onnx")

    result = run("optimize", src, "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [f["node"] for f in doc["folds"]] == ["bn"]
    assert doc["validation"]["passed"] is True
    assert bn_nodes(onnx.load(tmp_path / "op9.folded.onnx")) == []


# ---------------------------------------------------------------------------------------------
# where the output goes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("model.onnx", "model.folded.onnx"),
    ("model", "model.folded.onnx"),
    ("my.net.onnx", "my.net.folded.onnx"),
])
def test_default_output_is_beside_the_input(tmp_path, monkeypatch, name, expected):
    folder = tmp_path / "models"
    folder.mkdir()
    src = save(builders.conv_bn_model(), folder / name)
    monkeypatch.chdir(tmp_path)  # the output goes beside the input, not into the working directory

    result = run("optimize", src, "--no-validate")

    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(folder)) == sorted([name, expected])
    assert os.listdir(tmp_path) == ["models"]
    assert bn_nodes(onnx.load(folder / expected)) == []


def test_in_place_replaces_the_input(tmp_path):
    src = copy_sample("conv1d_bn.onnx", tmp_path)

    result = run("optimize", src, "--in-place", "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output"] == str(src) and doc["written"] and doc["validation"]["passed"]
    assert os.listdir(tmp_path) == ["conv1d_bn.onnx"]  # no default output, no temp file
    folded = onnx.load(src)
    onnx.checker.check_model(folded, full_check=True)
    assert bn_nodes(folded) == [] and doc["after"]["file_bytes"] == src.stat().st_size


def test_output_file_gets_the_usual_permissions(tmp_path):
    """A new output file is created like any other file: mode 0666 & ~umask (not mkstemp's 0600)."""
    src = save(builders.conv_bn_model(), tmp_path / "m.onnx")

    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--no-validate")

    assert result.exit_code == 0, result.output
    assert oct((tmp_path / "out.onnx").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def test_in_place_keeps_the_file_mode(tmp_path):
    src = save(builders.conv_bn_model(), tmp_path / "m.onnx")
    src.chmod(0o640)

    result = run("optimize", src, "--in-place", "--no-validate")

    assert result.exit_code == 0, result.output
    assert bn_nodes(onnx.load(src)) == []
    assert oct(src.stat().st_mode & 0o777) == oct(0o640)


# ---------------------------------------------------------------------------------------------
# exit code 1: validation failed, nothing written, nothing touched
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_zero_tolerance_fails_validation_and_writes_nothing(tmp_path, sample):
    """Folding moves float rounding by a few ulps: with atol = rtol = 0 validation must fail."""
    src = copy_sample(sample, tmp_path)
    before = folder_state(tmp_path)

    result = run("optimize", src, "--atol", "0", "--rtol", "0", "--json")

    assert result.exit_code == 1, result.output
    assert_one_error_line(result, str(src), "validation failed", "nothing written")
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["written"], doc["output"]) == (False, False, None)
    v = doc["validation"]
    assert v["passed"] is False and v["error"] is None
    assert v["outputs"] and all(o["max_abs"] > 0 and not o["passed"] for o in v["outputs"])
    assert all((o["atol"], o["rtol"]) == (0.0, 0.0) for o in v["outputs"])
    assert folder_state(tmp_path) == before  # no output, no temp file, input byte-for-byte intact


@pytest.mark.parametrize("target", ["in-place", "existing-output"])
def test_failed_validation_leaves_existing_files_alone(tmp_path, target):
    src = copy_sample("conv1d_bn.onnx", tmp_path)
    if target == "in-place":
        args = ["--in-place"]
    else:
        (tmp_path / "previous.onnx").write_bytes(b"an earlier result")
        args = ["-o", tmp_path / "previous.onnx"]
    before = folder_state(tmp_path)

    result = run("optimize", src, *args, "--atol", "0", "--rtol", "0")

    assert result.exit_code == 1, result.output
    assert_one_error_line(result, str(src), "validation failed")
    assert "(nothing written)" in result.stdout and "FAILED" in result.stdout
    output_name = onnx.load(src).graph.output[0].name
    assert table_row(result.stdout, output_name)[-1] == "failed (elementwise)"
    assert folder_state(tmp_path) == before


def test_model_whose_symbolic_dims_need_a_search(tmp_path):
    """Symbolic H, W at 1 are too small for an unpadded 3x3 Conv: the search finds 32; --input-shape wins."""
    src = save(builders.symbolic_spatial_model(), tmp_path / "sym.onnx")

    result = run("optimize", src, "--json")

    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)["validation"]
    assert v["verdict"] == "passed" and v["inputs"] == {"X": [1, 4, 32, 32]}
    assert "other symbolic dims set to 32" in v["shapes_chosen"]

    fixed = run("optimize", src, "-o", tmp_path / "given.onnx", "--json", "--input-shape", "X=1x4x8x8")

    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)["validation"]["inputs"] == {"X": [1, 4, 8, 8]}


# ---------------------------------------------------------------------------------------------
# help, version, and the real console script
# ---------------------------------------------------------------------------------------------


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"bnfold, version {bnfold.__version__}"


def test_optimize_help_lists_every_option():
    result = run("optimize", "--help")
    assert result.exit_code == 0
    for option in ("-o, --output", "--in-place", "--no-validate", "--input-shape", "--atol", "--rtol",
                   "--seed", "--json", "--debug"):
        assert option in result.stdout


def test_no_arguments_shows_readable_help():
    """``bnfold`` alone shows the usage as help text, not squeezed into one error line."""
    result = run()
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines()]
    assert "Commands:" in lines
    assert any(line.startswith("optimize") for line in lines)
    assert not any(line.startswith("bnfold: error: Usage:") for line in lines)


def test_console_script_end_to_end(tmp_path):
    src = copy_sample("resnet_stack.onnx", tmp_path)
    dst = tmp_path / "resnet_stack.out.onnx"

    proc = subprocess.run([bnfold_script(), "optimize", str(src), "-o", str(dst)],
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert "Validation passed" in proc.stdout
    onnx.checker.check_model(str(dst), full_check=True)
    assert bn_nodes(onnx.load(dst)) == []
    assert len(onnx.load(dst).graph.node) == len(onnx.load(src).graph.node) - 9


def test_long_fold_lists_print_one_row_per_fold(tmp_path):
    """Hundreds of folds: every fold named in one table row of its own (a rich table of 20,000 rows took 12 s)."""
    n = 205
    model = builders.conv_bn_chain_model(n)
    src = tmp_path / "chain.onnx"
    onnx.save(model, src)
    result = run("optimize", src, "--no-validate")
    assert result.exit_code == 0, result.output
    assert f"Folded ({n})" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ BatchNormalization '")]
    assert len(rows) == n
    assert [c.strip() for c in rows[0].strip("│").split("│")] == ["BatchNormalization 'bn0'", "Conv 'conv0'",
                                                                 "conv-bn", "main", "8 MAC, 64 B"]
    assert len({len(r) for r in rows}) == 1  # aligned: every row as wide as the others


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_optimize_without_validation_imports_only_what_it_uses(tmp_path, fmt):
    """``--no-validate`` imports neither validation (nor its child-process harness) nor rich: the text
    report is drawn by bnfold.textout. The same run with validation imports validation."""
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), src)

    def imported(*args):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bnfold", "optimize", str(src), "-o",
                               str(tmp_path / "out.onnx"), "--format", fmt, *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.returncode == 0, done.stderr[-2000:]
        return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}

    names = imported("--no-validate")
    assert {"bnfold.rules", "bnfold.folding", "onnx_graphsurgeon"} <= names
    assert not names & {"bnfold.validation", "bnfold.child", "bnfold._validate_worker", "rich", "rich.table"}, names
    assert {"bnfold.validation", "bnfold.child"} <= imported()
