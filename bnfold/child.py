"""One child process: a bnfold worker run with a request, a time limit, and an account of its end.

onnxruntime can crash the process on some valid models (an opset-9 BN declaring empty outputs
segfaults), onnx.reference can take tens of GB, and a Loop may never end. So validation
(``bnfold._validate_worker``, which runs ``bnfold._exact_worker`` in turn) and latency
(``bnfold.latency._worker``) run in children, and a crash, a time-out or an interrupt becomes a
one-line message, never a dead or stalled bnfold.

Parent side: ``run(argv, request, timeout=, memory_fraction=, on_event=)`` returns ``Ended``
(``argv``: ``command(module)`` for a bnfold worker).

- ``request`` (a JSON object) is written to a file in a private temporary folder, with
  ``result`` (where the child writes its JSON answer), ``parent`` (our pid) and, if asked,
  ``memory_limit`` (bytes of address space) added; the file's path is the last argument;
- the child runs in a process group of its own (a terminal's Ctrl-C reaches bnfold alone, which
  decides), spawned with the terminating signals held (no interrupt between the fork and the
  parent knowing the child), stdin closed;
- its stdout is an event stream, one JSON object per line (``Progress``), each passed to
  ``on_event``; the text of the last ``{"event": "stage"}`` is what it was doing when it ended;
- its stderr goes to a file (a full pipe cannot block it), of which the last ``STDERR_TAIL``
  bytes are kept;
- whatever else than the child's exit ends the wait (its time limit, ``signals.Interrupted``,
  any exception, from ``on_event`` too), the child's process group is killed (SIGKILL) and reaped
  before ``run`` returns or raises: within a fraction of a second of a signal. A child also dies
  with its parent (Linux: ``PR_SET_PDEATHSIG``), so even a SIGKILL of bnfold, or of a child that
  runs a child of its own, leaves no orphan.

Child side: a worker module ends with ``sys.exit(child.serve(main))``; ``serve`` reads the
request, sets the death signal and the memory limit, gives ``main(request, progress)`` a
``Progress`` on the original stdout (everything else written to stdout, native code included,
goes to stderr), writes the dict ``main`` returns as the result and sends ``{"event": "done"}``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import signals

#: The stage of a child that has said nothing yet.
STARTING = "starting"
#: Bytes of a child's stderr kept (its end: where the reason is).
STDERR_TAIL = 64 << 10
#: A line on the event stream longer than this is dropped (not an event of ours).
MAX_EVENT_BYTES = 1 << 20
#: Longest last line of stderr quoted in a message.
LINE_LIMIT = 300

EventCallback = Callable[[dict], None]


def command(module: str) -> list[str]:
    """How to run a bnfold worker module with this interpreter (``python -m module``)."""
    return [sys.executable, "-m", module]


def signal_name(returncode: int) -> str | None:
    """The name of the signal that ended a process with ``returncode`` (``SIGSEGV``), None if it exited."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclass(frozen=True)
class Ended:
    """How a child ended. ``returncode``: its exit status, or minus the signal that ended it
    (SIGKILL, -9, when the parent killed it at its time limit: ``timed_out``); ``stage``: what it
    last said it was doing; ``stderr``: the end of its stderr; ``result``: the JSON object it
    wrote (None if it wrote none, or none that parses)."""

    returncode: int
    timed_out: bool
    stage: str
    stderr: str
    result: dict | None

    @property
    def ok(self) -> bool:
        """It exited normally and answered (its answer may still report an error of its own)."""
        return self.returncode == 0 and not self.timed_out and self.result is not None

    @property
    def killed_by(self) -> str | None:
        """The signal that ended it (``SIGSEGV``), None if it exited or was killed at its time limit."""
        return None if self.timed_out else signal_name(self.returncode)

    @property
    def last_line(self) -> str:
        """The last non-empty line of its stderr, on one line, at most ``LINE_LIMIT`` characters."""
        lines = self.stderr.strip().splitlines()
        return " ".join(lines[-1].split())[:LINE_LIMIT] if lines else ""

    def failure(self, failed: str) -> str:
        """Why there is no result (not for a time-out: the caller knows what its limit means):
        ``the runtime crashed (SIGSEGV) while <stage>`` when a signal killed it (a native crash,
        or the OOM killer's SIGKILL), else ``<failed> while <stage>: <last line of stderr>``."""
        if self.killed_by is not None:
            return f"the runtime crashed ({self.killed_by}) while {self.stage}"
        return f"{failed} while {self.stage}: {self.last_line or 'no message'}"


