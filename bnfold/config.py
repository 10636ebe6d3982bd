"""Settings from ``[tool.bnfold]`` in the nearest ``pyproject.toml``; command-line flags override them.

::

    [tool.bnfold]
    atol = 1e-4                      # judge check --fix's validation elementwise (default: bnfold's criterion)
    rtol = 1e-3
    reference = "float64"            # judge against the exact answer (default "original")
    accept_unproven = false          # fix even what validation could not prove (default false)
    disable = ["bn-linear"]          # rules that do not run (names as in bnfold/rules/)
    ignore = ["third_party/**", "*.quant.onnx"]   # paths skipped by ``check``

The file is found by walking up from the current directory; the first ``pyproject.toml`` found
is the project's, whether or not it has a ``[tool.bnfold]`` table (a parent project's settings
never leak into a nested one). ``ignore`` globs are relative to that file's folder.

An unknown key, a value of the wrong type or an unknown rule name is a
``UsageError`` naming it (the CLI turns it into one line and exit 2).
"""

from __future__ import annotations

import functools
import math
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


KEYS = ("atol", "rtol", "reference", "accept_unproven", "disable", "ignore")


@dataclass(frozen=True)
class Settings:
    """``[tool.bnfold]``, validated. Defaults mean "not set": per-dtype tolerances, every rule, no ignore.

    Attributes:
        atol, rtol: judge ``check --fix``'s validation elementwise with these (None: bnfold's criterion).
        reference: "original" or "float64" (``--reference``); accept_unproven: ``--accept-unproven``.
        disable: names of rules that do not run.
        ignore: glob patterns of paths ``check`` skips, relative to ``root``.
        root: the folder of the ``pyproject.toml`` read (None when there was none).
    """

    atol: float | None = None
    rtol: float | None = None
    reference: str | None = None
    accept_unproven: bool | None = None
    disable: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    root: Path | None = None


def find_pyproject(start: Path) -> Path | None:
    """The first ``pyproject.toml`` in ``start`` or one of its parents."""
    start = Path(os.path.abspath(start))
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_settings(start: Path, rule_names: Iterable[str] | None = None) -> Settings:
    """Read ``[tool.bnfold]`` from the pyproject.toml nearest to ``start``.

    ``rule_names`` are the names ``disable`` may use (default: ``RULE_NAMES``, those of ``DEFAULT_RULES``).
    """
    path = find_pyproject(start)
    if path is None:
        return Settings()
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    tool = doc.get("tool", {})
    if not isinstance(tool, dict):
        raise UsageError(f"{path}: 'tool' must be a table, not {tool!r}")
    table = tool.get("bnfold", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.bnfold] must be a table, not {table!r}")
    return _parse(table, path, rule_names)


