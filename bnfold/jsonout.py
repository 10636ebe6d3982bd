"""JSON for machines: strict (RFC 8259), so any parser reads what bnfold prints.

Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats, which strict parsers
(JavaScript's ``JSON.parse``, ``jq``, Go, Rust's serde) reject. Validation errors can be NaN (an
output NaN everywhere) or infinite (a mismatch of shapes, a NaN where the original was finite):
they are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (what
``float()`` reads back), every other value as it is.
"""

from __future__ import annotations

import json
import math
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string (containers walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (raises ValueError if a non-finite float slipped through)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)
