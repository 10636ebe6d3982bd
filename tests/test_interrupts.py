"""Signals and dead workers: ``bnfold optimize`` (batch, -j 1 and -j 2, single file) and ``check --fix``.

Each test runs the real ``bnfold`` in a subprocess in its own process group, waits until it is
demonstrably at work (``BNFOLD_TEST_PAUSE``, see ``bnfold.staging._pause``: a job stops at a point
and writes ``paused-PID`` until the file ``go`` appears), then signals or kills, and asserts within
a timeout: the exit code, which files changed (hashed), what the summary says, and that nothing
is left behind (folder listings include hidden files). A run that ignored the signal would wait at
the pause for ever and fail the timeout, so no assertion depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from conftest import alive

#: Generous: the machine may be loaded (every worker imports onnx, ~1-2 s each on 2 cores).
START_TIMEOUT = 180
EXIT_TIMEOUT = 90
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


# -- helpers -----------------------------------------------------------------------------------


def bnfold_command() -> list[str]:
    beside = Path(sys.executable).with_name("bnfold")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "bnfold.cli"]


class Run:
    """``bnfold *args`` in its own process group, paused at ``point`` (None: no pause)."""

    def __init__(self, tmp_path: Path, *args, point: str | None = "staged", cwd: Path | None = None):
        self.hold = tmp_path / "hold"
        self.hold.mkdir(exist_ok=True)
        env = {**os.environ, "COLUMNS": "250"}
        if point:
            env["BNFOLD_TEST_PAUSE"] = f"{point}:{self.hold}"
        self.proc = subprocess.Popen([*bnfold_command(), *map(str, args)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def paused(self, count: int = 1) -> list[int]:
        """Wait until ``count`` processes are paused; their pids."""
        self._wait_until(lambda: len(list(self.hold.glob("paused-*"))) >= count, f"{count} paused job(s)")
        return [int(p.name.split("-")[1]) for p in self.hold.glob("paused-*")]

    def holding(self, count: int = 1) -> None:
        """Wait until ``count`` paused processes hold a signal (at the ``commit`` point)."""
        self._wait_until(lambda: len(list(self.hold.glob("held-*"))) >= count, f"{count} held signal(s)")

    def go(self) -> None:
        (self.hold / "go").touch()

    def signal(self, signum: int) -> float:
        os.killpg(self.proc.pid, signum)
        return time.monotonic()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=EXIT_TIMEOUT)
        wait_until_group_gone(self.proc.pid)
        return self.proc.returncode, out, err

    def _wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"bnfold exited ({self.proc.returncode}) before {what}:\n{out}\n{err}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {START_TIMEOUT} s")
            time.sleep(0.02)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.communicate()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def wait_until_group_gone(pgid: int) -> None:
    """Every process of the run (workers, their validation children) is gone, soon after it exits."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    while group_members(pgid):
        assert time.monotonic() < deadline, f"processes of the run still alive: {group_members(pgid)}"
        time.sleep(0.05)


def descendants(pid: int, marker: str) -> list[int]:
    """Live processes under ``pid`` (at any depth) whose command line contains ``marker``."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found = []
    for child, command in commands.items():
        ancestor = parents.get(child)
        while ancestor not in (None, 0, 1, pid):
            ancestor = parents.get(ancestor)
        if ancestor == pid and marker in command and child in parents:
            found.append(child)
    return found




def never_ending_models(folder: Path, count: int) -> list[Path]:
    """Foldable models (Conv+BN) whose validation never ends: beside the Conv, a Loop of 10^15
    Identity steps on the input (not constant: nothing evaluates it before validation runs it)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        model = builders.conv_bn_model(seed=i)
        graph = model.graph
        shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Identity", ["v_in"], ["v_out"])],
            "forever",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, shape)])
        graph.initializer.extend([numpy_helper.from_array(np.array(10**15, dtype=np.int64), "trips"),
                                  numpy_helper.from_array(np.array(True), "keep_going")])
        graph.node.append(helper.make_node("Loop", ["trips", "keep_going", graph.input[0].name], ["Z"], body=body))
        graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, shape))
        path = folder / f"loop{i}.onnx"
        onnx.save(model, path)
        paths.append(path)
    return paths


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder``, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(paths) -> dict[str, str]:
    return {str(p): sha(p) for p in paths}


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


