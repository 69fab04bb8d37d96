"""The learned ranker (serving/ranker.py, evaluation/ranker.py): its features, its
training, its shipping in an index version, and the API ranking with it exactly
as the evaluation does, on a real Redis."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serving_api import IDS, TITLES, VECTORS, make_index, settings_for

from consumer.state import PartitionBatch, StoreConfig
from consumer.store import RedisStateWriter
from core.events import ClickEvent
from core.settings import RedisSettings
from evaluation.memory import MemoryState
from evaluation.prequential import EvalSetup, Method, index_builder_for, prequential
from evaluation.ranker import TrainingRows, build_index, train
from offline import job
from offline.index import ItemIndex, load_current, publish
from offline.job import OfflineSettings
from producer.movielens import load_ratings, to_events
from serving.app import create_app
from serving.blend import BlendConfig, Candidates, Reason, Scored, blend
from serving.ranker import (
    FEATURES,
    Moment,
    PoolConfig,
    Ranker,
    StaleRanker,
    candidate_pool,
    features,
    ranker_of,
)
from serving.settings import ServingSettings

MIN = 60_000
COL = {name: i for i, name in enumerate(FEATURES)}
FLAT = BlendConfig(pop_damping=0.0, w_content=0.0)


def col(x: np.ndarray, row: int, name: str) -> float:
    return float(x[row, COL[name]])


# -- features ------------------------------------------------------------------------------
def test_features_known_answers() -> None:
    cands = Candidates(
        sources=["a", "b"],
        co={"a": [("x", 4.0), ("y", 2.0)], "b": [("x", 1.0)]},
        emb={"a": [("z", 0.5), ("x", -0.2)]},
        trending=[("x", 10.0), ("t", 5.0)],
        popularity={"x": 99.0},
    )
    pool = candidate_pool(cands, set(), FLAT, PoolConfig(pool=10, trend_extra=5))
    names = [s.item_id for s in pool]
    assert set(names) == {"x", "y", "z", "t"}  # t only from the trending head
    # a at 10 min, b at 5 min; the stream clock 2 h on: a return visit.
    moment = Moment.of(130 * MIN, [(10 * MIN, "a"), (5 * MIN, "b")], 30 * MIN)
    x = features(cands, pool, moment, FLAT)
    assert x.shape == (4, len(FEATURES))
    r = {name: names.index(name) for name in names}
    # x: row a holds it at 4/4 (rank 0), row b at 1/1, decay 0.8 for b.
    assert col(x, r["x"], "co_sum") == pytest.approx(1.0 + 0.8 * 1.0)
    assert col(x, r["x"], "co_max") == 1.0
    assert col(x, r["x"], "co_log_count") == pytest.approx(math.log1p(4.0))
    assert (col(x, r["x"], "co_source"), col(x, r["x"], "co_rank")) == (0.0, 0.0)
    assert col(x, r["x"], "co_sources") == 2.0
    assert col(x, r["x"], "emb_sum") == 0.0  # negative cosines count for nothing
    assert col(x, r["x"], "trend") == 1.0 and col(x, r["x"], "trend_rank") == 0.0
    assert col(x, r["x"], "log_pop") == pytest.approx(math.log1p(99.0))
    assert col(x, r["y"], "co_sum") == 0.5 and col(x, r["y"], "co_rank") == 1.0
    assert math.isnan(col(x, r["y"], "trend_rank")) and math.isnan(col(x, r["y"], "log_pop"))
    assert col(x, r["z"], "emb_max") == 0.5 and col(x, r["z"], "emb_source") == 0.0
    assert math.isnan(col(x, r["z"], "co_source"))
    assert col(x, r["t"], "trend") == 0.5 and col(x, r["t"], "personalised") == 0.0
    assert col(x, r["t"], "reason") == 3.0
    # The blend's own view: its order is the pool's.
    assert [col(x, i, "blend_position") for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert col(x, 0, "blend_score") == pool[0].score
    # The user and the moment: 2 entries, 2 sources, 120 min since the newest.
    for i in range(4):
        assert col(x, i, "history_len") == 2.0 and col(x, i, "n_sources") == 2.0
        assert col(x, i, "log_gap_s") == pytest.approx(math.log1p(120 * 60))
        assert col(x, i, "new_session") == 1.0 and col(x, i, "session_len") == 0.0
        # One earlier visit, begun with b: not in today's trending head.
        assert col(x, i, "visits") == 1.0 and col(x, i, "start_trend") == 0.0
    popular_start = replace(cands, trending=[("b", 3.0)])
    assert col(features(popular_start, pool, moment, FLAT), 0, "start_trend") == 1.0


def test_the_linear_model_s_features_and_extras() -> None:
    cands = Candidates(
        sources=["a", "b"],
        co={"a": [("x", 4.0)]},
        emb={},
        trending=[],
        linear={"a": [("x", 0.4), ("w", 0.2)], "b": [("w", 0.1), ("v", 0.05)]},
    )
    size = PoolConfig(pool=10, trend_extra=0, linear_extra=5)
    pool = candidate_pool(cands, set(), FLAT, size)
    # x from the blend; w (0.5 + 0.8 * 1.0) then v (0.8 * 0.5) from the linear rows,
    # each explained by the source of its largest term, unscored by the blend.
    assert [s.item_id for s in pool] == ["x", "w", "v"]
    assert [(s.reason.kind, s.reason.because_of, s.score) for s in pool[1:]] == [
        ("co_clicked", "b", 0.0),
        ("co_clicked", "b", 0.0),
    ]
    x = features(cands, pool, Moment.of(None, [], 30 * MIN), FLAT)
    assert [col(x, 0, f) for f in ("lin_sum", "lin_max", "lin_source", "lin_rank")] == [
        1.0, pytest.approx(0.4), 0.0, 0.0
    ]  # fmt: skip
    assert col(x, 1, "lin_sum") == pytest.approx(1.3) and col(x, 1, "lin_rank") == 0.0
    assert col(x, 2, "lin_source") == 1.0 and col(x, 2, "lin_rank") == 1.0
    # Never an excluded item, a source, or one the request's rule refuses; at most n.
    assert [s.item_id for s in candidate_pool(cands, {"v"}, FLAT, size)] == ["x", "w"]
    ruled = candidate_pool(cands, set(), FLAT, size, allow=lambda i: i != "w")
    assert [s.item_id for s in ruled] == ["x", "v"]
    one = PoolConfig(pool=10, trend_extra=0, linear_extra=1)
    assert [s.item_id for s in candidate_pool(cands, set(), FLAT, one)] == ["x", "w"]
    # Without linear rows the columns stay at their absent values.
    bare = features(Candidates(["a"], {}, {}, []), pool[:1], Moment.of(None, [], 30 * MIN), FLAT)
    assert col(bare, 0, "lin_sum") == 0.0 and math.isnan(col(bare, 0, "lin_rank"))


def test_the_moment_is_the_stream_clock_never_before_the_newest_entry() -> None:
    history = [(50 * MIN, "a"), (45 * MIN, "b"), (5 * MIN, "c")]
    mid = Moment.of(60 * MIN, history, 30 * MIN)
    assert mid.now_ms == 60 * MIN
    pool = [Scored("x", 1.0, blend_reason())]
    x = features(Candidates(["a"], {}, {}, []), pool, mid, FLAT)
    # 10 minutes since the newest: the same session, which holds a and b (not c).
    assert col(x, 0, "new_session") == 0.0 and col(x, 0, "session_len") == 2.0
    # The visit before the current one began (and ended) with c.
    assert col(x, 0, "visits") == 1.0 and col(x, 0, "start_trend") == 0.0
    # A clock behind the user's own newest click (item state lags): now = that click.
    assert Moment.of(40 * MIN, history, 30 * MIN).now_ms == 50 * MIN
    assert Moment.of(None, [], 30 * MIN).now_ms == 0
    cold = features(Candidates([], {}, {}, []), pool, Moment.of(None, [], 30 * MIN), FLAT)
    assert col(cold, 0, "history_len") == 0.0 and math.isnan(col(cold, 0, "log_gap_s"))
    assert col(cold, 0, "visits") == 0.0 and math.isnan(col(cold, 0, "start_trend"))


def test_the_candidate_s_age_runs_from_its_first_click_to_the_stream_clock() -> None:
    pool = [Scored(i, 1.0, blend_reason()) for i in ("old", "new", "future")]
    first = {"old": 0, "new": 59 * MIN, "future": 70 * MIN}
    x = features(
        Candidates(["a"], {}, {}, [], first_seen=first), pool, Moment.of(60 * MIN, [], MIN), FLAT
    )
    assert col(x, 0, "log_age_s") == pytest.approx(math.log1p(3600.0))
    assert col(x, 1, "log_age_s") == pytest.approx(math.log1p(60.0))
    # A first click after the clock (the clock lags the build) reads as age 0.
    assert col(x, 2, "log_age_s") == 0.0
    # An item the version never saw (first clicked after its build) has no age.
    unseen = features(Candidates(["a"], {}, {}, []), pool[:1], Moment.of(0, [], MIN), FLAT)
    assert math.isnan(col(unseen, 0, "log_age_s"))


def blend_reason() -> Reason:
    return blend(Candidates([], {}, {}, [("x", 1.0)]), set(), 1, FLAT)[0].reason


# -- training ------------------------------------------------------------------------------
def synthetic_rows(seed: int, queries: int = 400) -> TrainingRows:
    """Queries where the answer is always the pooled item with the highest trend
    feature, whatever the blend's order: what a model must learn to rank."""
    rng = np.random.default_rng(seed)
    rows = TrainingRows(FLAT, PoolConfig(pool=20, trend_extra=0))
    for _ in range(queries):
        x = rng.random((20, len(FEATURES)))
        x[:, COL["blend_position"]] = np.arange(20)
        label = np.zeros(20)
        label[int(np.argmax(x[:, COL["trend"]]))] = 1.0
        rows.blocks.append(x)
        rows.labels.append(label)
        rows.predictions += 1
    return rows


