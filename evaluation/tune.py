"""Choose state rules and blend weights on the validation part, never on the test part.

The validation part precedes the test part (70/10/20 by default): state is
built from the first 70%, the next 10% is predicted, and the candidate with the
best validation HR@10 (NDCG@10 breaks ties) wins. The test run then rebuilds
everything from the first 80% with the winner.

State rules change what ``fold`` writes, so each rules candidate costs one
pass; blend candidates are cheap by comparison and share a pass (one state
read, many ``blend`` calls per event).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from consumer.logic import SessionRules
from core.events import ClickEvent
from evaluation.prequential import EvalSetup, Method, prequential
from serving.blend import BlendConfig

T = TypeVar("T")

log = logging.getLogger("streamrec.evaluate")

DAY_MS = 24 * 3600 * 1000
# "No gap": longer than the whole of MovieLens (1995..2023 is ~10^4 days), so a
# user's last items pair across sessions. MovieLens ratings come in bursts that
# the 30-minute gap splits, while serving reads the last items across sessions.
NO_GAP_MS = 100_000 * DAY_MS


@dataclass(frozen=True, slots=True)
class Candidate:
    rules: SessionRules
    cfg: BlendConfig

    def label(self) -> str:
        r, c = self.rules, self.cfg
        gap = "none" if r.gap_ms >= NO_GAP_MS else f"{r.gap_ms // 60000}min"
        return (
            f"gap={gap} win={r.pair_window} linear={r.linear_pair_weights} decay={c.recency_decay} "
            f"src={c.history_items} w_emb={c.w_emb} w_trend={c.w_trend} "
            f"per_item={c.candidates_per_item} pop_damping={c.pop_damping} "
            f"forward_weight={r.forward_weight}"
        )


def default_grid(rules: SessionRules, cfg: BlendConfig) -> list[Candidate]:
    """A small grid around the given settings: each option moves one setting away
    from them (pairing window, weighting, span and direction; then blend weights)."""
    rule_options = [
        rules,
        rules.model_copy(update={"pair_window": _other(rules.pair_window, 5, 10)}),
        rules.model_copy(update={"linear_pair_weights": not rules.linear_pair_weights}),
        rules.model_copy(update={"gap_ms": NO_GAP_MS}),
        rules.model_copy(update={"forward_weight": _other(rules.forward_weight, 1, 2)}),
    ]
    blend_options = [
        cfg,
        cfg.model_copy(update={"recency_decay": _other(cfg.recency_decay, 0.6, 0.8)}),
        cfg.model_copy(update={"w_emb": _other(cfg.w_emb, 0.5, 0.25)}),
        cfg.model_copy(update={"w_trend": _other(cfg.w_trend, 0.05, 0.2)}),
        cfg.model_copy(update={"pop_damping": _other(cfg.pop_damping, 0.0, 0.25)}),
    ]
    seen: set[Candidate] = set()
    out: list[Candidate] = []
    for r in rule_options:
        for c in blend_options:
            cand = Candidate(r, c)
            if cand not in seen:
                seen.add(cand)
                out.append(cand)
    return out


def _other(value: T, first: T, second: T) -> T:
    """``first``, or ``second`` when ``value`` already is ``first``."""
    return second if value == first else first


def tune(
    events: Sequence[ClickEvent],
    valid_start: int,
    test_start: int,
    grid: Sequence[Candidate],
    setup: EvalSetup,
) -> tuple[Candidate, list[dict[str, Any]]]:
    """The best candidate on events[valid_start:test_start] and every candidate's scores."""
    by_rules: dict[SessionRules, list[BlendConfig]] = {}
    for cand in grid:
        by_rules.setdefault(cand.rules, []).append(cand.cfg)
    rows: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], Candidate] | None = None
    for rules, cfgs in by_rules.items():
        methods = [Method(f"c{i}", cfg) for i, cfg in enumerate(cfgs)]
        # One index for the whole validation part, whatever the test run does.
        part = replace(setup.with_rules(rules), reindex_every=0)
        run = prequential(events, valid_start, test_start, methods, part)
        for m in methods:
            res = run.methods[m.name]
            cand = Candidate(rules, m.cfg)
            rows.append(
                {
                    "candidate": cand.label(),
                    "rules": rules.model_dump(),
                    "blend": m.cfg.model_dump(),
                    "hr@10": res["hr@10"],
                    "hr@20": res["hr@20"],
                    "ndcg@10": res["ndcg@10"],
                }
            )
            score = (res["hr@10"], res["ndcg@10"])
            if best is None or score > best[0]:
                best = (score, cand)
        log.info("validation pass for %s done in %.0f s", rules, run.seconds)
    assert best is not None, "empty grid"
    return best[1], rows
