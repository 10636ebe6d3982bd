"""``bnfold optimize`` on several files and folders: where results go, -j, exit codes, --json, summary.

Runs go through click's CliRunner; validation (where it is not the point) is switched off to keep
the suite fast. Single-file behaviour is covered by test_cli.py and test_bad_input.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import builders
import onnx
import pytest
from click.testing import CliRunner, Result

from bnfold.cli import cli

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
REPORT_KEYS = {"input", "output", "written", "ok", "verdict", "unproven_accepted", "folds", "refusals", "validation", "before", "after", "seconds", "savings",
               "bench"}
SUMMARY_KEYS = {"files", "written", "validation_failed", "unproven", "unusable", "rolled_back", "not_started", "folds", "refusals",
                "interrupted"}


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "250"})


def tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden temp files and folders included) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(folder.rglob("*"))
    }


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def sample(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(MODELS_DIR / name, folder / name))


def error_lines(result: Result) -> list[str]:
    lines = result.stderr.splitlines()
    assert all(line.startswith("bnfold: error: ") for line in lines), result.stderr
    assert "Traceback" not in result.output
    return lines


def model_tree(root: Path) -> Path:
    """root/src/{a.onnx, sub/deep/b.onnx, sub/c.onnx, sub/c.folded.onnx (an earlier result)}."""
    src = root / "src"
    save(builders.conv_bn_model(), src / "a.onnx")
    save(builders.conv_bn_model(seed=1), src / "sub" / "deep" / "b.onnx")
    save(builders.conv_bn_model(seed=2), src / "sub" / "c.onnx")
    save(builders.conv_bn_model(seed=3), src / "sub" / "c.folded.onnx")
    return src


# ---------------------------------------------------------------------------------------------
# where results go
# ---------------------------------------------------------------------------------------------


def test_output_folder_keeps_paths_relative_to_the_folder_argument(tmp_path):
    src = model_tree(tmp_path)
    single = sample("conv1d_bn.onnx", tmp_path / "elsewhere")
    before = tree(src)
    out = tmp_path / "out"  # missing: created

    result = run("optimize", src, single, "-o", out, "--no-validate", "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert files_under(out) == ["a.onnx", "conv1d_bn.onnx", "sub/c.onnx", "sub/deep/b.onnx"]
    assert all(bn_count(out / f) == 0 for f in files_under(out))
    assert tree(src) == before  # inputs untouched; the earlier result c.folded.onnx was not an input
    doc = json.loads(result.stdout)
    assert [(f["input"], f["output"]) for f in doc["files"]] == [
        (str(src / "a.onnx"), str(out / "a.onnx")),
        (str(src / "sub" / "c.onnx"), str(out / "sub" / "c.onnx")),
        (str(src / "sub" / "deep" / "b.onnx"), str(out / "sub" / "deep" / "b.onnx")),
        (str(single), str(out / "conv1d_bn.onnx")),
    ]


def test_without_output_results_go_beside_the_inputs(tmp_path):
    src = model_tree(tmp_path)
    earlier = (src / "sub" / "c.folded.onnx").read_bytes()

    result = run("optimize", src, "--no-validate")

    assert result.exit_code == 0, result.output
    assert files_under(src) == ["a.folded.onnx", "a.onnx", "sub/c.folded.onnx", "sub/c.onnx",
                                "sub/deep/b.folded.onnx", "sub/deep/b.onnx"]
    assert (src / "sub" / "c.folded.onnx").read_bytes() != earlier  # replaced by the new result
    assert not (src / "sub" / "c.folded.folded.onnx").exists()


def test_in_place_with_several_inputs(tmp_path):
    src = model_tree(tmp_path)
    other = save(builders.conv_bn_model(seed=4), tmp_path / "other.onnx")

    result = run("optimize", src, other, "--in-place", "--no-validate", "--json")

    assert result.exit_code == 0, result.output
    assert files_under(src) == ["a.onnx", "sub/c.folded.onnx", "sub/c.onnx", "sub/deep/b.onnx"]
    for path in (src / "a.onnx", src / "sub" / "c.onnx", src / "sub" / "deep" / "b.onnx", other):
        assert bn_count(path) == 0
    assert bn_count(src / "sub" / "c.folded.onnx") == 1  # not an input: untouched
    assert json.loads(result.stdout)["summary"]["written"] == 4


def test_single_file_with_an_existing_output_folder_keeps_its_name(tmp_path):
    src = save(builders.conv_bn_model(), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()

    result = run("optimize", src, "-o", out, "--no-validate", "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == REPORT_KEYS  # still the single-report document
    assert doc["output"] == str(out / "m.onnx") and files_under(out) == ["m.onnx"]


@pytest.mark.parametrize("flags, fragment", [
    (["-o", "{file}"], "must be a folder"),
    (["-o", "{dir}", "--in-place"], "--in-place"),
])
def test_output_that_cannot_serve_several_inputs(tmp_path, flags, fragment):
    a = save(builders.conv_bn_model(), tmp_path / "a.onnx")
    b = save(builders.conv_bn_model(seed=1), tmp_path / "b.onnx")
    existing = save(builders.conv_bn_model(seed=2), tmp_path / "existing.onnx")
    flags = [f.format(file=existing, dir=tmp_path / "out") for f in flags]
    before = tree(tmp_path)

    result = run("optimize", a, b, *flags)

    assert result.exit_code == 2 and result.stdout == ""
    [line] = error_lines(result)
    assert fragment in line
    assert tree(tmp_path) == before


def test_two_inputs_with_the_same_result_path(tmp_path):
    """x/m.onnx and y/m.onnx both map to out/m.onnx: the second is an error, the first is folded."""
    first = save(builders.conv_bn_model(), tmp_path / "x" / "m.onnx")
    second = save(builders.conv_bn_model(seed=1), tmp_path / "y" / "m.onnx")

    result = run("optimize", first, second, "-o", tmp_path / "out", "--no-validate")

    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert str(second) in line and str(first) in line
    assert files_under(tmp_path / "out") == ["m.onnx"]
    assert (tmp_path / "out" / "m.onnx").read_bytes() == run_single_bytes(first, tmp_path / "single.onnx")


def run_single_bytes(src: Path, dst: Path) -> bytes:
    result = run("optimize", src, "-o", dst, "--no-validate")
    assert result.exit_code == 0, result.output
    return dst.read_bytes()


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def test_parallel_jobs_write_the_same_bytes_as_sequential(tmp_path):
    src = tmp_path / "src"
    for name in ("resnet_stack.onnx", "depthwise_block.onnx", "conv1d_bn.onnx"):
        sample(name, src / name.split("_")[0])

    one = run("optimize", src, "-o", tmp_path / "j1", "-j", "1", "--json")
    two = run("optimize", src, "-o", tmp_path / "j2", "-j", "2", "--json")

    assert one.exit_code == two.exit_code == 0, one.output + two.output
    assert files_under(tmp_path / "j1") == files_under(tmp_path / "j2") == [
        "conv1d/conv1d_bn.onnx", "depthwise/depthwise_block.onnx", "resnet/resnet_stack.onnx"]
    assert tree(tmp_path / "j1") == tree(tmp_path / "j2")
    docs = [json.loads(r.stdout) for r in (one, two)]
    for doc in docs:
        for f in doc["files"]:
            f.pop("seconds")
            f["output"] = Path(f["output"]).name
    assert docs[0] == docs[1]  # same folds, refusals, validation figures, in input order
    assert all(f["validation"]["passed"] for f in docs[0]["files"])


# ---------------------------------------------------------------------------------------------
# failures: one file fails, the others are still folded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_one_unusable_file_among_good_ones(tmp_path, jobs):
    src = tmp_path / "src"
    save(builders.conv_bn_model(), src / "a.onnx")
    bad = src / "b.onnx"
    bad.write_bytes(builders.conv_bn_model().SerializeToString()[:100])  # truncated
    save(builders.conv_bn_model(seed=1), src / "c.onnx")
    missing = tmp_path / "missing.onnx"
    before = tree(src)

    result = run("optimize", src, missing, "--no-validate", "-j", jobs)

    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 2 and str(bad) in lines[0] and str(missing) in lines[1]
    assert files_under(src) == ["a.folded.onnx", "a.onnx", "b.onnx", "c.folded.onnx", "c.onnx"]
    assert {k: v for k, v in tree(src).items() if "folded" not in k} == before  # no partial file, no temp
    assert "unusable" in result.stdout and "written" in result.stdout


def test_unusable_file_leaves_no_empty_output_folder(tmp_path):
    src = tmp_path / "src"
    save(builders.conv_bn_model(), src / "good" / "a.onnx")
    (src / "bad").mkdir()
    (src / "bad" / "b.onnx").write_bytes(b"not a model")

    result = run("optimize", src, "-o", tmp_path / "out", "--no-validate")

    assert result.exit_code == 2, result.output
    assert tree(tmp_path / "out") == {"good": "<dir>", "good/a.onnx": tree(tmp_path / "out")["good/a.onnx"]}


def test_zero_tolerance_fails_the_folded_file_only(tmp_path):
    """--atol 0 --rtol 0 fails every fold's validation; a model with nothing to fold still succeeds."""
    folds = sample("conv1d_bn.onnx", tmp_path / "src")
    nothing = save(builders.bn_after_relu_model(), tmp_path / "src" / "relu_bn.onnx")
    out = tmp_path / "out"

    result = run("optimize", folds, nothing, "-o", out, "--atol", "0", "--rtol", "0", "--json")

    assert result.exit_code == 1, result.output
    [line] = error_lines(result)
    assert str(folds) in line and "validation failed" in line and "nothing written" in line
    assert files_under(out) == ["relu_bn.onnx"]  # no partial file for the failed one
    doc = json.loads(result.stdout)
    failed, passed = doc["files"]
    assert (failed["ok"], failed["written"], failed["output"], failed["validation"]["passed"]) == (False, False, None, False)
    assert (passed["ok"], passed["written"], passed["validation"]) == (True, True, None)
    assert (failed["status"], passed["status"]) == ("validation failed", "written")
    assert doc["summary"] == {"files": 2, "written": 1, "validation_failed": 1, "unproven": 0, "unusable": 0,
                              "rolled_back": 0,
                              "not_started": 0, "folds": 2, "refusals": 1, "interrupted": None}