def test_training_learns_what_the_blend_order_misses() -> None:
    ranker, report = train(synthetic_rows(0), params={"min_data_in_leaf": 20})
    assert report.queries == 400 and report.trees >= 1
    fresh = synthetic_rows(1, queries=100)
    top1 = sum(
        int(np.argmax(ranker.scores(x)) == int(np.argmax(y)))
        for x, y in zip(fresh.blocks, fresh.labels, strict=True)
    )
    # The blend's order would be right 1 time in 20; the model most of the time.
    assert top1 >= 70


def test_a_ranker_round_trips_through_its_text_and_refuses_other_text() -> None:
    ranker, _ = train(synthetic_rows(2), params={"min_data_in_leaf": 20})
    again = Ranker.from_text(ranker.to_text())
    x = synthetic_rows(3, queries=5).blocks[0]
    assert again.size == ranker.size
    wider = Ranker(ranker.booster, PoolConfig(linear_extra=7))
    assert Ranker.from_text(wider.to_text()).size.linear_extra == 7
    # A model written before the linear extras existed draws none.
    older = json.loads(ranker.to_text())
    del older["linear_extra"]
    assert Ranker.from_text(json.dumps(older)).size.linear_extra == 0
    assert np.array_equal(again.reference_scores(x), ranker.reference_scores(x))
    for bad in ("", "{}", '{"pool": 1, "trend_extra": 0, "model": "no trees here"}'):
        with pytest.raises(ValueError, match="not a ranker model"):
            Ranker.from_text(bad)
    other = ranker.to_text().replace('"blend_score"', '"other"', 1).replace("blend_score", "other")
    with pytest.raises(StaleRanker, match="features"):
        Ranker.from_text(other)
    # A version shipping such a model (another release's) loads; the blend ranks.
    assert (
        ranker_of(ItemIndex.from_vectors(IDS, VECTORS, titles=TITLES, ranker_model=other)) is None
    )


