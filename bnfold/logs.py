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

ROOT = "bnfold"

_root = logging.getLogger(ROOT)
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())  # a library's convention: no "No handlers" fallback output


def logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``__name__``), a child of ``bnfold``."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
