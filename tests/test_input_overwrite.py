"""The output never overwrites a file the input reads (issue 9, class 3).

Rule: neither the output model nor the side file it writes (``<output>.data``) may be the input
model or one of its external data files, symlinks resolved, unless ``--in-place`` says so;
otherwise exit 2 with one line and nothing written. In a batch, a job's output or side file must
not be another job's input or one of that input's data files (the job whose result it is fails,
the others are folded). In place, the staged write has copied every byte before the rename, so
replacing the input's own side file is fine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result
from conftest import assert_equivalent, op_types

import bnfold
import builders
from bnfold import batch
from bnfold.cli import cli


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "250"})


def tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden staging folders included), files with their sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
            else "<link>" if p.is_symlink() else "<dir>" for p in sorted(folder.rglob("*"))}


def save_external(model: onnx.ModelProto, path: Path, location: str) -> Path:
    """``model`` at ``path`` with every tensor in the one side file ``location`` (relative to its folder)."""
    (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save moves the data out of the proto
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def error_line(result: Result) -> str:
    """The one ``bnfold: error:`` line of a run that printed nothing else."""
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), result.stderr
    return lines[0]


MODEL = builders.conv_bn_model(c_in=8, c_out=16)


# ---------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------


def test_output_whose_side_file_is_the_inputs_data_is_refused(tmp_path):
    """The reported shape: a.onnx keeps its weights in b.onnx.data, ``-o b.onnx`` would write b.onnx.data."""
    src = save_external(MODEL, tmp_path / "a.onnx", "b.onnx.data")
    before = tree(tmp_path)

    result = run("optimize", src, "-o", tmp_path / "b.onnx")

    assert result.exit_code == 2
    assert error_line(result) == (
        f"bnfold: error: {tmp_path / 'b.onnx.data'}: the output's side file would overwrite external data of the "
        f"input {src}; pass --in-place to replace the input, or choose another output")
    assert tree(tmp_path) == before
    assert_equivalent(MODEL, onnx.load(src))  # the input still loads, with its own weights


# Each case: (where the input keeps its data, the -o argument relative to the folder, the file named first).
REFUSED = {
    "output-is-the-data-file": ("model.weights", "model.weights", "model.weights"),
    "output-is-a-data-file-in-a-subfolder": ("w/model.bin", "w/model.bin", "w/model.bin"),
    "side-file-is-the-data-file": ("out.onnx.data", "out.onnx", "out.onnx.data"),
    "output-is-the-data-file-through-a-linked-folder": ("model.weights", "alias/model.weights", "alias/model.weights"),
    "side-file-is-a-link-to-the-data-file": ("model.weights", "linked.onnx", "linked.onnx.data"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_output_that_would_overwrite_input_data_is_refused(tmp_path, case):
    location, output, named = REFUSED[case]
    src = save_external(MODEL, tmp_path / "model.onnx", location)
    (tmp_path / "alias").symlink_to(tmp_path)
    (tmp_path / "linked.onnx.data").symlink_to(tmp_path / "model.weights")
    before = tree(tmp_path)

    result = run("optimize", src, "-o", tmp_path / output)

    assert result.exit_code == 2
    what = "the output's side file" if named.endswith(".onnx.data") else "the output"
    assert error_line(result) == (f"bnfold: error: {tmp_path / named}: {what} would overwrite external data of the "
                                  f"input {src}; pass --in-place to replace the input, or choose another output")
    assert tree(tmp_path) == before


def test_the_api_raises_the_same_error(tmp_path):
    src = save_external(MODEL, tmp_path / "model.onnx", "model.weights")
    before = tree(tmp_path)

    with pytest.raises(bnfold.BnfoldError, match=r"model\.weights: the output would overwrite external data"):
        bnfold.optimize(src, tmp_path / "model.weights")

    assert tree(tmp_path) == before


@pytest.mark.parametrize("location, output", [
    ("b.onnx.weights", "b.onnx"),  # a name like the side file's, not the same
    ("b.onnx.data", "out/b.onnx"),  # the same names in another folder
], ids=["similar-name", "other-folder"])
def test_outputs_beside_the_inputs_data_are_written(tmp_path, location, output):
    src = save_external(MODEL, tmp_path / "a.onnx", location)
    (tmp_path / "out").mkdir()
    data_before = (tmp_path / location).read_bytes()

    result = run("optimize", src, "-o", tmp_path / output)

    assert result.exit_code == 0, result.output
    assert (tmp_path / location).read_bytes() == data_before
    assert_equivalent(MODEL, onnx.load(src))
    folded = onnx.load(tmp_path / output)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(MODEL, folded)


def test_in_place_may_replace_the_inputs_own_side_file(tmp_path):
    """In place the output's side file is the input's: every byte is copied before the rename."""
    src = save_external(MODEL, tmp_path / "model.onnx", "model.onnx.data")

    result = run("optimize", src, "--in-place")

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    folded = onnx.load(src)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(MODEL, folded)


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


def test_batch_result_side_file_over_another_inputs_data(tmp_path):
    """a.onnx → a.folded.onnx + a.folded.onnx.data, which is where b.onnx keeps its weights."""
    a = save_external(MODEL, tmp_path / "src" / "a.onnx", "a.weights")
    b = save_external(builders.conv_bn_model(c_in=8, c_out=16, seed=1), tmp_path / "src" / "b.onnx",
                      "a.folded.onnx.data")
    before = tree(tmp_path)

    result = run("optimize", tmp_path / "src", "--no-validate")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {a}: its result's side file would overwrite external data of the input {b} "
        "(a.folded.onnx.data)"]
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["src/b.folded.onnx", "src/b.folded.onnx.data"]
    assert_equivalent(builders.conv_bn_model(c_in=8, c_out=16, seed=1), onnx.load(tmp_path / "src" / "b.folded.onnx"))


def test_batch_result_over_its_own_inputs_data(tmp_path):
    """One job whose own side file is its input's data: the single-file rule, for that file only."""
    a = save_external(MODEL, tmp_path / "src" / "a.onnx", "a.folded.onnx.data")
    b = save_external(MODEL, tmp_path / "src" / "b.onnx", "b.weights")
    before = tree(tmp_path)

    result = run("optimize", a, b, "--no-validate")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {a.parent / 'a.folded.onnx.data'}: the output's side file would overwrite external data "
        f"of the input {a}; pass --in-place to replace the input, or choose another output"]
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["src/b.folded.onnx", "src/b.folded.onnx.data"]