@pytest.fixture(scope="module")
def compiled_ranker() -> Ranker:
    ranker, _ = train(synthetic_rows(6), params={"min_data_in_leaf": 20})
    assert ranker.compile() and ranker.compiled  # as the server's loader compiles it
    return ranker


def thresholds(ranker: Ranker) -> dict[int, list[float]]:
    """Each feature's split thresholds in the model."""
    out: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            out.setdefault(node["split_feature"], []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in ranker.booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 140), seed=st.integers(0, 2**32 - 1))
def test_the_compiled_trees_score_as_lightgbm_does(
    compiled_ranker: Ranker, n: int, seed: int
) -> None:
    """Pools of rows drawn at, beside and between the model's own thresholds,
    NaN and infinities included: the compiled scores equal LightGBM's within
    1e-12 and order the pool the same (ties on item id, as rank does)."""
    ranker = compiled_ranker
    cuts = thresholds(ranker)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 25, (n, len(FEATURES)))
    for j in range(len(FEATURES)):
        near = np.array([t + d for t in cuts.get(j, [0.5]) for d in (0.0, -1e-12, 1e-12)])
        kind = rng.integers(0, 4, n)
        x[kind == 1, j] = rng.choice(near, int((kind == 1).sum()))
        x[kind == 2, j] = rng.choice([math.nan, math.inf, -math.inf, 0.0], int((kind == 2).sum()))
    native, reference = ranker.scores(x), ranker.reference_scores(x)
    assert np.allclose(native, reference, rtol=1e-12, atol=1e-15)
    items = [f"i{k}" for k in range(n)]

    def order(s: np.ndarray) -> list[str]:
        return sorted(items, key=lambda i: (-s[int(i[1:])], i))

    assert order(native) == order(reference)


