"""The child-process harness (``bnfold.child``): what a child's end looks like to the parent.

Each test runs a small worker script (``child.serve`` like bnfold's own workers, or a bare
command) and checks what ``child.run`` reports: the result, the exit status, the signal, the
time limit, the stage named in the message, the bounded stderr, and that no process is left
once ``run`` has returned or raised (a pid that ``os.kill(pid, 0)`` no longer finds). Time
bounds are generous (a loaded 2-core machine); they separate "promptly" from "never".
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import onnx
import pytest

import builders
from bnfold import child, signals
from conftest import alive

#: Seconds within which "promptly" must have happened (a child is killed in milliseconds).
PROMPTLY = 5.0
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def worker(tmp_path: Path, body: str, name: str = "worker.py") -> list[str]:
    """A command running ``body`` as ``main(request, progress)`` of a worker served by ``child.serve``."""
    path = tmp_path / name
    path.write_text("import os, subprocess, sys, time\nfrom bnfold import child\n\n"
                    "def main(request, progress):\n" + textwrap.indent(textwrap.dedent(body), "    ") +
                    "\n\nsys.exit(child.serve(main))\n")
    return [sys.executable, str(path)]


#: A worker that starts a grandchild (sleeping), says both pids, then sleeps.
SLEEPER = """
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    progress.stage("sleeping")
    progress.send("ready", pid=os.getpid(), grandchild=grandchild.pid)
    time.sleep(600)
    return {}
"""
#: A worker that says its pid (twice: no grandchild), then sleeps.
ALONE = """
    progress.send("ready", pid=os.getpid(), grandchild=os.getpid())
    time.sleep(600)
    return {}
"""




def gone_within(pids, seconds: float = PROMPTLY) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def ready_pids(events: list[dict]) -> list[int]:
    ready = [e for e in events if e.get("event") == "ready"]
    assert ready, f"the worker never said it was ready: {events}"
    return [ready[0]["pid"], ready[0]["grandchild"]]


# -- a child that answers -----------------------------------------------------------------------


def test_request_result_and_events(tmp_path):
    command = worker(tmp_path, """
        print("noise on stdout goes to stderr")
        progress.stage("adding", setting="a")
        return {"sum": request["a"] + request["b"], "parent": request["parent"]}
    """)
    events = []

    ended = child.run(command, {"a": 2, "b": 3}, on_event=events.append)

    assert ended.ok and (ended.returncode, ended.timed_out, ended.killed_by) == (0, False, None)
    assert ended.result == {"sum": 5, "parent": os.getpid()}
    assert events == [{"event": "stage", "text": "adding", "setting": "a"}, {"event": "done"}]
    assert ended.stage == "adding"
    assert "noise on stdout goes to stderr" in ended.stderr


def test_exit_zero_without_a_result_is_not_ok():
    ended = child.run([sys.executable, "-c", "pass"], {})

    assert (ended.returncode, ended.result, ended.ok) == (0, None, False)
    assert ended.failure("the worker failed (exit 0)") == "the worker failed (exit 0) while starting: no message"


# -- how a child dies -----------------------------------------------------------------------------


def test_nonzero_exit_names_the_stage_and_the_last_line_of_stderr(tmp_path):
    command = worker(tmp_path, """
        progress.stage("reading the weights")
        raise ValueError("the weights are   not there")
    """)

    ended = child.run(command, {})

    assert (ended.returncode, ended.killed_by, ended.result, ended.ok) == (1, None, None, False)
    assert "Traceback" in ended.stderr
    assert ended.failure("validation failed") == ("validation failed while reading the weights: "
                                                  "ValueError: the weights are not there")


def test_exit_status_of_a_bare_command():
    ended = child.run([sys.executable, "-c", "import sys; sys.exit(3)"], {})

    assert (ended.returncode, ended.stage) == (3, child.STARTING)
    assert ended.failure("it failed") == "it failed while starting: no message"


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL, signal.SIGABRT])
def test_killed_by_a_signal_says_which_and_when(tmp_path, signum):
    command = worker(tmp_path, f"""
        progress.stage("creating a session of the folded model")
        os.kill(os.getpid(), {int(signum)})
        time.sleep(60)
    """)

    ended = child.run(command, {})

    assert ended.returncode == -signum and ended.killed_by == signum.name and not ended.ok
    assert ended.failure("x") == f"the runtime crashed ({signum.name}) while creating a session of the folded model"


def test_a_signal_without_a_name():
    assert child.signal_name(-200) == "signal 200"
    assert child.signal_name(0) is None and child.signal_name(1) is None


def test_time_limit_kills_the_child_and_its_group(tmp_path):
    events = []
    start = time.monotonic()

    ended = child.run(worker(tmp_path, SLEEPER), {}, timeout=5.0, on_event=events.append)

    assert time.monotonic() - start < 5.0 + PROMPTLY
    assert ended.timed_out and not ended.ok and ended.killed_by is None and ended.result is None
    assert ended.stage == "sleeping"
    assert gone_within(ready_pids(events))


def test_large_stderr_is_captured_bounded_and_does_not_block_the_child(tmp_path):
    command = worker(tmp_path, """
        line = "x" * 999 + "\\n"
        for _ in range(20_000):  # 20 MB: a pipe nobody read would have blocked it long before
            sys.stderr.write(line)
        print("the last line", file=sys.stderr)
        sys.exit(2)
    """)

    ended = child.run(command, {}, timeout=120)

    assert not ended.timed_out and ended.returncode == 2
    assert len(ended.stderr) <= child.STDERR_TAIL
    assert ended.stderr.endswith("the last line\n")
    assert ended.failure("f") == "f while starting: the last line"


def test_last_line_is_one_bounded_line():
    ended = child.Ended(1, False, "x", "first\n" + "word " * 200 + "\n\n", None)
    assert ended.last_line == ("word " * 200)[:child.LINE_LIMIT]


def test_memory_limit_applies_to_the_child(tmp_path):
    command = worker(tmp_path, """
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != request["expected"]:  # no allocation of a quarter of the machine without the limit
            return {"limit": limit, "refused": None}
        try:
            bytearray(limit)
        except MemoryError:
            return {"limit": limit, "refused": True}
        return {"limit": limit, "refused": False}
    """)
    expected = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)

    ended = child.run(command, {"expected": expected}, memory_fraction=0.25)

    assert ended.result == {"limit": expected, "refused": True}
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != expected  # the parent's own is untouched


# -- interrupts and the parent's end ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupt_kills_the_child_promptly_and_propagates(tmp_path, signum):
    """The parent gets a terminating signal while it waits: Interrupted comes out of ``run`` and the
    child and its grandchild are gone."""
    events, sent = [], []

    def on_event(event):
        events.append(event)
        if event.get("event") == "ready":
            sent.append(time.monotonic())
            threading.Timer(0.2, os.kill, (os.getpid(), signum)).start()

    with signals.raising(), pytest.raises(signals.Interrupted) as caught:
        child.run(worker(tmp_path, SLEEPER), {}, timeout=300, on_event=on_event)

    assert caught.value.signum == signum
    assert time.monotonic() - sent[0] < PROMPTLY
    assert gone_within(ready_pids(events))


def test_keyboard_interrupt_outside_the_cli_kills_the_child_too(tmp_path):
    """A library caller without ``signals.raising``: Python's own KeyboardInterrupt does the same."""
    events = []

    def on_event(event):
        events.append(event)
        if event.get("event") == "ready":
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        child.run(worker(tmp_path, SLEEPER), {}, timeout=300, on_event=on_event)

    assert gone_within(ready_pids(events))