def models(folder: Path, count: int, external: bool = False) -> list[Path]:
    """``count`` foldable models m00.onnx...; with ``external``, each with its weights in ``<name>.data``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"m{i:02d}.onnx"
        model = builders.conv_bn_model(c_in=8, c_out=16, seed=i)  # 4.6 KiB weight: big enough for a side file
        if external:
            onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f"{path.name}.data", size_threshold=0)
        else:
            onnx.save(model, path)
        paths.append(path)
    return paths


# -- signals: batch ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_stops_a_parallel_in_place_batch(tmp_path, signum):
    """The issue's run: ``optimize DIR --in-place -j 2``; both workers hold a staged result when the
    group is signalled. Nothing new starts, both are rolled back, nothing is written at all."""
    inputs = models(tmp_path / "m", 12)
    before = hashes(inputs)
    run = Run(tmp_path, "optimize", tmp_path / "m", "--in-place", "-j", "2", "--json")
    run.paused(2)
    assert any(name.startswith(".bnfold-tmp-") for name in listing(tmp_path / "m"))  # work in progress

    run.signal(signum)
    code, out, err = run.finish()

    assert code == 128 + signum
    doc = json.loads(out)
    assert sorted(f["status"] for f in doc["files"]) == ["not started"] * 10 + ["rolled back"] * 2
    summary = {k: doc["summary"][k] for k in ("files", "written", "rolled_back", "not_started", "interrupted")}
    assert summary == {"files": 12, "written": 0, "rolled_back": 2, "not_started": 10, "interrupted": signum.name}
    assert err.splitlines()[-1] == f"bnfold: interrupted by {signum.name}: 0 written, 2 rolled back, 10 not started"
    assert hashes(inputs) == before
    assert listing(tmp_path / "m") == sorted(p.name for p in inputs)


def test_signal_stops_a_sequential_batch_and_the_summary_says_what_was_done(tmp_path):
    """-j 1 with an output folder: the job in progress is rolled back, the others never start."""
    inputs = models(tmp_path / "m", 4)
    before = hashes(inputs)
    run = Run(tmp_path, "optimize", *inputs, "-o", tmp_path / "out")
    run.paused()

    run.signal(signal.SIGTERM)
    code, out, err = run.finish()

    assert code == 143
    status = {cells[0]: cells[-1] for cells in (
        [c.strip() for c in line.strip().strip("│").split("│")] for line in out.splitlines() if "│" in line)}
    assert [status[str(p)] for p in inputs] == ["rolled back", "not started", "not started", "not started"]
    assert "interrupted by SIGTERM: 1 rolled back (nothing written), 3 not started" in out
    assert err.splitlines()[-1] == "bnfold: interrupted by SIGTERM: 0 written, 1 rolled back, 3 not started"
    assert hashes(inputs) == before
    assert listing(tmp_path / "out") == []  # the output folder was there already; nothing in it
    assert listing(tmp_path / "m") == sorted(p.name for p in inputs)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_signal_during_the_move_into_place_waits_for_it(tmp_path, jobs):
    """In place with side files, the side file and the model are two renames. A signal that comes
    between them is held until both are done: the result is written, and consistent."""
    inputs = models(tmp_path / "m", 4, external=True)
    before = hashes([*inputs, *(p.with_name(p.name + ".data") for p in inputs)])
    run = Run(tmp_path, "optimize", tmp_path / "m", "--in-place", "-j", jobs, "--json", point="commit")
    busy = len(run.paused(int(jobs)))

    run.signal(signal.SIGTERM)
    run.holding(busy)  # the signal arrived and is held: the run is stopped half-way through a move
    assert run.proc.poll() is None
    run.go()
    code, out, err = run.finish()

    assert code == 143
    doc = json.loads(out)
    written = [Path(f["input"]) for f in doc["files"] if f["status"] == "written"]
    assert len(written) == busy and doc["summary"]["not_started"] == 4 - busy
    for path in inputs:
        side = path.with_name(path.name + ".data")
        if path in written:
            assert bn_count(path) == 0  # the new model, with its new side file
            onnx.checker.check_model(onnx.load(path))
        else:
            assert {str(path): sha(path), str(side): sha(side)}.items() <= before.items()
    assert listing(tmp_path / "m") == sorted(n for p in inputs for n in (p.name, p.name + ".data"))


# -- signals: single file and check --fix --------------------------------------------------------


def test_signal_stops_a_single_file_optimize(tmp_path):
    [src] = models(tmp_path / "m", 1)
    before = sha(src)
    run = Run(tmp_path, "optimize", src, "-o", tmp_path / "m" / "out.onnx")
    run.paused()

    run.signal(signal.SIGINT)
    code, out, err = run.finish()

    assert code == 130 and out == ""
    assert err.splitlines() == [f"bnfold: interrupted by SIGINT: {src}: rolled back, nothing written"]
    assert sha(src) == before
    assert listing(tmp_path / "m") == [src.name]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_stops_check_fix_and_leaves_no_second_model(tmp_path, signum):
    """The issue's leftover: after a signal during ``check --fix`` the next ``check .`` must see
    only the real models."""
    folder = tmp_path / "models"
    inputs = models(folder, 3)
    before = hashes(inputs)
    run = Run(tmp_path, "check", "--fix", folder)
    run.paused()

    run.signal(signum)
    code, out, err = run.finish()

    assert code == 128 + signum
    assert out.splitlines() == [
        f"{inputs[0]}: rolled back (interrupted by {signum.name}; file left untouched)",
        f"{inputs[1]}: not started (interrupted by {signum.name})",
        f"{inputs[2]}: not started (interrupted by {signum.name})",
    ]
    assert err.splitlines() == [f"bnfold: interrupted by {signum.name}: 1 rolled back, 2 not started"]
    assert hashes(inputs) == before
    assert listing(folder) == sorted(p.name for p in inputs)
    again = subprocess.run([*bnfold_command(), "check", "."], cwd=folder, capture_output=True, text=True,
                           timeout=EXIT_TIMEOUT)
    assert again.returncode == 1 and len(again.stdout.splitlines()) == 3


# -- signals: the validation child ------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_signal_during_validation_kills_the_validation_process(tmp_path, jobs):
    """Validation runs in a child process of its own (``bnfold.child``), in its own process group
    (the signal to bnfold's group does not reach it): bnfold kills it, whether it runs the
    validation itself (one file) or in workers (-j 2), and none is left once bnfold has exited."""
    inputs = never_ending_models(tmp_path / "m", jobs)
    before = hashes(inputs)
    args = ["optimize", inputs[0], "-o", tmp_path / "m" / "out.onnx"] if jobs == 1 else \
        ["optimize", tmp_path / "m", "--in-place", "-j", str(jobs)]
    run = Run(tmp_path, *args, point=None)
    run._wait_until(lambda: len(descendants(run.proc.pid, "bnfold._validate_worker")) == jobs,
                    f"{jobs} validation process(es)")
    children = descendants(run.proc.pid, "bnfold._validate_worker")
    time.sleep(0.5)  # let them reach the never-ending run

    run.signal(signal.SIGINT)
    code, out, err = run.finish()

    assert code == 130, err
    assert not [c for c in children if alive(c)]
    if jobs == 1:
        assert err.splitlines() == [f"bnfold: interrupted by SIGINT: {inputs[0]}: rolled back, nothing written"]
    assert hashes(inputs) == before
    assert listing(tmp_path / "m") == sorted(p.name for p in inputs)


# -- dead workers ------------------------------------------------------------------------------


def test_a_killed_worker_fails_only_its_own_file(tmp_path):
    """What the OOM killer does: SIGKILL one worker of -j 2 while it holds a staged result. That file
    fails with the reason and is untouched; a new worker takes over; the other files are written."""
    inputs = models(tmp_path / "m", 8)
    before = hashes(inputs)
    run = Run(tmp_path, "optimize", tmp_path / "m", "--in-place", "-j", "2", "--json")
    victim = run.paused(2)[0]
    [held] = [p for p in inputs if os.path.realpath(p) == (run.hold / f"paused-{victim}").read_text()]
    os.kill(victim, signal.SIGKILL)
    run.go()
    code, out, err = run.finish()

    assert code == 2
    assert err.splitlines() == [f"bnfold: error: {held}: worker was killed by SIGKILL (out of memory?) while folding it"]
    doc = json.loads(out)
    assert doc["summary"]["written"] == 7 and doc["summary"]["unusable"] == 1
    for path in inputs:
        if path == held:
            assert sha(path) == before[str(path)]
        else:
            assert bn_count(path) == 0
    assert listing(tmp_path / "m") == sorted(p.name for p in inputs)  # its staging folder was swept


def test_a_staging_folder_left_by_sigkill_is_swept_by_the_next_run(tmp_path):
    """SIGKILL cannot be caught: the staging folder stays. The scans skip it and the next run that
    writes into that folder proves it stale (its pid is gone) and removes it."""
    [src] = models(tmp_path / "m", 1)
    out = tmp_path / "m" / "out.onnx"
    run = Run(tmp_path, "optimize", src, "-o", out)
    run.paused()
    run.signal(signal.SIGKILL)
    run.finish()
    [leftover] = [n for n in listing(tmp_path / "m") if n.startswith(".bnfold-tmp-") and "/" not in n]
    assert listing(tmp_path / "m" / leftover) == [".bnfold-owner", "out.onnx"]

    check = subprocess.run([*bnfold_command(), "check", tmp_path / "m"], capture_output=True, text=True,
                           timeout=EXIT_TIMEOUT)
    assert check.returncode == 1 and check.stdout.splitlines() == [
        f"{src}: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"]
    assert leftover in listing(tmp_path / "m")  # check alone writes nothing, and removes nothing

    again = subprocess.run([*bnfold_command(), "optimize", src, "-o", out], capture_output=True, text=True,
                           timeout=EXIT_TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert listing(tmp_path / "m") == ["m00.onnx", "out.onnx"]
