"""Exceptions bnfold raises on purpose.

``BnfoldError`` is a problem with what the user gave us (unreadable file, bad option): the CLI
prints its message on one line and exits 2. ``NoFold`` is how a rewrite rule refuses a match;
its reason ends up in the report, it never escapes the pass.
"""

#: Exit codes of every command: success; a validation failed (or, for check, something left to
#: fold); bad usage or an unusable file; a validation could not prove the fold (nothing written).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNPROVEN = 0, 1, 2, 3


class BnfoldError(Exception):
    """A user-facing error: bad input file, bad option. The message is one readable line."""


class NoFold(Exception):
    """Raised by a rule's match or check: this node does not fold, and ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