def test_an_exception_in_the_event_callback_kills_the_child(tmp_path):
    events = []

    def on_event(event):
        events.append(event)
        if event.get("event") == "ready":
            raise RuntimeError("the progress bar broke")

    with pytest.raises(RuntimeError, match="the progress bar broke"):
        child.run(worker(tmp_path, SLEEPER), {}, timeout=300, on_event=on_event)

    assert gone_within(ready_pids(events))


@linux_only
def test_a_grandchild_run_by_the_harness_dies_with_its_parent(tmp_path):
    """What validation does (its worker runs the exact reference in a child of its own): when the
    parent's time limit kills the worker, the worker's own child (in another process group) dies
    with it."""
    inner = worker(tmp_path, ALONE, name="inner.py")
    outer = worker(tmp_path, f"""
        progress.send("outer", pid=os.getpid())
        forward = lambda e: progress.send(e.pop("event"), **e) if e.get("event") == "ready" else None
        child.run({inner!r}, {{}}, on_event=forward)
        return {{}}
    """, name="outer.py")
    events = []

    ended = child.run(outer, {}, timeout=8.0, on_event=events.append)

    assert ended.timed_out
    [outer_pid] = [e["pid"] for e in events if e["event"] == "outer"]
    assert gone_within([outer_pid, *ready_pids(events)])


@linux_only
def test_a_child_dies_when_its_parent_is_killed(tmp_path):
    """SIGKILL of bnfold itself cannot be caught; the child still does not outlive it."""
    command = worker(tmp_path, ALONE)
    pids = tmp_path / "pids"
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(f"""
        from bnfold import child
        def on_event(event):
            if event.get("event") == "ready":
                open({str(pids)!r}, "w").write(f"{{event['pid']}} {{event['grandchild']}}")
        child.run({command!r}, {{}}, on_event=on_event)
    """))
    import subprocess

    proc = subprocess.Popen([sys.executable, str(parent)])
    try:
        deadline = time.monotonic() + 120
        while not pids.exists() or len(pids.read_text().split()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the parent never started its child"
            time.sleep(0.02)
        worker_pid, _ = map(int, pids.read_text().split())
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert gone_within([worker_pid])


# -- files for a child ------------------------------------------------------------------------------


def test_model_file_keeps_a_path_and_writes_a_model(tmp_path):
    model = builders.conv_bn_model()
    assert child.model_file(tmp_path / "given.onnx", tmp_path, "x.onnx") == tmp_path / "given.onnx"

    path = child.model_file(model, tmp_path, "written.onnx")

    assert path == tmp_path / "written.onnx"
    assert onnx.load(path).graph == model.graph