def test_without_lleaves_lightgbm_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    ranker, _ = train(synthetic_rows(7), params={"min_data_in_leaf": 20})
    monkeypatch.setitem(sys.modules, "lleaves", None)  # as if not installed
    assert not ranker.compile() and not ranker.compiled
    x = synthetic_rows(8, queries=1).blocks[0]
    assert np.array_equal(ranker.scores(x), ranker.reference_scores(x))


def test_compiled_trees_are_kept_in_the_version_and_read_back(tmp_path: Path) -> None:
    """Compiling costs seconds of CPU per process: the object code is kept in the
    version's directory and the next process reads it, scoring the same. A file
    whose content does not match its name (truncated, overwritten) is compiled
    again, never loaded: lleaves would load it without a check."""
    trained, _ = train(synthetic_rows(9), params={"min_data_in_leaf": 20})
    text = trained.to_text()
    x = synthetic_rows(10, queries=1).blocks[0]
    want = trained.reference_scores(x)

    def fresh() -> Ranker:
        ranker = Ranker.from_text(text)
        ranker.cache_dir = tmp_path
        return ranker

    first = fresh()
    assert first.compile() and first.compiled_from == "compiled"
    kept = sorted(tmp_path.glob("ranker-trees-*.o"))
    assert len(kept) == 1 and not list(tmp_path.glob(".trees-*"))
    assert kept[0].stat().st_mode & 0o777 == 0o644  # readable by an API of another user
    second = fresh()
    assert second.compile() and second.compiled_from == "cache"
    assert np.allclose(second.scores(x), want, rtol=1e-12, atol=1e-15)
    assert np.array_equal(second.scores(x), first.scores(x))
    # Another model (other trees) does not take this one's object code.
    other, _ = train(synthetic_rows(11), params={"min_data_in_leaf": 20})
    other.cache_dir = tmp_path
    assert other.compile() and other.compiled_from == "compiled"
    assert len(list(tmp_path.glob("ranker-trees-*.o"))) == 2
    # Damaged: compiled again and kept whole beside it; still the same scores.
    kept[0].write_bytes(kept[0].read_bytes()[:1000])
    third = fresh()
    assert third.compile() and third.compiled_from == "compiled"
    assert np.allclose(third.scores(x), want, rtol=1e-12, atol=1e-15)
    for path in tmp_path.glob("ranker-trees-*.o"):  # the damaged file replaced by a whole one
        assert hashlib.sha256(path.read_bytes()).hexdigest()[:24] == path.stem.rsplit("-", 1)[1]
    again = fresh()
    assert again.compile() and again.compiled_from == "cache"


