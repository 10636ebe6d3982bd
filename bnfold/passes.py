"""Run rewrite rules over a graph to a fixed point.

Each round offers every live node of a rule's anchor types to the rules for that type, in graph
order, and applies the first rule whose match and check succeed. Graph order means a chain
Conv → BN → BN folds in one round (the second BN sees the Conv the first fold left behind);
rounds repeat until one applies nothing, and that last round's refusals are the report. Only
anchor nodes are revisited, so a round costs O(anchors), the pass O(nodes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NoFold
from .graph import FoldGraph
from .rules.base import Fold, Refusal, Rule


@dataclass(frozen=True)
class PassResult:
    folds: tuple[Fold, ...] = ()
    refusals: tuple[Refusal, ...] = ()  # of the last round: every anchor node left, with its reason


def _try_rules(node, rules: Sequence[Rule], graph: FoldGraph, scope: str) -> Fold | Refusal | None:
    """Apply the first rule that folds ``node``; otherwise the refusal of the rule that came closest
    (None when no rule matched and none of them reports unmatched nodes)."""
    best: Refusal | None = None
    for rule in rules:
        stage = "match"
        try:
            match = rule.match(node, graph)
            stage = "check"
            plan = rule.check(match, graph)
        except NoFold as exc:
            refusal = Refusal(rule.name, node.name, node.op, exc.reason, stage, scope)
            if best is None or (best.stage == "match" and stage == "check"):
                best = refusal
            continue
        fold = rule.rewrite(plan, graph)
        return dataclasses.replace(fold, graph=scope)
    assert best is not None
    if best.stage == "match" and not any(rule.report_unmatched for rule in rules):
        return None
    return best


def run_rules(graph: FoldGraph, rules: Sequence[Rule]) -> PassResult:
    """Fold everything ``rules`` can fold in ``graph``; report every anchor node left, with its reason."""
    scope = graph.scope
    by_anchor: dict[str, list[Rule]] = {}
    for rule in rules:
        for op in rule.anchors:
            by_anchor.setdefault(op, []).append(rule)
    candidates = graph.nodes_by_op(by_anchor)
    folds: list[Fold] = []
    while True:
        refusals: list[Refusal] = []
        remaining = []
        for node in candidates:
            if graph.is_removed(node):
                continue
            outcome = _try_rules(node, by_anchor[node.op], graph, scope)
            if isinstance(outcome, Fold):
                folds.append(outcome)
                continue
            if outcome is not None:
                refusals.append(outcome)
            remaining.append(node)
        if len(remaining) == len(candidates) or not remaining:
            return PassResult(tuple(folds), tuple(refusals))
        candidates = remaining
