"""What a rewrite rule is, and what a pass reports.

A rule has three parts, each a method:
- ``match(node, graph)``: structure only. Starting from a node of one of the rule's ``anchors`` op types,
  find the nodes the rule is about, or raise NoFold with what is missing.
- ``check(match, graph)``: semantics. Read constants, test every precondition, do the fold math.
  Returns a plan (everything ``rewrite`` needs) or raises NoFold with a reason a user can read.
- ``rewrite(plan, graph)``: edit the graph. Never fails; returns the Fold to report.

Matches and plans are frozen dataclasses. Rules read and edit the graph through ``FoldGraph``'s
queries (``producer``, ``consumers``, ``owns``, ``constant``, ``looks_constant``, ...) and edits
(``replace_input``, ``take_output``, ``insert_after``, ``new_constant``, ...), never by rewiring
graphsurgeon's tensors and nodes themselves: FoldGraph records every edit for the export.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from ..graph import FoldGraph


@dataclass(frozen=True)
class Fold:
    """One applied rewrite: ``node`` (e.g. a BatchNormalization) was folded into ``into``.

    For what the fold saves (``bnfold.savings``): ``output`` names a tensor of the folded model
    with the shape of the removed node's output, and ``added`` the outputs of elementwise nodes the
    fold added (a MatMul's new bias Add), one op per element each. Not part of the report's identity.
    """

    rule: str
    node: str
    op: str
    into: str
    into_op: str
    graph: str = "main"
    output: str = field(default="", compare=False)
    added: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("output", "added")}


@dataclass(frozen=True)
class Refusal:
    """A node left in the model, the rule that came closest to removing it, and why it did not."""

    rule: str
    node: str
    op: str
    reason: str
    stage: str = "check"  # "match" (structure missing) or "check" (a precondition failed)
    graph: str = "main"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(node: gs.Node | None) -> str:
    """``Op 'name'`` for messages."""
    if node is None:
        return "nothing"
    return f"{node.op} '{node.name}'" if node.name else f"an unnamed {node.op}"


def label(node: gs.Node) -> str:
    """The base of the names of tensors and nodes a fold makes for ``node``: its name, else its output's."""
    return node.name or node.outputs[0].name


class Rule(ABC):
    """Base class of rewrite rules; see the module docstring for the contract."""

    #: Short identifier shown in reports and used to turn the rule off.
    name: ClassVar[str]
    #: Op types of the nodes a match starts from; the pass only offers these nodes to the rule.
    anchors: ClassVar[tuple[str, ...]]
    #: Whether an anchor node no rule matched is reported as left unfolded. True for
    #: BatchNormalization (every BN left gets a reason); False for common ops such as Mul or Add,
    #: which are only worth a word when they matched and then failed a check.
    report_unmatched: ClassVar[bool] = True

    @abstractmethod
    def match(self, node: gs.Node, graph: FoldGraph) -> Any: ...

    @abstractmethod
    def check(self, match: Any, graph: FoldGraph) -> Any: ...

    @abstractmethod
    def rewrite(self, plan: Any, graph: FoldGraph) -> Fold: ...


def distinct(nodes: list[gs.Node]) -> list[gs.Node]:
    """``nodes`` without repeats (a node reading a tensor twice is listed once), in order."""
    seen: dict[int, gs.Node] = {}
    for node in nodes:
        seen.setdefault(id(node), node)
    return list(seen.values())

