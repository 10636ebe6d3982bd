"""Diagnostics through ``logging``: every module logs to its own logger under ``bnfold``
(``bnfold.pipeline``, ``bnfold.folding``, ...). bnfold configures no handler and prints nothing:
a caller who wants the diagnostics configures logging (``logging.basicConfig(level=logging.DEBUG)``
or a handler on ``logging.getLogger("bnfold")``); the CLI does so for ``--debug``.

What is logged: at INFO one line per model (folds, refusals, verdict, time), at DEBUG the stages
(read, fold per scope, write, validation child) with their times. Messages are one line; names
from the model are escaped (``bnfold.text.printable``) so a node name cannot forge a log line.
"""

from __future__ import annotations

import logging
import sys

ROOT = "bnfold"

_root = logging.getLogger(ROOT)
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())  # a library's convention: no "No handlers" fallback output


def logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``__name__``), a child of ``bnfold``."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _ToStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def to_stderr() -> None:
    """The ``bnfold`` logger at DEBUG on stderr (the CLI's ``--debug``, and its batch workers);
    one handler however often it is asked for."""
    if not on_stderr():
        handler = _ToStderr()
        handler.setFormatter(logging.Formatter("bnfold: debug: %(name)s: %(message)s"))
        _root.addHandler(handler)
    _root.setLevel(logging.DEBUG)


def on_stderr() -> bool:
    """Whether ``to_stderr`` is in effect (batch workers are started the same way)."""
    return any(isinstance(h, _ToStderr) for h in _root.handlers)


def stderr_off() -> None:
    """Take back what ``to_stderr`` did (the CLI may run inside a caller's process)."""
    for handler in [h for h in _root.handlers if isinstance(h, _ToStderr)]:
        _root.removeHandler(handler)
        _root.setLevel(logging.NOTSET)

