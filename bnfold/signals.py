"""Termination signals as an exception in the main thread, and the stretches they must not cut.

``raising()`` (the CLI runs every command inside it) turns SIGINT, SIGTERM and SIGHUP into
``Interrupted`` raised in the main thread, as Python does with KeyboardInterrupt for SIGINT
alone, so ``finally`` clauses and context managers run: staging folders are removed, child
processes killed. Guarantees:

* only the first signal counts: it is raised once, and later ones are dropped, so the clean-up
  it starts is never itself cut short (every wait in it is bounded; SIGKILL still ends it);
* ``held()`` marks a stretch that must run whole (the renames that move an output into place,
  the removal of a staging folder, a message on a pipe): the signals are blocked there with
  ``pthread_sigmask`` (so even a signal left at its default action, for a library caller, waits)
  and a signal caught meanwhile is raised when the stretch ends;
* a worker process (``bnfold.workers``) ignores the terminating signals, which its parent
  handles, and is told to roll back its job with ``ABORT`` (SIGUSR1), which raises only inside
  ``abortable()``: elsewhere it is noted and raised when the next ``abortable()`` starts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Parent to worker: roll back (or, when it is already moving into place, finish) the job you hold.
ABORT = signal.SIGUSR1
HELD = (*TERMINATING, ABORT)


class Interrupted(BaseException):
    """A terminating signal arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it pass)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (SIGINT 130)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.name}"


class _State:
    caught: int | None = None  # the first signal: the only one that counts
    pending: int | None = None  # caught while it could not be raised; raised at the next chance
    held = 0  # depth of held() blocks
    armed = False  # whether a signal may be raised now (always in the CLI; in a worker, in a job)


def _on_signal(signum: int, frame) -> None:
    if _State.caught is not None:
        return
    _State.caught = signum
    if _State.held or not _State.armed:
        _State.pending = signum
        return
    raise Interrupted(signum)


def _raise_pending() -> None:
    if _State.pending is not None and _State.armed and not _State.held:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)


def install(signums=TERMINATING) -> None:
    """Raise ``Interrupted`` for the first of ``signums`` from now on (main thread only)."""
    for signum in signums:
        signal.signal(signum, _on_signal)
    _State.armed = True


@contextlib.contextmanager
def raising(signums=TERMINATING) -> Iterator[None]:
    """``install`` for the block; on exit the previous handlers come back and a dropped signal is forgotten.

    Outside the main thread (signal handlers cannot be set there) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    saved = _State.pending, _State.armed
    _State.caught = _State.pending = None
    install(signums)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _State.pending, _State.armed = saved  # ``caught`` stays: a signal in the teardown is still dropped


def pending() -> int | None:
    """The signal caught and not raised yet (None if none)."""
    return _State.pending


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block whole: ``HELD`` signals are blocked in this thread and one caught meanwhile is
    raised (as Interrupted, where signals may be raised) when the outermost held block ends.
    Threads started inside inherit the block: they never take a signal from the main thread."""
    _State.held += 1  # first: a handler that runs in the call below only notes its signal
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        _State.held -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal blocked meanwhile is handled here
        _raise_pending()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Inside a held block, a stretch where a signal is raised at once (the parent's wait for its workers)."""
    saved = _State.held
    _State.held = 0
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)  # a signal blocked until now is raised here
        _raise_pending()
        yield
    finally:
        _State.held = saved  # first: a handler that runs in the call below only notes its signal
        if saved:
            signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


@contextlib.contextmanager
def abortable() -> Iterator[None]:
    """A job: in a worker, ``ABORT`` raises Interrupted inside it (at its start if it came before)."""
    saved = _State.armed
    _State.armed = True
    try:
        _raise_pending()
        yield
    finally:
        _State.armed = saved


def serve_as_worker() -> None:
    """Signal set-up of a worker process: the terminating signals are ignored (the parent decides
    and tells it with ABORT, which is caught from now on), then unblocked (a parent spawns its
    workers with them blocked, so none arrives before this)."""
    for signum in TERMINATING:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(ABORT, _on_signal)
    _State.armed = False
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