def test_batch_output_folder_holding_another_inputs_data(tmp_path):
    """-o out: src/sub/m.onnx → out/sub/m.onnx + out/sub/m.onnx.data, where the input out/sub/n.onnx keeps its weights."""
    m = save_external(MODEL, tmp_path / "src" / "sub" / "m.onnx", "m.weights")
    n_model = builders.conv_bn_model(c_in=8, c_out=16, seed=1)
    n = save_external(n_model, tmp_path / "out" / "sub" / "n.onnx", "m.onnx.data")
    before = tree(tmp_path)

    result = run("optimize", tmp_path / "src", n, "-o", tmp_path / "out", "--no-validate")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {m}: its result's side file would overwrite external data of the input {n} (m.onnx.data)"]
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["out/n.onnx", "out/n.onnx.data"]
    assert_equivalent(n_model, onnx.load(tmp_path / "out" / "n.onnx"))


def test_batch_result_over_another_input(tmp_path):
    """Named inputs a.onnx and a.folded.onnx: a's result would replace the other input."""
    a = builders.conv_bn_model()
    onnx.save(a, tmp_path / "a.onnx")
    onnx.save(builders.conv_bn_model(seed=1), tmp_path / "a.folded.onnx")
    before = tree(tmp_path)

    result = run("optimize", tmp_path / "a.onnx", tmp_path / "a.folded.onnx", "--no-validate")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {tmp_path / 'a.onnx'}: its result would overwrite the input {tmp_path / 'a.folded.onnx'}"]
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["a.folded.folded.onnx"]


def test_batch_in_place_side_file_over_another_inputs_data(tmp_path):
    """In place a.onnx writes a.onnx.data, where b.onnx keeps its weights: a is refused, b is folded."""
    a = save_external(MODEL, tmp_path / "a.onnx", "a.weights")
    b_model = builders.conv_bn_model(c_in=8, c_out=16, seed=1)
    b = save_external(b_model, tmp_path / "b.onnx", "a.onnx.data")
    before = tree(tmp_path)

    result = run("optimize", a, b, "--in-place", "--no-validate")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"bnfold: error: {a}: its result's side file would overwrite external data of the input {b} (a.onnx.data)"]
    assert tree(tmp_path)["a.onnx"] == before["a.onnx"] and tree(tmp_path)["a.onnx.data"] == before["a.onnx.data"]
    assert op_types(onnx.load(b)) == ["Conv"]
    assert_equivalent(b_model, onnx.load(b))


def test_batch_into_a_fresh_folder_reads_no_input(tmp_path, monkeypatch):
    """No target exists yet, so none can be an input's data file: no input is read to find out."""
    for name in ("a", "b"):
        save_external(MODEL, tmp_path / "src" / f"{name}.onnx", f"{name}.weights")

    def must_not_read(path):
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(batch, "_data_files", must_not_read)
    jobs = batch.collect_jobs([str(tmp_path / "src")], tmp_path / "out")

    assert [(Path(j.input).name, Path(j.output).name, j.error) for j in jobs] == [
        ("a.onnx", "a.onnx", None), ("b.onnx", "b.onnx", None)]


def test_batch_with_earlier_results_reads_only_inputs_beside_them(tmp_path, monkeypatch):
    """An earlier x/a.folded.onnx exists: the inputs in x/ are read (one may keep data there), y/b.onnx is not."""
    a = save_external(MODEL, tmp_path / "x" / "a.onnx", "a.weights")
    b = save_external(MODEL, tmp_path / "y" / "b.onnx", "b.weights")
    onnx.save(MODEL, tmp_path / "x" / "a.folded.onnx")
    read: list[str] = []
    real = batch._data_files
    monkeypatch.setattr(batch, "_data_files", lambda path: read.append(path) or real(path))

    jobs = batch.collect_jobs([str(a), str(b)])

    assert [j.error for j in jobs] == [None, None]
    assert read == [str(a)]
    assert os.path.exists(tmp_path / "x" / "a.folded.onnx")