def test_trees_compile_where_the_version_cannot_keep_them(tmp_path: Path) -> None:
    trained, _ = train(synthetic_rows(12), params={"min_data_in_leaf": 20})
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    trained.cache_dir = not_a_dir
    assert trained.compile() and trained.compiled_from == "compiled"
    x = synthetic_rows(13, queries=1).blocks[0]
    assert np.allclose(trained.scores(x), trained.reference_scores(x), rtol=1e-12, atol=1e-15)


def test_an_api_with_the_ranker_off_does_not_compile_it(tmp_path: Path) -> None:
    trained, _ = train(synthetic_rows(14), params={"min_data_in_leaf": 20})
    index = ItemIndex.from_vectors(IDS, VECTORS, titles=TITLES, ranker_model=trained.to_text())
    index.directory = tmp_path
    ranker = ranker_of(index, compile=False)
    assert ranker is not None and not ranker.compiled and ranker.cache_dir == tmp_path
    x = synthetic_rows(15, queries=1).blocks[0]
    ranker.scores(x)  # first use compiles, keeping the trees with the version
    assert ranker.compiled and list(tmp_path.glob("ranker-trees-*.o"))


def test_lambdarank_trains_too_and_reports_its_metric() -> None:
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "min_data_in_leaf": 20}
    _, report = train(synthetic_rows(5), params=params)
    assert report.valid_metric == "ndcg@10" and 0 < report.valid_score <= 1
    assert "valid_ndcg@10" in report.as_dict()


def test_too_few_queries_is_a_clear_error() -> None:
    rows = synthetic_rows(4, queries=5)
    with pytest.raises(ValueError, match="too few to train"):
        train(rows)


# -- on real data: the shipped version, and the API against the evaluation ------------------
@pytest.fixture(scope="module")
def movielens_stream(movielens_dir: Path) -> tuple[list[ClickEvent], object]:
    df = load_ratings(movielens_dir, limit=8_000)
    return list(to_events(df)), df


@pytest.mark.realdata
def test_build_index_ships_a_ranker_in_the_version(
    movielens_stream: tuple[list[ClickEvent], object], tmp_path: Path
) -> None:
    _, df = movielens_stream
    settings = OfflineSettings(dim=16, ranker_events=1_500)
    index = build_index(df, tmp_path, settings)  # type: ignore[arg-type]
    described = index.manifest.params["ranker"]
    assert described["queries"] >= 50 and described["trees"] >= 1
    loaded = load_current(tmp_path)
    assert loaded.version == index.version
    ranker = ranker_of(loaded)
    assert ranker is not None and ranker.describe()["trees"] == described["trees"]
    # Compiled once by the build and kept in the version: a loading API reads them.
    assert ranker.compiled_from == "cache"
    assert list((tmp_path / "index" / loaded.version).glob("ranker-trees-*.o"))
    off = build_index(df, tmp_path / "off", settings.model_copy(update={"ranker": False}))  # type: ignore[arg-type]
    assert "ranker" not in off.manifest.params and ranker_of(load_current(tmp_path / "off")) is None
    # The same data builds the same version: nothing timed goes into its content hash.
    again = build_index(df, tmp_path / "again", settings)  # type: ignore[arg-type]
    assert again.version.split("-")[1] == index.version.split("-")[1]
    assert "seconds" not in described


