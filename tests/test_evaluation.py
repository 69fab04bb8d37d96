"""The prequential evaluation: its state twin, its metrics, and a run on a real slice."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from consumer.logic import SessionRules, fold
from consumer.settings import ConsumerSettings
from consumer.state import PartitionBatch, StoreConfig
from consumer.store import RedisStateWriter
from core.events import ClickEvent
from core.settings import RedisSettings
from evaluation.memory import MemoryState
from evaluation.metrics import BeyondTally, ItemStats, MethodResult, SessionSplit, Tally
from evaluation.prequential import (
    EvalSetup,
    catalog_size,
    default_methods,
    index_builder_for,
    prequential,
    split_points,
)
from evaluation.report import table
from evaluation.tune import Candidate, default_grid
from offline.job import OfflineSettings
from producer.movielens import load_movielens_catalogue, load_ratings, to_events
from serving.blend import BlendConfig
from serving.reader import ReadSpec, UserState
from serving.store import RedisStateReader
from streamrec.local.live_eval import live_compare

T0 = 1_600_000_000_000
MIN = 60_000


def stream(n: int, users: int = 6, items: int = 40) -> list[ClickEvent]:
    # Deterministic and uneven: a few items are frequent, sessions break hourly.
    return [
        ClickEvent(
            f"u{k % users}",
            f"i{(k * k + 3 * k) % items if k % 3 else k % 5}",
            T0 + k * MIN + (k // 9) * 60 * MIN,
        )
        for k in range(n)
    ]


# -- the in-memory state is the Redis state -------------------------------------------
def test_memory_state_equals_redis_state_with_pruning(redis_settings: RedisSettings) -> None:
    # co_top_m=4 forces pruning on most rows, the part most likely to drift.
    config = StoreConfig(rules=SessionRules(pair_window=4, history_len=7), co_top_m=4)
    client = redis.Redis.from_url(redis_settings.url)
    store = RedisStateWriter(client, redis_settings.keys, config)
    memory = MemoryState(config)
    events = stream(300)
    for lo in range(0, len(events), 25):
        chunk = events[lo : lo + 25]
        batch = PartitionBatch(0, lo, lo + len(chunk), list(enumerate(chunk, lo)))
        store.apply("t", [batch])
        memory.apply("t", [batch])
    dump, mine = store.dump(), memory.dump()
    assert dump["hist"] == mine["hist"]
    # Decayed co counts: float sums, rounded by Redis (long double) and Python apart.
    assert dump["co"].keys() == mine["co"].keys()
    for item, row in mine["co"].items():
        assert dump["co"][item] == pytest.approx(row, rel=1e-9)
    assert dump["pop"] == dict(memory.pop.top(10_000))
    # Trending is a float sum in a different order; equal up to rounding.
    trend = dict(memory.trend.top(10_000))
    assert dump["trend"].keys() == trend.keys()
    for item, score in trend.items():
        assert dump["trend"][item] == pytest.approx(score, rel=1e-9)


async def served_state(settings: RedisSettings, user: str) -> UserState:
    """What the API reads for ``user``: serving's own reference reader."""
    client = aioredis.Redis.from_url(settings.url, decode_responses=True)
    try:
        store = RedisStateReader(client, settings.keys)
        return await store.user_state(user, ReadSpec(50, 4, 6, 8))
    finally:
        await client.aclose()


def test_memory_reads_match_the_redis_reader(redis_settings: RedisSettings) -> None:
    """Sources, co rows (ties by member, descending) and the trending head, as served."""
    config = StoreConfig(rules=SessionRules(pair_window=5), co_top_m=50)
    client = redis.Redis.from_url(redis_settings.url)
    store = RedisStateWriter(client, redis_settings.keys, config)
    memory = MemoryState(config)
    events = stream(200)
    batch = PartitionBatch(0, 0, len(events), list(enumerate(events)))
    store.apply("t", [batch])
    memory.apply("t", [batch])
    for user in ("u0", "u3", "nobody"):
        served = asyncio.run(served_state(redis_settings, user))
        mine = memory.read_user(user, ReadSpec(50, 4, 6, 8))
        assert mine.history == served.history
        assert mine.sources == served.sources
        assert mine.co == served.co
        assert [i for i, _ in mine.trending] == [i for i, _ in served.trending]


