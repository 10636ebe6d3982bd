"""Text for people: names and paths made safe to print, sizes and changes in words.

Node names, tensor names and file names are the model author's text: a newline in a node name
would forge an extra finding line in ``bnfold check``'s output (for a file that does not exist),
and an escape sequence would drive the terminal. ``printable`` turns every control character (C0,
DEL, C1, line and paragraph separators, bidirectional overrides) into a visible escape (``\\n``,
``\\x1b``, ``\\u202e``). Nothing bnfold prints is read as markup (``bnfold.textout`` writes text
as it is), so ``[bold]`` in a name prints as ``[bold]``.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape: one line, inert."""
    return _CONTROL.sub(_escape, str(text))


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message (or a text) as one line of at most ``limit`` characters (``...`` if cut)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def size(n: int | None) -> str:
    """Bytes in binary units (``"-"`` for None)."""
    if n is None:
        return "-"
    value: float = n
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def change(before: int, after: int | None) -> str:
    """The relative change, signed (``""`` when it is not defined)."""
    if after is None or before == 0:
        return ""
    return f"{(after - before) / before:+.1%}"


def count(n: float) -> str:
    """A count in 3 significant digits with K, M, G: ``16.4K``, ``11.1M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def gh_data(text: str) -> str:
    """GitHub's escapes for a workflow command's message; other control characters made visible."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return printable(text)


def gh_property(text: str) -> str:
    """GitHub's escapes for a workflow command's property (``file=``, ``title=``)."""
    return gh_data(text).replace(":", "%3A").replace(",", "%2C")