@pytest.mark.realdata
def test_the_api_ranks_with_the_version_s_ranker_as_the_evaluation_does(
    movielens_stream: tuple[list[ClickEvent], object],
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> None:
    """One scorer: the same state in Redis (the consumer's writer) and in memory,
    the same ranker; the API on both paths, item cache on and off, answers as
    ``Ranker.rank`` does in the evaluation, item for item."""
    events, df = movielens_stream
    warm, train_from = 6_000, 4_000
    offline = OfflineSettings(dim=16, linear=True)  # its rows are read on every path too
    serving = ServingSettings()
    setup = EvalSetup(
        serving=serving, offline=offline, index_builder=index_builder_for(df, offline)
    )  # type: ignore[arg-type]
    rows = TrainingRows(serving.blend)
    prequential(events, train_from, warm, [Method("blend", serving.blend)], setup, rows.observe)
    ranker, report = train(rows)
    shipped = (ranker.to_text(), report.as_dict())
    index = job.build_index(df, tmp_path, offline, before_ts=events[warm].ts, ranker=shipped)  # type: ignore[arg-type]

    config = StoreConfig()
    memory = MemoryState(config)
    writer = RedisStateWriter(redis_settings.client(), redis_settings.keys, config)
    for lo in range(0, warm, 500):
        batch = [PartitionBatch(0, lo, lo + 500, list(enumerate(events[lo : lo + 500], lo)))]
        memory.apply("t", batch)
        writer.apply("t", batch)

    users = list(dict.fromkeys(e.user_id for e in events[warm - 2_000 : warm]))[:25]
    cfg, spec = serving.blend, serving.read_spec(10)
    expected: dict[str, list[tuple[str, str, str | None]]] = {}
    reordered = 0
    for user in users:
        us = memory.read_user(user, spec)
        emb = index.similar_many(us.sources, cfg.candidates_per_item) if us.sources else {}
        linear = index.linear_rows(us.sources, cfg.candidates_per_item)
        cands = Candidates(
            us.sources, us.co, emb, us.trending, us.pop, linear=linear, first_seen=index.first_seen
        )
        moment = Moment.of(us.clock, us.history, serving.session_gap_ms)
        ranked = ranker.rank(cands, set(us.history_items), 10, cfg, moment)
        expected[user] = [(s.item_id, s.reason.kind, s.reason.because_of) for s in ranked]
        reordered += [s.item_id for s in ranked] != [
            s.item_id for s in blend(cands, set(us.history_items), 10, cfg)
        ]
    assert reordered >= 5  # the ranker is at work, not the blend's order passed through
    assert index.linear is not None and len(index.linear) > 100  # its rows are read too

    base_settings = settings_for(redis_settings, tmp_path)
    for fast in (True, False):
        for staleness in (1.0, 0.0):
            settings = base_settings.model_copy(
                update={"fast_path": fast, "item_staleness_s": staleness}
            )
            with TestClient(create_app(settings)) as client:
                for user in users:
                    body = client.get(f"/recommendations/{user}", params={"k": 10}).json()
                    got = [
                        (i["item_id"], i["reason"]["kind"], i["reason"]["because_of"])
                        for i in body["items"]
                    ]
                    assert got == expected[user], (user, fast, staleness)


def test_a_version_whose_ranker_does_not_parse_keeps_the_old_one(
    redis_settings: RedisSettings, tmp_path: Path
) -> None:
    old = make_index()
    publish(old, tmp_path)
    with TestClient(create_app(settings_for(redis_settings, tmp_path))) as c:
        assert c.get("/health").json()["index_version"] == old.version
        time.sleep(1.1)  # a later build second: a distinct, newer version name
        broken = ItemIndex.from_vectors(IDS, VECTORS, titles=TITLES, ranker_model="not a model")
        publish(broken, tmp_path)
        deadline = time.monotonic() + 10.0
        while c.get("/stats").json()["index_load_failures"] == 0:
            assert time.monotonic() < deadline, "the broken version was never tried"
        assert c.get("/health").json()["index_version"] == old.version
        assert c.get("/recommendations/u1", params={"k": 3}).status_code == 200
