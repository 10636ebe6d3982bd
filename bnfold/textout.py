"""Text for people, written by bnfold: lines, colour on a terminal, and boxed tables.

The tables look as rich drew them (a heavy head, light rows) but are never wrapped: each row is one
line however long its cells, so ``grep`` finds a node's whole name on one line of a CI log, and
laying out 20,000 rows costs what printing them costs (rich's layout took 35-41 ms for the 56 rows
of a real model's report, and 12 s for 20,000). Colour only when the stream is a terminal
(``NO_COLOR`` turns it off, ``FORCE_COLOR`` on). Cells must already be ``text.printable``: the only
escape sequences in them are the colours ``paint`` adds, which take no width. A stream whose
encoding has no box characters (``PYTHONIOENCODING=ascii``, a latin-1 terminal) gets ASCII boxes,
``->`` for ``→``, and backslash escapes for what else it cannot encode: a report, never an
encoding error after the model was written.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import IO

_CODES = {"bold": "1", "red": "31", "green": "32", "yellow": "33"}
_ANSI = re.compile("\x1b\\[[0-9;]*m")

#: A row of this value draws a rule across the table (the end of a section).
SECTION = None

#: Box characters: the top rule, the head's edges, the rule under the head, a section's rule, a
#: row's edges, the bottom rule; a rule is (left, bar, crossing, right), edges are (outer, inner).
UNICODE_BOX = ("┏━┳┓", "┃┃", "┡━╇┩", "├─┼┤", "││", "└─┴┘")
ASCII_BOX = ("+-++", "||", "+=++", "+-++", "||", "+-++")
_ASCII_WORDS = str.maketrans({"→": "->", "×": "x", "±": "+/-", "…": "..."})


def wants_color(stream: IO[str]) -> bool:
    """Colour for a terminal, unless ``NO_COLOR`` (https://no-color.org) or a dumb terminal says no."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def width(text: str) -> int:
    """Terminal cells ``text`` takes: colours none, wide (East Asian) characters two, combining marks none."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


class Out:
    """Where a report is written: ``line``, ``table`` and ``paint`` (``stream`` defaults to stdout)."""

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.color = wants_color(self.stream) if color is None else color
        self.encoding = getattr(self.stream, "encoding", None) or "utf-8"
        try:
            "".join(UNICODE_BOX + ("→×±",)).encode(self.encoding)
            self.box = UNICODE_BOX
        except (UnicodeEncodeError, LookupError):
            self.box = ASCII_BOX

    def _encodable(self, text: str) -> str:
        if self.box is UNICODE_BOX:
            return text
        try:
            return text.translate(_ASCII_WORDS).encode(self.encoding, "backslashreplace").decode(self.encoding)
        except LookupError:  # an encoding Python does not know: ASCII is in every one
            return text.translate(_ASCII_WORDS).encode("ascii", "backslashreplace").decode("ascii")

    def paint(self, text: str, style: str) -> str:
        """``text`` in a style of ``_CODES`` (as it is when colour is off)."""
        return f"\x1b[{_CODES[style]}m{text}\x1b[0m" if self.color else text

    def line(self, text: str = "") -> None:
        self.stream.write(self._encodable(text) + "\n")

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[str] | None], *, title: str | None = None,
              right: Iterable[str] = (), caption: str | None = None) -> None:
        """A boxed table: ``right`` names the right-aligned columns; a ``SECTION`` row draws a rule."""
        fix = self._encodable
        body: list[Sequence[str] | None] = [None if row is None else [fix(c) for c in row] for row in rows]
        self.stream.write(render_table([fix(c) for c in columns], body, title=title and fix(title),
                                       right={fix(c) for c in right}, caption=caption and fix(caption), box=self.box))


def render_table(columns: Sequence[str], rows: list[Sequence[str] | None], *, title: str | None = None,
                 right: frozenset[str] | set[str] = frozenset(), caption: str | None = None,
                 box: tuple[str, ...] = UNICODE_BOX) -> str:
    """The text of ``Out.table``."""
    sizes = [width(c) for c in columns]
    for row in rows:
        if row is not None:
            if len(row) != len(columns):
                raise ValueError(f"a row of {len(row)} cells in a table of {len(columns)} columns")
            sizes = [max(s, width(cell)) for s, cell in zip(sizes, row)]
    flags = [c in right for c in columns]

    def cells(row: Sequence[str], edge: str, inner: str) -> str:
        padded = [(" " * (s - width(c)) + c) if r else (c + " " * (s - width(c))) for c, s, r in zip(row, sizes, flags)]
        return f"{edge} " + f" {inner} ".join(padded) + f" {edge}\n"

    def rule(left: str, bar: str, mid: str, end: str) -> str:
        return left + mid.join(bar * (s + 2) for s in sizes) + end + "\n"

    top, head, under, section, body, bottom = box
    parts = [title + "\n"] if title else []
    parts += [rule(*top), cells(columns, *head), rule(*under)]
    parts += [rule(*section) if row is None else cells(row, *body) for row in rows]
    if rows and rows[-1] is None:
        parts.pop()
    parts.append(rule(*bottom))
    if caption:
        parts.append(caption + "\n")
    return "".join(parts)
