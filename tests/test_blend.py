"""Known-answer tests of the pure blend (serving/blend.py); no I/O."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

import pytest

from serving.blend import BlendConfig, Candidates, Reason, Scored, blend, recent_sources

CO = Reason("co_clicked", "A")


Row = Sequence[tuple[str, float]]
DEFAULT = BlendConfig()


def rank(
    sources: Sequence[str],
    co: Mapping[str, Row],
    emb: Mapping[str, Row],
    trending: Row,
    exclude: Collection[str],
    k: int,
    cfg: BlendConfig = DEFAULT,
    popularity: Mapping[str, float] | None = None,
) -> list[Scored]:
    """The blend on candidates spelled out argument by argument."""
    return blend(Candidates(sources, co, emb, trending, popularity), exclude, k, cfg)


def ids(ranked: list[Scored]) -> list[str]:
    return [s.item_id for s in ranked]


def test_recent_sources_are_distinct_newest_first() -> None:
    assert recent_sources(["a", "b", "a", "c", "b", "d"], 3) == ["a", "b", "c"]
    assert recent_sources(["a", "a"], 5) == ["a"]
    assert recent_sources([], 5) == []
    assert recent_sources(["a", "b"], 0) == []


def test_co_occurrence_ranks_most_co_clicked_first() -> None:
    co = {"A": [("B", 10.0), ("C", 5.0), ("D", 1.0)]}
    ranked = rank(["A"], co, {}, [], exclude={"A"}, k=3)
    assert ids(ranked) == ["B", "C", "D"]
    # Row normalised by its max count (10): 10/10, 5/10, 1/10, times w_co = 1.
    assert [s.score for s in ranked] == pytest.approx([1.0, 0.5, 0.1])
    assert all(s.reason == CO and s.personalised for s in ranked)


def test_recency_decay_makes_newest_source_dominate() -> None:
    # The older source's row has far larger raw counts; per-row normalisation
    # puts both tops at 1.0, and the decay (0.8 for position 1) decides.
    co = {"new": [("X", 2.0)], "old": [("Y", 500.0)]}
    ranked = rank(["new", "old"], co, {}, [], exclude=(), k=2)
    assert ids(ranked) == ["X", "Y"]
    assert [s.score for s in ranked] == pytest.approx([1.0, 0.8])
    assert ranked[1].reason == Reason("co_clicked", "old")


def test_item_reached_from_two_sources_sums_and_names_the_larger() -> None:
    co = {"new": [("Z", 1.0), ("Q", 4.0)], "old": [("Z", 3.0)]}
    ranked = rank(["new", "old"], co, {}, [], exclude=(), k=2)
    # Z: 1/4 from new + 0.8 * 3/3 from old = 1.05; Q: 4/4 = 1.0.
    assert ids(ranked) == ["Z", "Q"]
    assert ranked[0].score == pytest.approx(1.05)
    assert ranked[0].reason == Reason("co_clicked", "old")


def test_embedding_only_candidate_is_similar_and_negative_cosine_is_dropped() -> None:
    co = {"A": [("B", 4.0)]}
    emb = {"A": [("E", 0.9), ("B", 0.2), ("F", -0.5)]}
    ranked = rank(["A"], co, emb, [], exclude=(), k=5, cfg=BlendConfig(w_emb=0.5))
    assert ids(ranked) == ["B", "E"]
    # B: 1.0 (co) + 0.5 * 0.2 (emb); E: 0.5 * 0.9.
    assert [s.score for s in ranked] == pytest.approx([1.1, 0.45])
    assert ranked[0].reason == CO
    assert ranked[1].reason == Reason("similar", "A")


def test_history_and_sources_are_excluded_after_normalisation() -> None:
    co = {"A": [("H", 10.0), ("B", 5.0)], "S": [("A", 9.0), ("C", 9.0)]}
    ranked = rank(["A", "S"], co, {"A": [("S", 0.99)]}, [("H", 9.0)], exclude={"H"}, k=10)
    assert "H" not in ids(ranked) and "A" not in ids(ranked) and "S" not in ids(ranked)
    # B keeps 5/10 of its row: dropping H must not promote B to 1.0.
    scores = {s.item_id: s.score for s in ranked}
    assert scores == pytest.approx({"B": 0.5, "C": 0.8})


def test_trending_fills_to_k_after_personalised_items() -> None:
    co = {"A": [("B", 3.0)]}
    trending = [("T1", 100.0), ("B", 80.0), ("T2", 50.0), ("A", 200.0), ("H", 150.0)]
    ranked = rank(["A"], co, {}, trending, exclude={"A", "H"}, k=3, cfg=BlendConfig(w_trend=0.05))
    assert ids(ranked) == ["B", "T1", "T2"]
    # B: 1.0 + 0.05 * 80/200; the filler scores are the prior alone.
    assert [s.score for s in ranked] == pytest.approx([1.02, 0.025, 0.0125])
    assert ranked[0].reason == CO and ranked[0].personalised
    assert all(s.reason == Reason("trending", None) for s in ranked[1:])
    assert not any(s.personalised for s in ranked[1:])


def test_no_sources_gives_pure_trending_with_id_tiebreak() -> None:
    trending = [("b", 5.0), ("a", 5.0), ("c", 9.0), ("d", 1.0)]
    ranked = rank([], {}, {}, trending, exclude={"d"}, k=10)
    assert ids(ranked) == ["c", "a", "b"]
    assert all(s.reason.kind == "trending" and not s.personalised for s in ranked)


def test_trending_prior_can_win_the_reason_but_item_stays_personalised() -> None:
    cfg = BlendConfig(w_trend=2.0)
    ranked = rank(["A"], {"A": [("B", 10.0), ("C", 1.0)]}, {}, [("C", 4.0)], (), 2, cfg)
    # C: 0.1 (co) + 2.0 * 1.0 (prior) = 2.1 > B: 1.0.
    assert ids(ranked) == ["C", "B"]
    assert ranked[0].reason == Reason("trending", None)
    assert ranked[0].personalised


def test_ties_break_on_item_id_whatever_the_input_order() -> None:
    row = [(f"i{n}", 1.0) for n in range(20)]
    expected = sorted(item for item, _ in row)
    rnd = random.Random(7)
    for _ in range(5):
        rnd.shuffle(row)
        assert ids(rank(["A"], {"A": list(row)}, {}, [], (), 20)) == expected


def test_k_larger_than_candidates_returns_what_exists_without_duplicates() -> None:
    ranked = rank(["A"], {"A": [("B", 1.0)]}, {"A": [("B", 0.5)]}, [("B", 1.0), ("T", 1.0)], (), 50)
    assert ids(ranked) == ["B", "T"]
    assert rank(["A"], {}, {}, [], (), 5) == []
    assert rank(["A"], {"A": [("B", 1.0)]}, {}, [], (), 0) == []


def test_candidates_per_item_bounds_each_row_and_zero_weights_switch_signals_off() -> None:
    co = {"A": [("B", 9.0), ("C", 8.0), ("D", 7.0)]}
    emb = {"A": [("E", 0.9)]}
    assert ids(rank(["A"], co, emb, [], (), 10, BlendConfig(candidates_per_item=2))) == [
        "B",
        "C",
        "E",
    ]
    assert ids(rank(["A"], co, emb, [], (), 10, BlendConfig(w_emb=0.0))) == ["B", "C", "D"]
    assert ids(rank(["A"], co, emb, [], (), 10, BlendConfig(w_co=0.0))) == ["E"]


def test_popularity_damping_divides_co_counts_by_pop_to_the_beta() -> None:
    co = {"A": [("P", 8.0), ("N", 4.0), ("U", 2.0)]}
    pop = {"P": 64.0, "N": 4.0}  # U is missing: counts as not damped
    cfg = BlendConfig(w_emb=0.0, w_trend=0.0, pop_damping=0.5)
    ranked = rank(["A"], co, {}, [], (), 3, cfg, popularity=pop)
    # Damped: P 8/8 = 1, N 4/2 = 2, U 2/1 = 2; row max 2 -> N and U 1.0, P 0.5.
    assert ids(ranked) == ["N", "U", "P"]
    assert [s.score for s in ranked] == pytest.approx([1.0, 1.0, 0.5])
    assert ranked[0].reason == CO


def test_damping_is_off_without_beta_or_without_popularity() -> None:
    co = {"A": [("P", 8.0), ("N", 4.0)]}
    pop = {"P": 64.0, "N": 1.0}
    plain = ids(rank(["A"], co, {}, [], (), 2))
    assert plain == ["P", "N"]
    no_beta = BlendConfig(pop_damping=0.0)
    assert ids(rank(["A"], co, {}, [], (), 2, no_beta, popularity=pop)) == plain
    assert ids(rank(["A"], co, {}, [], (), 2, BlendConfig(pop_damping=1.0))) == plain
    assert ids(rank(["A"], co, {}, [], (), 2, BlendConfig(pop_damping=1.0), pop)) == ["N", "P"]