# -- metrics -------------------------------------------------------------------------
def test_tally_known_answers() -> None:
    t = Tally()
    t.add(["a", "b", "c"], "a", fallback=False)  # rank 1
    t.add(["x"] * 5 + ["t"], "t", fallback=False)  # rank 6: a hit at 10 and 20 only
    t.add(["a"], "zz", fallback=True)  # miss
    s = t.summary()
    assert s["n"] == 3
    assert s["hr@5"] == pytest.approx(1 / 3)
    assert s["hr@10"] == pytest.approx(2 / 3)
    assert s["mrr@10"] == pytest.approx((1 + 1 / 6) / 3)
    # NDCG with one relevant item: 1 / log2(rank + 1); rank 6 -> 1 / log2(7).
    assert s["ndcg@10"] == pytest.approx((1 + 1 / 2.807354922057604) / 3)
    assert s["fallback"] == pytest.approx(1 / 3)


def test_split_points_put_validation_before_test() -> None:
    assert split_points(1000, 0.1, 0.2) == (700, 800)
    with pytest.raises(ValueError):
        split_points(1000, 0.5, 0.5)


def test_references_are_configurations_of_the_blend() -> None:
    methods = {m.name: m for m in default_methods(BlendConfig())}
    assert methods["popularity"].prior == "pop"
    for name in ("popularity", "trending"):
        cfg = methods[name].cfg
        assert (cfg.w_co, cfg.w_emb, cfg.w_trend) == (0.0, 0.0, 0.0)
    assert (methods["co-occurrence"].cfg.w_co, methods["co-occurrence"].cfg.w_emb) == (1.0, 0.0)
    assert (methods["embedding"].cfg.w_co, methods["embedding"].cfg.w_emb) == (0.0, 1.0)
    assert methods["blend"].cfg == BlendConfig()


# -- a real slice (CI) ----------------------------------------------------------------
def _slice_run(movielens_dir: Path, limit: int) -> dict[str, Any]:
    df = load_ratings(movielens_dir, limit=limit)
    events = list(to_events(df))
    _, test_start = split_points(len(events), 0.1, 0.2)
    run = prequential(
        events,
        test_start,
        len(events),
        default_methods(BlendConfig()),
        EvalSetup(
            offline=(offline := OfflineSettings(dim=32)),
            index_builder=index_builder_for(df, offline),
            catalog=catalog_size(df),
            catalogue=load_movielens_catalogue(movielens_dir),
        ),
    )
    return run.methods


@pytest.mark.realdata
def test_blend_beats_popularity_on_a_slice(movielens_dir: Path) -> None:
    methods = _slice_run(movielens_dir, 15_000)
    pop, mixed = methods["popularity"], methods["blend"]
    assert pop["n"] == mixed["n"] == 3000
    for k in (10, 20):
        assert mixed[f"hr@{k}"] > pop[f"hr@{k}"]
        assert mixed[f"ndcg@{k}"] > pop[f"ndcg@{k}"]
    assert mixed["fallback"] < pop["fallback"] == 1.0
    # Every warm prediction is either within a session or the first of a new one
    # (this slice has both; MovieLens users rate in long bursts, so few start one).
    within, new = mixed["within_session"], mixed["new_session"]
    assert within["n"] + new["n"] == mixed["warm"]["n"] and within["n"] > new["n"] > 0


@pytest.mark.slow
@pytest.mark.realdata
def test_full_run_clears_the_bar(movielens_dir: Path) -> None:
    """The issue's bar on ml-latest-small, default split, shipped settings."""
    df = load_ratings(movielens_dir)
    events = list(to_events(df))
    _, test_start = split_points(len(events), 0.1, 0.2)
    setup = EvalSetup(
        consumer=ConsumerSettings(),
        index_builder=index_builder_for(df, OfflineSettings()),
        catalog=catalog_size(df),
    )
    run = prequential(events, test_start, len(events), default_methods(BlendConfig()), setup)
    m = run.methods
    assert m["blend"]["hr@10"] >= 0.105
    for k in (10, 20):
        for single in ("popularity", "trending", "co-occurrence", "embedding"):
            assert m["blend"][f"hr@{k}"] > m[single][f"hr@{k}"]


@pytest.mark.slow
@pytest.mark.realdata
def test_live_stack_agrees_with_in_process(movielens_dir: Path) -> None:
    df = load_ratings(movielens_dir, limit=6000)
    events = list(to_events(df))
    start = 5000
    out = live_compare(
        df,
        events,
        range(start, len(events)),
        default_methods(BlendConfig()),
        EvalSetup(offline=OfflineSettings(dim=32), catalog=catalog_size(df)),
    )
    assert out["live"]["predictions"] == 1000
    assert out["agreement"]["relative_difference"]["hr@10"] <= 0.02


