"""Bad tolerances and input shapes are usage errors, never "validation failed" (issue 9, class 8).

``--atol``/``--rtol`` must be finite numbers >= 0. ``--input-shape NAME=DIMS`` must name an input,
with its declared rank, agreeing with every static dimension (symbolic ones, named, unset or
negative, take any size >= 1). Inputs must fit in ``bnfold.inputs.memory_limit()`` bytes. Each
is exit 2 with one line naming the option, decided before anything runs, for ``optimize`` (one
file or a batch, where a shape that does not fit one file is that file's error), ``check --fix``
and ``bench``; the Python API raises ``BnfoldError`` with the same message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result

import bnfold
import builders
from bnfold import inputs
from bnfold.cli import cli

#: Far beyond a quarter of any machine's memory (14901.2 GiB of float32).
HUGE = "X=1x4x1000000x1000000"


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "250"})


def tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden staging folders included), files with their sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*"))}


def only_error(result: Result) -> str:
    """Exit 2, nothing on stdout, one ``bnfold: error:`` line on stderr: returns it without the prefix."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), result.stderr
    return lines[0].removeprefix("bnfold: error: ")


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def renamed_input(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` with its input ``X`` called ``name``."""
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if i == "X" else i for i in node.input]
    return model


def with_batch_dim(kind: str) -> onnx.ModelProto:
    """conv_bn_model ([1, 4, 8, 8]) whose batch dim is symbolic: named, unset or -1 (paddle2onnx)."""
    model = builders.conv_bn_model()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    if kind == "named":
        dim.dim_param = "N"
    elif kind == "negative":
        dim.dim_value = -1
    return model


def huge_message(label, given: str = HUGE, gib: str = "14901.2") -> str:
    return (f"{label}: cannot allocate inputs of {gib} GiB for {given} (bnfold allows "
            f"{inputs._size(inputs.memory_limit())}: 1/4 of the memory it may use)")


@pytest.fixture
def src(tmp_path) -> Path:
    """X: [N, 4, 8, 8] with N symbolic, a 3x3 unpadded Conv + BN."""
    return save(builders.conv_bn_model(symbolic_batch=True), tmp_path / "m.onnx")


# The options after MODEL and the one error line (``{src}``: the model's path).
TOLERANCES = {f"{option}-{value}": ([f"--{option}", value], f"--{option} {value}: a tolerance must be a finite "
                                                             "number >= 0")
              for option in ("atol", "rtol") for value in ("-1", "nan", "inf", "-inf")}
SHAPES = {
    "wrong-rank": (["--input-shape", "X=1x3"], "{src}: --input-shape X=1x3: input 'X' has rank 4 [N, 4, 8, 8], not 2"),
    "static-dim-differs": (["--input-shape", "X=1x3x8x8"],
                           "{src}: --input-shape X=1x3x8x8: input 'X' has size 4 on axis 1 [N, 4, 8, 8], not 3"),
    "last-static-dim-differs": (["--input-shape", "X=2x4x8x9"],
                                "{src}: --input-shape X=2x4x8x9: input 'X' has size 8 on axis 3 [N, 4, 8, 8], not 9"),
    "unknown-input": (["--input-shape", "nope=1x4x8x8"],
                      "{src}: --input-shape nope=1x4x8x8: the model has no input 'nope' (inputs: X)"),
}


# ---------------------------------------------------------------------------------------------
# optimize, one file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOLERANCES, *SHAPES])
def test_optimize_usage_error(src, tmp_path, case):
    args, message = {**TOLERANCES, **SHAPES}[case]
    before = tree(tmp_path)

    result = run("optimize", src, *args)

    assert only_error(result) == message.format(src=src)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", [*TOLERANCES, *SHAPES])
def test_optimize_api_raises_the_same_message(src, tmp_path, case):
    args, message = {**TOLERANCES, **SHAPES}[case]
    option, value = args
    if option == "--input-shape":
        name, dims = value.split("=")
        kwargs = {"input_shapes": {name: [int(d) for d in dims.split("x")]}}
    else:
        kwargs = {option[2:]: float(value)}
    before = tree(tmp_path)

    with pytest.raises(bnfold.BnfoldError) as raised:
        bnfold.optimize(src, tmp_path / "out.onnx", **kwargs)

    assert str(raised.value) == message.format(src=src)
    assert tree(tmp_path) == before


def test_inputs_too_large_to_allocate(tmp_path):
    src = save(builders.symbolic_spatial_model(), tmp_path / "m.onnx")  # X: [1, 4, H, W]
    before = tree(tmp_path)

    result = run("optimize", src, "--input-shape", HUGE)

    assert only_error(result) == huge_message(src)
    assert tree(tmp_path) == before


def test_declared_static_inputs_too_large_unless_nothing_runs(tmp_path):
    """The bound holds for declared shapes too; with --no-validate no input is made, so the fold is written."""
    src = save(builders.conv_bn_model(spatial=1_000_000), tmp_path / "m.onnx")
    before = tree(tmp_path)

    refused = run("optimize", src)
    assert only_error(refused) == huge_message(src)
    assert tree(tmp_path) == before

    written = run("optimize", src, "--no-validate")
    assert written.exit_code == 0, written.output
    assert [n.op_type for n in onnx.load(tmp_path / "m.folded.onnx").graph.node] == ["Conv"]


@pytest.mark.parametrize("over", [False, True], ids=["at-the-limit", "one-byte-over"])
def test_memory_limit_is_a_bound_on_the_input_bytes(src, tmp_path, monkeypatch, over):
    """X = 1x4x8x8 float32 is 1024 bytes: allowed with a limit of 1024, refused with 1023."""
    monkeypatch.setattr(inputs, "memory_limit", lambda: 1024 - over)
    dst = tmp_path / "out.onnx"

    if over:
        with pytest.raises(bnfold.BnfoldError) as raised:
            bnfold.optimize(src, dst)
        assert str(raised.value) == (f"{src}: cannot allocate inputs of 1.0 KiB for X=1x4x8x8 (bnfold allows "
                                     "1023 bytes: 1/4 of the memory it may use)")
        assert not dst.exists()
    else:
        report = bnfold.optimize(src, dst)
        assert report.ok and report.written and report.validation.inputs == {"X": [1, 4, 8, 8]}


@pytest.mark.parametrize("kind", ["named", "unset", "negative"])
def test_symbolic_dims_take_any_size(tmp_path, kind):
    src = save(with_batch_dim(kind), tmp_path / "m.onnx")

    given = run("optimize", src, "--json", "--input-shape", "X=3x4x8x8")
    default = run("optimize", src, "--json", "-o", tmp_path / "default.onnx")

    for result, shape in ((given, [3, 4, 8, 8]), (default, [1, 4, 8, 8])):
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["written"] and doc["validation"]["passed"] and doc["validation"]["inputs"] == {"X": shape}


def test_negative_dim_keeps_the_others_static(tmp_path):
    src = save(with_batch_dim("negative"), tmp_path / "m.onnx")

    result = run("optimize", src, "--input-shape", "X=3x4x8x7")

    assert only_error(result) == f"{src}: --input-shape X=3x4x8x7: input 'X' has size 8 on axis 3 [?, 4, 8, 8], not 7"


# ---------------------------------------------------------------------------------------------
# validate (Python API)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    original = builders.conv_bn_model(symbolic_batch=True)
    return original, bnfold.fold(original).model


@pytest.mark.parametrize("kwargs, message", [
    ({"atol": float("nan")}, "--atol nan: a tolerance must be a finite number >= 0"),
    ({"rtol": -0.5}, "--rtol -0.5: a tolerance must be a finite number >= 0"),
    ({"input_shapes": {"X": [1, 3]}}, "<in-memory model>: --input-shape X=1x3: input 'X' has rank 4 [N, 4, 8, 8], not 2"),
    ({"input_shapes": {"X": [1, 4, 9, 8]}},
     "<in-memory model>: --input-shape X=1x4x9x8: input 'X' has size 8 on axis 2 [N, 4, 8, 8], not 9"),
    ({"input_shapes": {"X": [1_000_000_000_000, 4, 8, 8]}}, None),
], ids=["atol-nan", "rtol-negative", "wrong-rank", "static-dim-differs", "too-large"])
def test_validate_raises_usage_errors(pair, kwargs, message):
    with pytest.raises(bnfold.BnfoldError) as raised:
        bnfold.validate(*pair, **kwargs)
    if message is None:  # 10^12 x 256 float32
        message = huge_message("<in-memory model>", "X=1000000000000x4x8x8", "953674.3")
    assert str(raised.value) == message


def test_validate_names_the_file_it_was_given(src):
    folded = bnfold.fold(str(src)).model

    with pytest.raises(bnfold.BnfoldError) as raised:
        bnfold.validate(src, folded, input_shapes={"X": [1, 3]})

    assert str(raised.value) == f"{src}: --input-shape X=1x3: input 'X' has rank 4 [N, 4, 8, 8], not 2"


# ---------------------------------------------------------------------------------------------
# optimize, several files
# ---------------------------------------------------------------------------------------------


def test_batch_shape_that_does_not_fit_one_file_is_that_files_error(tmp_path):
    a = save(builders.conv_bn_model(symbolic_batch=True), tmp_path / "src" / "a.onnx")
    b = save(renamed_input(builders.conv_bn_model(symbolic_batch=True), "input"), tmp_path / "src" / "b.onnx")
    c = save(builders.conv_bn_model(rank=1, symbolic_batch=True), tmp_path / "src" / "c.onnx")  # X: [N, 4, 8]

    result = run("optimize", a, b, c, "-o", tmp_path / "out", "--input-shape", "X=2x4x8x8", "--json")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {b}: --input-shape X=2x4x8x8: the model has no input 'X' (inputs: input)",
        f"bnfold: error: {c}: --input-shape X=2x4x8x8: input 'X' has rank 3 [N, 4, 8], not 4",
    ]
    files = json.loads(result.stdout)["files"]
    assert [f["written"] for f in files] == [True, False, False]
    assert files[0]["validation"]["passed"] and files[0]["validation"]["inputs"] == {"X": [2, 4, 8, 8]}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.onnx"]


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "X=abc"], "bad input shape 'X=abc': expected NAME=DIMxDIMx... with dims >= 1, "
                                 "e.g. input=1x3x224x224"),
    (["--atol", "nan"], "--atol nan: a tolerance must be a finite number >= 0"),
    (["--rtol", "-1"], "--rtol -1: a tolerance must be a finite number >= 0"),
], ids=["malformed-shape", "atol-nan", "rtol-negative"])
def test_batch_malformed_option_is_an_error_before_any_work(tmp_path, args, message):
    for name in ("a", "b"):
        save(builders.conv_bn_model(), tmp_path / "src" / f"{name}.onnx")
    before = tree(tmp_path)

    result = run("optimize", tmp_path / "src", "-o", tmp_path / "out", *args)

    assert only_error(result) == message
    assert tree(tmp_path) == before  # not even the output folder


# ---------------------------------------------------------------------------------------------
# check --fix and bench
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", TOLERANCES)
def test_check_fix_tolerance(src, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, message = TOLERANCES[case]
    before = tree(tmp_path)

    result = run("check", "--fix", src, *args)

    assert only_error(result) == message
    assert tree(tmp_path) == before


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_check_fix_tolerance_from_pyproject(src, tmp_path, monkeypatch, value):
    (tmp_path / "pyproject.toml").write_text(f"[tool.bnfold]\natol = {value}\n")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)

    result = run("check", "--fix", src)

    assert only_error(result) == f"{tmp_path / 'pyproject.toml'}: [tool.bnfold]: 'atol' must be a finite number, not {value}"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", SHAPES)
def test_bench_input_shape(src, tmp_path, case):
    args, message = SHAPES[case]
    before = tree(tmp_path)

    result = run("bench", src, *args, "--runs", "5")

    assert only_error(result) == message.format(src=src)
    assert tree(tmp_path) == before


def test_bench_inputs_too_large(tmp_path):
    src = save(builders.symbolic_spatial_model(), tmp_path / "m.onnx")

    result = run("bench", src, "--input-shape", HUGE, "--runs", "5")

    assert only_error(result) == huge_message(src)
    with pytest.raises(bnfold.BnfoldError) as raised:
        bnfold.bench(src, input_shapes={"X": [1, 4, 1_000_000, 1_000_000]})
    assert str(raised.value) == huge_message(src)