def run(argv: Sequence[str], request: dict, *, timeout: float | None = None, memory_fraction: float | None = None,
        on_event: EventCallback | None = None) -> Ended:
    """Run ``[*argv, REQUEST.json]`` as described in the module docstring: at most ``timeout``
    seconds (None: no limit), with its address space limited to ``memory_fraction`` of the memory
    bnfold may use (``limits.usable_memory``; where that can be set), each event of its stdout
    passed to ``on_event``."""
    with tempfile.TemporaryDirectory(prefix="bnfold-child-") as folder:
        paths = {k: os.path.join(folder, f"{k}.json") for k in ("request", "result")}
        full = {**request, "result": paths["result"], "parent": os.getpid()}
        limit = _memory_bytes(memory_fraction)
        if limit is not None:
            full["memory_limit"] = limit
        Path(paths["request"]).write_text(json.dumps(full))
        deadline = None if timeout is None else time.monotonic() + timeout
        with open(os.path.join(folder, "stderr.txt"), "w+b") as err:
            proc = None
            try:
                with signals.held():
                    proc = _spawn([*argv, paths["request"]], err)
                stage, timed_out = _follow(proc, deadline, on_event)
            finally:
                if proc is not None:
                    with signals.held():  # the clean-up runs whole; a signal meanwhile is raised after it
                        _stop(proc)
            stderr = _tail(err)
        return Ended(proc.returncode, timed_out, stage, stderr, _read_result(paths["result"]))


def _spawn(args: list[str], err: IO[bytes]) -> subprocess.Popen[bytes]:
    """The child, in a process group of its own (its pid is the group's id), stdout a pipe."""
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, process_group=0)


def _follow(proc: subprocess.Popen[bytes], deadline: float | None, on_event: EventCallback | None) -> tuple[str, bool]:
    """Read the child's events until it closes its stdout, then wait for it: (last stage, timed out)."""
    stage, pending = STARTING, b""
    assert proc.stdout is not None, "_spawn makes stdout a pipe"
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return stage, True
            if not selector.select(left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > MAX_EVENT_BYTES:
                pending = b""
            for line in lines:
                stage = _event(line, stage, on_event)
    if pending:
        stage = _event(pending, stage, on_event)
    try:
        proc.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return stage, True
    return stage, False


def _event(line: bytes, stage: str, on_event: EventCallback | None) -> str:
    try:
        event = json.loads(line)
    except ValueError:
        return stage
    if not isinstance(event, dict):
        return stage
    if event.get("event") == "stage" and isinstance(event.get("text"), str):
        stage = event["text"]
    if on_event is not None:
        on_event(event)
    return stage


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group unless the child was reaped already, and reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.stdout is not None, "_spawn makes stdout a pipe"
    proc.stdout.close()


def _tail(err: IO[bytes]) -> str:
    size = err.seek(0, os.SEEK_END)
    err.seek(max(size - STDERR_TAIL, 0))
    return err.read().decode(errors="replace")


def _read_result(path: str) -> dict | None:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _memory_bytes(fraction: float | None) -> int | None:
    if fraction is None:
        return None
    from .limits import usable_memory

    usable = usable_memory()
    return None if usable is None else int(usable * fraction)  # (unknown: no limit, still bounded by time)


def model_file(model, folder: str | os.PathLike, name: str) -> Path:
    """A file a child can load for ``model``: a path stays itself; an ``onnx.ModelProto`` is written
    to ``folder/name`` (``io.write_model``: its weights go to a side file when the model would
    exceed protobuf's 2 GB)."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    from .io import write_model

    path = Path(folder) / name
    write_model(model, path)
    return path


# -- the child's side ---------------------------------------------------------------------------


class Progress:
    """The child's event stream to its parent: one JSON object per line."""

    def __init__(self, stream):
        self.stream = stream

    def send(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def stage(self, text: str, **fields) -> None:
        """Say what the child is doing now (the parent names it if the child dies)."""
        self.send("stage", text=text, **fields)


def serve(main: Callable[[dict, Progress], dict], argv: Sequence[str] | None = None) -> int:
    """A worker's life (see the module docstring); returns its exit status."""
    request_path = (sys.argv[1:] if argv is None else argv)[0]
    progress = Progress(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)  # stray prints (ours or native) go to stderr, never into the event stream
    sys.stdout = sys.stderr
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals.HELD)  # spawned with them held
    with open(request_path) as fh:
        request = json.load(fh)
    _die_with_parent(request.get("parent"))
    if request.get("memory_limit"):
        _limit_memory(request["memory_limit"])
    result = main(request, progress)
    partial = request["result"] + ".partial"
    with open(partial, "w") as fh:
        json.dump(result, fh)
    os.replace(partial, request["result"])  # the parent reads a whole result or none
    progress.send("done")
    return 0


def _die_with_parent(parent: int | None) -> None:
    """Be killed when the parent dies (Linux); exit now if it already has."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the parent's clean-up is all there is
        return
    prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _limit_memory(limit: int) -> None:
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # no limit where it cannot be set: still bounded by time
        pass