def test_linear_pair_weights_favour_adjacent_clicks() -> None:
    rules = SessionRules(pair_window=3, linear_pair_weights=True, forward_weight=1)
    events = [ClickEvent("u", x, T0 + i * MIN) for i, x in enumerate("abcd")]
    co = fold(events, {}, rules).co
    # d pairs with c (newest, weight 3), b (2), a (1); a and d never meet at flat 1.
    assert co[("d", "c")] == 3 and co[("d", "b")] == 2 and co[("d", "a")] == 1
    assert co[("c", "d")] == 3 and co[("b", "a")] == 3
    flat_rules = SessionRules(pair_window=3, linear_pair_weights=False, forward_weight=1)
    flat = fold(events, {}, flat_rules).co
    assert set(flat.values()) == {1}


def test_popularity_view_reads_the_pop_set() -> None:
    config = StoreConfig(rules=SessionRules(pair_window=3), pop_max=5)
    memory = MemoryState(config)
    memory.apply("t", [PartitionBatch(0, 0, 120, list(enumerate(stream(120))))])
    view = memory.popularity()
    head = dict(memory.pop.top(10_000))
    assert len(head) == len(view) == 5  # pruned to pop_max
    assert dict(view.items()) == head
    assert view.get("never-seen") is None
    dropped = {e.item_id for e in stream(120)} - set(head)
    assert dropped and all(view.get(item) is None for item in dropped)


def test_tune_grid_moves_one_setting_at_a_time() -> None:
    other_rules = SessionRules(pair_window=5, linear_pair_weights=False, forward_weight=1)
    other_cfg = BlendConfig(recency_decay=0.6, w_emb=0.5, w_trend=0.05, pop_damping=0.0)
    for rules, cfg in [(SessionRules(), BlendConfig()), (other_rules, other_cfg)]:
        grid = default_grid(rules, cfg)
        assert grid[0] == Candidate(rules, cfg)
        # 5 rule options x 5 blend options, none of them a copy of the base.
        assert len(set(grid)) == len(grid) == 25
        for cand in grid:
            base_rules, base_cfg = rules.model_dump(), cfg.model_dump()
            moved_rules = {k for k, v in cand.rules.model_dump().items() if base_rules[k] != v}
            moved_cfg = {k for k, v in cand.cfg.model_dump().items() if base_cfg[k] != v}
            assert len(moved_rules) <= 1 and len(moved_cfg) <= 1


def test_session_split_follows_the_consumer_rule() -> None:
    rules = SessionRules(gap_ms=30 * MIN)
    split = SessionSplit(rules)
    a0 = ClickEvent("a", "x", T0)
    assert split.starts_session(a0)  # a user's first click
    split.see(a0)
    assert not split.starts_session(ClickEvent("a", "y", T0 + 30 * MIN))  # gap = limit
    assert split.starts_session(ClickEvent("a", "y", T0 + 30 * MIN + 1))
    split.see(ClickEvent("a", "y", T0 + MIN, session_id="s1"))
    assert not split.starts_session(ClickEvent("a", "z", T0 + 2 * MIN, session_id="s1"))
    assert split.starts_session(ClickEvent("a", "z", T0 + 2 * MIN, session_id="s2"))
    assert split.starts_session(ClickEvent("b", "x", T0))  # other users are apart


def test_cold_targets_stay_out_of_the_session_split() -> None:
    r = MethodResult()
    r.add(["x"], "x", False, cold=True, new_session=True)  # a first-ever click
    r.add(["x"], "y", False, cold=False, new_session=True)  # a return visit, missed
    r.add(["x"], "x", False, cold=False, new_session=False)  # within a session, hit
    s = r.summary(catalog=10)
    assert (s["n"], s["cold"]["n"], s["warm"]["n"]) == (3, 1, 2)
    assert (s["new_session"]["n"], s["new_session"]["hr@10"]) == (1, 0.0)
    assert (s["within_session"]["n"], s["within_session"]["hr@10"]) == (1, 1.0)


def test_per_user_sums_feed_the_paired_bootstrap() -> None:
    r = MethodResult()
    r.add(["x", "y"], "y", False, cold=False, new_session=False, user="a")  # hit at rank 2
    r.add(["x"], "z", False, cold=False, new_session=False, user="a")  # miss
    r.add(["z"], "z", False, cold=False, new_session=False, user="b")  # hit at rank 1
    assert r.by_user == {"a": [2, 1, pytest.approx(1 / math.log2(3))], "b": [1, 1, 1.0]}