def test_folder_with_nothing_to_fold_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    save(builders.conv_bn_model(), tmp_path / "only" / "m.folded.onnx")

    result = run("optimize", tmp_path / "empty", tmp_path / "only", "--json")

    assert result.exit_code == 2 and result.stdout == ""
    lines = error_lines(result)
    assert len(lines) == 2 and str(tmp_path / "empty") in lines[0] and str(tmp_path / "only") in lines[1]


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------


def test_json_with_several_inputs(tmp_path):
    a = save(builders.conv_bn_model(), tmp_path / "a.onnx")
    b = sample("depthwise_block.onnx", tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"")

    result = run("optimize", a, b, bad, "--no-validate", "--json")

    assert result.exit_code == 2
    assert len(error_lines(result)) == 1
    doc = json.loads(result.stdout)
    assert set(doc) == {"files", "summary"}
    first, second, third = doc["files"]
    assert set(first) == set(second) == REPORT_KEYS | {"error", "status"}
    assert (first["input"], first["output"], first["error"]) == (str(a), str(tmp_path / "a.folded.onnx"), None)
    assert [f["node"] for f in first["folds"]] == ["bn"]
    assert second["input"] == str(b) and second["written"] and second["after"]["nodes"] < second["before"]["nodes"]
    assert third["input"] == str(bad) and third["ok"] is False and str(bad) in third["error"]
    assert third["written"] is False and third["output"] is None and third["status"] == "unusable"
    assert set(doc["summary"]) == SUMMARY_KEYS
    assert doc["summary"]["files"] == 3 and doc["summary"]["written"] == 2 and doc["summary"]["unusable"] == 1
    assert doc["summary"]["folds"] == len(first["folds"]) + len(second["folds"])


def test_summary_table(tmp_path):
    a = save(builders.conv_bn_model(), tmp_path / "a.onnx")
    r = save(builders.bn_after_relu_model(), tmp_path / "r.onnx")

    result = run("optimize", a, r)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress bar outside a terminal
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip().strip("│").split("│")] for line in result.stdout.splitlines() if "│" in line)}
    header = next(line for line in result.stdout.splitlines() if "┃" in line)
    assert [c.strip() for c in header.strip().strip("┃").split("┃")] == [
        "file", "folds", "refusals", "validation", "nodes before→after", "status"]
    assert rows[str(a)] == ["1", "0", "passed", "2→1", f"written → {tmp_path / 'a.folded.onnx'}"]
    assert rows[str(r)] == ["0", "1", "not run", "3→3", f"written → {tmp_path / 'r.folded.onnx'}"]
    assert "2 files: 2 written, 0 failed validation, 0 not proven, 0 unusable" in result.stdout
