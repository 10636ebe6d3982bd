"""Staging folders (``bnfold.staging``) and signal handling (``bnfold.signals``), as classes:

* names: the staging folder and the files in it fit wherever the final names fit; a result whose
  side file ``<name>.data`` cannot exist is one error line, exit 2, before any work (-o,
  --in-place, check --fix, batches);
* scans: folder searches never take a staging folder's model for a model;
* sweep: stale staging folders are removed only when provably a dead bnfold process's; one that
  was moving its files into place is rolled forward;
* signals: raised in the main thread, held across a ``held()`` stretch, only the first one counts.

Signals sent to a real run are in test_interrupts.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import builders
import onnx
import pytest
from click.testing import CliRunner, Result

from bnfold import signals, staging
from bnfold.cli import cli


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "250"})


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder``, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


def one_error(result: Result, *fragments: str) -> str:
    [line] = result.stderr.splitlines()
    assert line.startswith("bnfold: error: ") and all(f in line for f in fragments), line
    return line


# -- names that fit ----------------------------------------------------------------------------


@pytest.fixture
def name_max(tmp_path) -> int:
    return os.pathconf(tmp_path, "PC_NAME_MAX")


def long_name(size: int) -> str:
    """A model file name of exactly ``size`` bytes."""
    return "m" * (size - len(".onnx")) + ".onnx"


def plain_model(path: Path) -> Path:
    onnx.save(builders.conv_bn_model(c_in=8, c_out=16), path)
    return path


def external_model(path: Path, location: str) -> Path:
    """Weights (4.6 KiB: big enough for the output's side file) in ``location``."""
    onnx.save(builders.conv_bn_model(c_in=8, c_out=16), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def test_output_name_of_the_maximum_length(tmp_path, name_max):
    src = plain_model(tmp_path / "src.onnx")
    out = tmp_path / long_name(name_max)

    result = run("optimize", src, "-o", out)

    assert result.exit_code == 0, result.output
    assert bn_count(out) == 0
    assert listing(tmp_path) == sorted(["src.onnx", out.name])


def test_in_place_and_check_fix_on_a_name_of_the_maximum_length(tmp_path, name_max):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    a = plain_model(first / long_name(name_max))
    b = plain_model(second / long_name(name_max))

    assert run("optimize", a, "--in-place").exit_code == 0
    fixed = run("check", "--fix", b)

    assert fixed.exit_code == 0, fixed.output
    assert bn_count(a) == bn_count(b) == 0
    assert listing(first) == [a.name] and listing(second) == [b.name]


def test_side_file_of_the_maximum_length(tmp_path, name_max):
    """The model's name is 5 bytes shorter than the limit: its side file's name is exactly the limit."""
    src = external_model(tmp_path / "src.onnx", "src.weights")
    out = tmp_path / long_name(name_max - 5)

    result = run("optimize", src, "-o", out)

    assert result.exit_code == 0, result.output
    side = out.with_name(out.name + ".data")
    assert len(side.name) == name_max and side.stat().st_size > 0
    assert bn_count(out) == 0
    assert listing(tmp_path) == sorted(["src.onnx", "src.weights", out.name, side.name])


@pytest.mark.parametrize("flags", [[], ["--external-data"]], ids=["input-has-external-data", "--external-data"])
def test_output_whose_side_file_cannot_exist_is_an_error_before_any_work(tmp_path, name_max, flags):
    src = (external_model(tmp_path / "src.onnx", "src.weights") if not flags
           else plain_model(tmp_path / "src.onnx"))
    before = {n: sha(tmp_path / n) for n in listing(tmp_path)}
    out = tmp_path / long_name(name_max)

    result = run("optimize", src, "-o", out, *flags)

    assert result.exit_code == 2 and result.stdout == ""
    one_error(result, str(out), f"{out.name}.data", f"{name_max + 5} bytes", f"at most {name_max - 5} bytes")
    assert {n: sha(tmp_path / n) for n in listing(tmp_path)} == before


def test_in_place_and_check_fix_refuse_a_side_file_that_cannot_exist(tmp_path, name_max):
    src = external_model(tmp_path / long_name(name_max), "w.bin")
    before = {n: sha(tmp_path / n) for n in listing(tmp_path)}

    in_place = run("optimize", src, "--in-place")
    fix = run("check", "--fix", src)

    assert in_place.exit_code == fix.exit_code == 2
    one_error(in_place, "side file", f"{name_max + 5} bytes")
    one_error(fix, "side file", f"{name_max + 5} bytes")
    assert {n: sha(tmp_path / n) for n in listing(tmp_path)} == before


def test_in_place_with_a_side_file_of_the_maximum_length(tmp_path, name_max):
    src = external_model(tmp_path / long_name(name_max - 5), "w.bin")

    result = run("optimize", src, "--in-place")

    assert result.exit_code == 0, result.output
    assert bn_count(src) == 0
    assert listing(tmp_path) == sorted([src.name, src.name + ".data", "w.bin"])  # w.bin: the input's, as before


def test_batch_name_errors_are_per_file(tmp_path, name_max):
    """The default output adds '.folded' (7 bytes): it cannot exist for an input of the maximum
    length. That file's error, the other file folded."""
    too_long = plain_model(tmp_path / long_name(name_max))
    fine = plain_model(tmp_path / "fine.onnx")

    result = run("optimize", too_long, fine, "--no-validate", "--json")

    assert result.exit_code == 2
    one_error(result, str(tmp_path / too_long.name.replace(".onnx", ".folded.onnx")), f"{name_max + 7} bytes long")
    assert listing(tmp_path) == sorted([too_long.name, "fine.onnx", "fine.folded.onnx"])
    assert [f["status"] for f in json.loads(result.stdout)["files"]] == ["unusable", "written"]


# -- scans skip staging folders ----------------------------------------------------------------


def test_check_and_batch_scans_skip_staging_folders(tmp_path):
    real = plain_model(tmp_path / "a.onnx")
    for stage in (tmp_path / ".bnfold-tmp-123-abcdefgh", tmp_path / "sub" / ".bnfold-tmp-77-zzzzzzzz"):
        stage.mkdir(parents=True)
        plain_model(stage / "a.onnx")

    check = run("check", tmp_path)
    fold = run("optimize", tmp_path, "--no-validate", "--json")

    assert check.exit_code == 1 and check.stdout.splitlines() == [
        f"{real}: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"]
    assert fold.exit_code == 0, fold.output
    assert [f["input"] for f in json.loads(fold.stdout)["files"]] == [str(real)]


# -- sweeping stale staging folders ------------------------------------------------------------


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def owner(of: int, **changes) -> dict:
    """The owner file a staging folder of process ``of`` holds (start time made up for a dead one)."""
    identity = {"host": socket.gethostname(), "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                "pid": of, "start": start_time(of) if of == os.getpid() else 12345}
    return {**identity, **changes}


def stage(folder: Path, pid: int, marker: dict | None, files=("m.onnx",), commit: bool = False,
          suffix: str = "abcdefgh") -> Path:
    path = folder / f".bnfold-tmp-{pid}-{suffix}"
    path.mkdir()
    if marker is not None:
        (path / (".bnfold-commit" if commit else ".bnfold-owner")).write_text(json.dumps(marker))
    for name in files:
        (path / name).write_bytes(b"staged " + name.encode())
    return path


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


@needs_proc
def test_sweep_removes_only_what_is_provably_stale(tmp_path, dead_pid):
    me = os.getpid()
    stale = [
        stage(tmp_path, dead_pid, owner(dead_pid), suffix="dead0000"),  # its process is gone
        stage(tmp_path, me, owner(me, start=start_time(me) + 1), suffix="reused00"),  # pid reused since
        stage(tmp_path, me, owner(me, boot="another-boot"), suffix="reboot00"),  # the machine rebooted since
        stage(tmp_path, dead_pid, None, files=(), suffix="noowner0"),  # died before writing its owner file
    ]
    kept = [
        stage(tmp_path, me, owner(me), suffix="alive000"),  # in use: this very process
        stage(tmp_path, dead_pid, owner(dead_pid, host="another-host"), suffix="remote00"),  # a shared folder
        stage(tmp_path, dead_pid, owner(dead_pid, pid=dead_pid + 1), suffix="mismatch"),  # not what it claims
        stage(tmp_path, dead_pid, None, suffix="unowned0"),  # not empty and nobody's: not provably ours
    ]
    other = tmp_path / ".bnfold-tmp-notapid"
    other.mkdir()

    removed = staging.sweep(tmp_path)

    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + [other.name])


def side_id(path: Path) -> dict:
    st = os.lstat(path)
    return {"side": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]}


@needs_proc
def test_sweep_rolls_an_interrupted_move_forward(tmp_path, dead_pid):
    """SIGKILL between the two renames of a move: the new side file is in place, the new model still
    staged, with a commit file naming the side file moved. The sweep finishes the move, if that
    side file is still the one in place; otherwise (or if nothing was moved yet) it removes the stage."""
    for name in ("m", "n", "o"):
        (tmp_path / f"{name}.onnx").write_bytes(b"old model")
        (tmp_path / f"{name}.onnx.data").write_bytes(b"new data")
    stage(tmp_path, dead_pid, owner(dead_pid), files=("m.onnx",), suffix="mmmmmmmm")
    stage(tmp_path, dead_pid, owner(dead_pid), files=("n.onnx",), suffix="nnnnnnnn")
    stage(tmp_path, dead_pid, owner(dead_pid), files=("o.onnx", "o.onnx.data"), suffix="oooooooo")
    (tmp_path / ".bnfold-tmp-{}-mmmmmmmm".format(dead_pid) / ".bnfold-commit").write_text(
        json.dumps(side_id(tmp_path / "m.onnx.data")))
    (tmp_path / ".bnfold-tmp-{}-nnnnnnnn".format(dead_pid) / ".bnfold-commit").write_text(
        json.dumps(side_id(tmp_path / "n.onnx.data")))
    (tmp_path / "n.onnx.data").unlink()  # replaced since (restored by hand, say): not the one moved
    (tmp_path / "n.onnx.data").write_bytes(b"restored data")

    assert len(staging.sweep(tmp_path)) == 3

    assert listing(tmp_path) == ["m.onnx", "m.onnx.data", "n.onnx", "n.onnx.data", "o.onnx", "o.onnx.data"]
    assert (tmp_path / "m.onnx").read_bytes() == b"staged m.onnx"  # rolled forward
    assert (tmp_path / "n.onnx").read_bytes() == (tmp_path / "o.onnx").read_bytes() == b"old model"


@needs_proc
def test_a_write_sweeps_its_folder_first(tmp_path, dead_pid):
    src = plain_model(tmp_path / "a.onnx")
    stage(tmp_path, dead_pid, owner(dead_pid), files=("a.onnx",))

    result = run("optimize", src, "--in-place", "--no-validate")

    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == ["a.onnx"]


# -- signals -----------------------------------------------------------------------------------


def test_a_signal_raises_interrupted_with_the_shell_exit_code():
    with signals.raising(), pytest.raises(signals.Interrupted) as caught:
        signal.raise_signal(signal.SIGTERM)
    assert (caught.value.signum, caught.value.exit_code, str(caught.value)) == (
        signal.SIGTERM, 143, "interrupted by SIGTERM")


def test_held_stretch_runs_whole_and_the_signal_follows():
    done = []
    with signals.raising(), pytest.raises(signals.Interrupted) as caught:
        with signals.held():
            signal.raise_signal(signal.SIGHUP)
            done.append("after the signal")
        done.append("never")
    assert done == ["after the signal"] and caught.value.signum == signal.SIGHUP


def test_only_the_first_signal_counts():
    with signals.raising():
        with pytest.raises(signals.Interrupted):
            signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # dropped: the clean-up the first one started goes on
        with signals.held():
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
