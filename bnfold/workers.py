"""A small process pool that knows which task each worker holds.

``run`` starts up to N worker processes (spawn start method: the parent may run threads, the
progress bar, and fork would copy them half-way) and feeds each one task at a time over its own
pipe. Unlike ``concurrent.futures.ProcessPoolExecutor``, which fails every pending future when one
worker dies, the parent knows what each worker holds, so:

* a worker that dies (the OOM killer's SIGKILL, a crash) fails only the task it held, with the
  reason (``died``); a new worker takes its place and the other tasks go on;
* on a signal (``Interrupted`` in the parent) no task starts any more, every worker holding one is
  sent ``signals.ABORT`` (its task rolls back, or finishes if it is already moving its output
  into place, and says which) and given ``ABORT_GRACE`` seconds, then killed. Workers ignore the
  terminating signals themselves (a terminal's Ctrl-C reaches the whole process group): the
  parent alone decides, so a task is never cut off between its steps by a signal it did not see.

The parent waits for its workers only inside ``signals.interruptible()``: sending a task,
reading a result and starting a worker are never cut in the middle.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

from . import signals
from .child import signal_name

#: Seconds a worker has to roll back its task after ABORT before it is killed.
ABORT_GRACE = 30.0
#: Seconds a worker has to exit once told to stop.
STOP_GRACE = 5.0


@dataclass
class _Worker:
    process: Any
    conn: Any
    task: int | None = None  # index of the task it holds


def run(
    tasks: Sequence[tuple],
    work: Callable[..., Any],
    size: int,
    *,
    done: Callable[[int, Any], None],
    died: Callable[[int, str], None],
) -> signals.Interrupted | None:
    """Run ``work(*tasks[i])`` for every i in ``size`` worker processes.

    ``done(i, result)`` is called in the parent as each task finishes, ``died(i, reason)`` when the
    worker holding task i died (or, after a signal, had to be killed). ``work`` must be picklable
    (a module-level function) and turn an ``Interrupted`` raised inside ``signals.abortable()``
    into its result. Returns the ``Interrupted`` that stopped the run early (tasks never handed
    out get no call), else None.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # it unblocks signals when it starts: start it first
    pool = _Pool(tasks, work, size, done, died)
    try:
        with signals.held():
            pool.loop()
    except BaseException as exc:  # a signal (or a bug here): the tasks in hand roll back, nothing else starts
        with signals.held():
            pool.abort()
        if isinstance(exc, signals.Interrupted):
            return exc
        raise
    finally:
        with signals.held():
            pool.stop()
    return None


class _Pool:
    def __init__(self, tasks, work, size, done, died):
        self.tasks, self.work, self.size, self.done, self.died = tasks, work, size, done, died
        self.todo = deque(range(len(tasks)))
        self.workers: list[_Worker] = []
        self.context = multiprocessing.get_context("spawn")

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def loop(self) -> None:
        while self.todo or self.busy():
            for w in [w for w in self.workers if w.task is None and w.process.exitcode is not None]:
                self.workers.remove(w)  # died between tasks: nothing lost, a new one starts below
                w.conn.close()
            for w in self.workers:
                if w.task is None and self.todo:
                    self._give(w, self.todo.popleft())
            while self.todo and len(self.workers) < self.size:
                self._give(self._start(), self.todo.popleft())
            with signals.interruptible():
                ready = connection.wait(self._waitables(self.busy()))
            self._collect(ready)

    def abort(self) -> None:
        """Tell every worker holding a task to roll it back; collect the answers, kill the slow."""
        busy = self.busy()
        for w in busy:
            if w.process.exitcode is None:
                os.kill(w.process.pid, signals.ABORT)
        deadline = time.monotonic() + ABORT_GRACE
        while self.busy() and time.monotonic() < deadline:
            self._collect(connection.wait(self._waitables(self.busy()), deadline - time.monotonic()))
        for w in self.busy():
            w.process.kill()
            w.process.join()
            self._lost(w, f"worker did not stop within {ABORT_GRACE:g} s of the signal and was killed")

    def stop(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for w in self.workers:
            w.process.join(max(deadline - time.monotonic(), 0))
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            w.conn.close()
        self.workers = []

    def _start(self) -> _Worker:
        # Started with signals held (we are in loop()): the worker inherits them blocked, so none
        # reaches it before it has set up its own handling (signals.serve_as_worker).
        ours, theirs = self.context.Pipe()
        logs = sys.modules.get("bnfold.logs")
        debug = logs is not None and logs.on_stderr()  # --debug: the workers' diagnostics too
        process = self.context.Process(target=_serve, args=(theirs, self.work, debug), daemon=True)
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def _give(self, w: _Worker, i: int) -> None:
        w.task = i
        try:
            w.conn.send(self.tasks[i])
        except OSError:
            pass  # it died: its sentinel says so

    @staticmethod
    def _waitables(workers: list[_Worker]) -> list:
        return [w.conn for w in workers] + [w.process.sentinel for w in workers]

    def _collect(self, ready: list) -> None:
        for w in self.busy():
            if w.conn not in ready and w.process.sentinel not in ready:
                continue
            try:
                if w.conn.poll():
                    result, i, w.task = w.conn.recv(), w.task, None
                    self.done(i, result)
                    continue
            except (EOFError, OSError):
                pass
            w.process.join(STOP_GRACE)  # its pipe closed: it is exiting, or gone
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            self._lost(w, _death(w.process.exitcode))

    def _lost(self, w: _Worker, reason: str) -> None:
        i, w.task = w.task, None
        self.workers.remove(w)
        w.conn.close()
        self.died(i, reason)


def _death(code: int | None) -> str:
    """How a worker ended, in the words ``bnfold.child`` uses for its children's signals."""
    name = signal_name(code) if code is not None else None
    if name is not None:
        return f"worker was killed by {name}{' (out of memory?)' if code == -signal.SIGKILL else ''}"
    return f"worker exited with status {code}"


def _serve(conn, work: Callable[..., Any], debug: bool = False) -> None:
    """A worker's life: tasks from ``conn`` until None (or the parent is gone), each result sent back."""
    signals.serve_as_worker()
    if debug:
        from .logs import to_stderr

        to_stderr()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        result = work(*task)
        try:
            with signals.held():
                conn.send(result)
        except OSError:
            return