@pytest.mark.realdata
def test_the_slice_reports_intervals_against_the_baseline(movielens_dir: Path) -> None:
    """Every method but the baseline carries its paired interval; the table shows them."""
    methods = _slice_run(movielens_dir, 15_000)
    assert "vs_baseline" not in methods["co-occurrence"]
    base = methods["co-occurrence"]
    for name in ("popularity", "trending", "embedding", "blend"):
        vs = methods[name]["vs_baseline"]
        assert vs["baseline"] == "co-occurrence"
        for metric in ("hr@10", "ndcg@10"):
            iv = vs[metric]
            assert iv["lo"] <= iv["diff"] <= iv["hi"]
            assert iv["diff"] == pytest.approx(methods[name][metric] - base[metric])
    # Popularity is far below co-occurrence on MovieLens: its interval says so.
    assert methods["popularity"]["vs_baseline"]["hr@10"]["hi"] < 0
    text = table(methods)
    assert "ΔHR@10 vs co-occurrence [95% CI]" in text and "(baseline)" in text
    # New items: a segment of the targets, first clicks a part of it; only a
    # streaming signal (co-occurrence from the part) can score a first click at all.
    new, first = methods["co-occurrence"]["new_item"], methods["co-occurrence"]["first_click"]
    assert 0 < first["n"] <= new["n"] < methods["co-occurrence"]["n"]
    assert methods["embedding"]["first_click"]["hr@10"] == 0.0
    # Beyond accuracy: popularity ranks far more popular items than co-occurrence.
    pop, co = methods["popularity"], methods["co-occurrence"]
    assert pop["popularity_percentile@10"] > co["popularity_percentile@10"]
    assert pop["novelty@10"] < co["novelty@10"]
    assert 0 < co["ild@10"] < 1


def test_item_stats_and_the_beyond_accuracy_sums() -> None:
    # a clicked 3 times, b once, c never, d not in the counts: a catalogue of 4.
    stats = ItemStats.from_counts(
        {"a": 3, "b": 1},
        catalog=4,
        genres={"a": frozenset({"x", "y"}), "b": frozenset({"y"}), "c": frozenset({"z"})},
    )
    # Two never-clicked items share the bottom half: percentiles 0.25 (both zeros'
    # middle), b 0.625, a 0.875.
    assert stats.unseen_percentile == 0.25
    assert (stats.percentile["b"], stats.percentile["a"]) == (0.625, 0.875)
    assert stats.info["a"] == pytest.approx(-math.log2(4 / 8))
    assert stats.unseen_info == pytest.approx(3.0)
    t = BeyondTally()
    t.add(["a", "b", "c"], stats)
    s = t.summary()
    assert s["popularity_percentile@10"] == pytest.approx((0.875 + 0.625 + 0.25) / 3)
    # Jaccard distances: a-b 1 - 1/2, a-c 1, b-c 1.
    assert s["ild@10"] == pytest.approx((0.5 + 1 + 1) / 3)
    t.add(["d"], stats)  # one item: no pair, no genres; counted in the rest
    assert t.summary()["ild@10"] == pytest.approx((0.5 + 1 + 1) / 3) and t.lists == 2
    assert Tally().summary()["precision@10"] == 0.0
    one = Tally()
    one.add(["x", "y"], "y", False)
    assert (one.summary()["recall@10"], one.summary()["precision@10"]) == (1.0, 0.1)


@pytest.mark.realdata
def test_the_cli_evaluates_one_half_with_intervals(movielens_dir: Path, tmp_path: Path) -> None:
    """`streamrec evaluate --half second` on a slice: the report names the half, every
    method but the baseline has its interval, and the beyond-accuracy table is there."""
    import json

    from streamrec.cli.main import main

    argv = ["evaluate", "--path", str(movielens_dir), "--limit", "8000", "--half", "second"]
    assert main([*argv, "--dim", "16", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["dataset"].endswith("(second half)") and result["events"] == 4000
    methods = result["test"]["methods"]
    assert all("vs_baseline" in m for name, m in methods.items() if name != "co-occurrence")
    # The learned ranker is trained on the events before the part, as build-index would.
    assert "ranker" in methods and result["test"]["ranker"]["trees"] >= 1
    text = (tmp_path / "results.md").read_text()
    assert "Beyond accuracy:" in text and "ILD@10 (categories)" in text


def test_new_item_targets_are_a_segment_and_first_clicks_a_part_of_it() -> None:
    r = MethodResult()
    r.add(["n"], "n", False, cold=False, new_session=False, new_item=True, first_click=True)
    r.add(["x"], "n", False, cold=False, new_session=False, new_item=True)  # seen in the part
    r.add(["o"], "o", False, cold=False, new_session=False)  # an item of the warm-up
    s = r.summary(catalog=10)
    assert (s["new_item"]["n"], s["new_item"]["hr@10"]) == (2, 0.5)
    assert (s["first_click"]["n"], s["first_click"]["hr@10"]) == (1, 1.0)
