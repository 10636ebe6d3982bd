"""Exceptions bnfold raises on purpose.

``BnfoldError`` is a problem with what the user gave us (unreadable file, bad option): the CLI
prints its message on one line and exits 2. ``NoFold`` is how a rewrite rule refuses a match;
its reason ends up in the report, it never escapes the pass.
"""

#: Exit codes of every command: success; a validation failed (or, for check, something left to
#: fold); bad usage or an unusable file; a validation could not prove the fold (nothing written).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNPROVEN = 0, 1, 2, 3


class BnfoldError(Exception):
    """A user-facing error: bad input file, bad option. The message is one readable line.

    Catch it to handle every error bnfold raises on purpose; the subclasses say whose it is.
    (An interrupt is ``bnfold.signals.Interrupted``, a BaseException like KeyboardInterrupt.)
    """


class UsageError(BnfoldError, ValueError):
    """An option or argument that cannot be used: a bad tolerance, an unknown input name, an
    input shape or input set that does not fit the model, options that contradict each other,
    something that is not a model where a model is expected."""


class ModelError(BnfoldError):
    """A model that cannot be read or used: not a regular file, not ONNX, invalid, external data
    that is missing, malformed or outside the model's folder; a FOLDED model that is not
    comparable with its original."""


class OutputError(BnfoldError):
    """A result that cannot be written where asked: it would overwrite what the input reads, the
    folder does not exist, the name does not fit, the file cannot be written."""


class BackendError(BnfoldError):
    """onnxruntime could not run a model (a missing kernel, a crash of its process), so a
    measurement could not be made."""


class NoFold(Exception):
    """Raised by a rule's match or check: this node does not fold, and ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