def _parse(table: dict, path: Path, rule_names: Iterable[str] | None) -> Settings:
    where = f"{path}: [tool.bnfold]"
    for key in table:
        if key not in KEYS:
            raise UsageError(f"{where}: unknown key '{key}' (known: {', '.join(KEYS)})")
    tolerances: dict[str, float | None] = {}
    for key in ("atol", "rtol"):
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise UsageError(f"{where}: '{key}' must be a number >= 0, not {value!r}")
        if value is not None and not math.isfinite(value):  # TOML has nan and inf; neither is a tolerance
            raise UsageError(f"{where}: '{key}' must be a finite number, not {value!r}")
        tolerances[key] = None if value is None else float(value)
    lists = {}
    for key in ("disable", "ignore"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{where}: '{key}' must be a list of strings, not {value!r}")
        lists[key] = tuple(value)
    check_rule_names(lists["disable"], f"{where}: 'disable'", rule_names)
    check_globs(lists["ignore"], f"{where}: 'ignore'")
    reference = table.get("reference")
    if reference is not None and reference not in ("original", "float64"):
        raise UsageError(f"{where}: 'reference' must be \"original\" or \"float64\", not {reference!r}")
    accept = table.get("accept_unproven")
    if accept is not None and not isinstance(accept, bool):
        raise UsageError(f"{where}: 'accept_unproven' must be true or false, not {accept!r}")
    return Settings(atol=tolerances["atol"], rtol=tolerances["rtol"], reference=reference, accept_unproven=accept,
                    disable=lists["disable"], ignore=lists["ignore"], root=path.parent)


#: The names of ``bnfold.rules.DEFAULT_RULES``, in their order (``tests/test_config.py`` keeps the two
#: equal): names are checked without importing the rules, which import onnx and onnx-graphsurgeon.
RULE_NAMES = (
    "conv-bn", "convtranspose-bn", "gemm-bn", "matmul-bn", "qdq-bn", "concat-bn", "bn-layout-linear", "bn-linear",
    "affine-linear", "qdq-affine", "bn-scale", "activation-scale",
)


def check_rule_names(names: Iterable[str], where: str, rule_names: Iterable[str] | None = None) -> None:
    """Raise UsageError naming the first of ``names`` that is not a rule (default: ``RULE_NAMES``)."""
    known = list(RULE_NAMES if rule_names is None else rule_names)
    for name in names:
        if name not in known:
            raise UsageError(f"{where}: unknown rule '{name}' (rules: {', '.join(known)})")


# -- ignore globs ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """A regex for a path glob: ``*`` and ``?`` stay within one folder, ``**`` crosses folders.

    As in ``.gitignore``, a pattern without ``/`` (a trailing one aside) matches a file or folder
    name at any depth (``*.quant.onnx``, ``legacy/``); one with ``/`` matches from the base
    folder (``models/old/**``, ``/top.onnx``). ``[abc]``, ``[a-z]`` and ``[!a-z]`` match one
    character. ValueError for a pattern that is not a glob (a bad range such as ``[z-a]``).
    """
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.strip("/")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            out.append(_char_class(pattern[i + 1:end], pattern))
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(prefix + "".join(out))


def _char_class(body: str, pattern: str) -> str:
    """``[...]`` of a glob as a regex class, every character escaped, ranges checked."""
    negate = body.startswith("!")
    body = body[1:] if negate else body
    parts, k = [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise ValueError(f"bad character range {low}-{high} in '{pattern}'")
            parts.append(f"{re.escape(low)}-{re.escape(high)}")
            k += 3
        else:
            parts.append(re.escape(body[k]))
            k += 1
    return ("[^" if negate else "[") + "".join(parts) + "]"


def check_globs(patterns: Iterable[str], where: str) -> None:
    """UsageError naming the first of ``patterns`` that is not a valid ignore glob."""
    for pattern in patterns:
        try:
            glob_regex(_polarity(pattern)[1])
        except (ValueError, re.error) as exc:
            raise UsageError(f"{where}: '{pattern}' is not a valid glob ({exc})") from None


def _polarity(pattern: str) -> tuple[bool, str]:
    """``(ignores, glob)``: ``!glob`` re-includes (as in .gitignore); ``\\!`` starts a literal ``!``."""
    if pattern.startswith("!"):
        return False, pattern[1:]
    if pattern.startswith("\\!"):
        return True, pattern[1:]
    return True, pattern


def is_ignored(path: str | Path, patterns: Iterable[tuple[Path, str]]) -> bool:
    """Whether ``path`` is ignored; each pattern is (base folder, glob), in the order given.

    As in ``.gitignore`` the last pattern that matches decides: a plain one ignores, a ``!`` one
    re-includes (``["models/**", "!models/keep.onnx"]``). A pattern matches a path when it
    matches the path or one of its folders, relative to the pattern's base folder (a path outside
    it never matches). Unlike git, a file can be re-included even when a pattern ignores its
    whole folder.
    """
    absolute = Path(os.path.abspath(path))
    ignored = False
    for base, pattern in patterns:
        try:
            parts = absolute.relative_to(os.path.abspath(base)).parts
        except ValueError:
            continue
        ignores, glob = _polarity(pattern)
        if ignores == ignored:
            continue  # cannot change the outcome
        regex = glob_regex(glob)
        if any(regex.fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
            ignored = ignores
    return ignored
