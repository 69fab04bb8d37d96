"""Content neighbours (offline/content.py) and the content term in the evaluation."""

from __future__ import annotations

import math

import pytest

from core.catalogue import Catalogue, CatalogueItem
from core.events import ClickEvent
from evaluation.prequential import EvalSetup, Method, prequential
from offline.content import ContentIndex, features_of
from serving.blend import BlendConfig

FEATURES = {
    "a": features_of({"Drama"}, {"ghost"}),
    "b": features_of({"Drama"}, {"ghost"}),
    "c": features_of({"Drama"}, set()),
    "d": features_of({"Comedy"}, set()),
    "e": features_of({"Drama", "Comedy"}, {"ghost"}),
    "z": [],  # nothing known: in no neighbour list
}


def test_neighbours_by_tf_idf_cosine_best_first_ties_by_id() -> None:
    index = ContentIndex(FEATURES)
    assert "z" not in index and len(index) == 5
    near = index.similar("a", 10)
    assert [i for i, _ in near] == ["b", "e", "c"]  # d shares nothing with a
    assert near[0][1] == pytest.approx(1.0)
    # By hand: idf(Drama) = ln(5/4), idf(ghost) = ln(5/3), idf(Comedy) = ln(5/2).
    drama, ghost, comedy = math.log(5 / 4), math.log(5 / 3), math.log(5 / 2)
    a_norm = math.hypot(drama, ghost)
    e_norm = math.sqrt(drama**2 + ghost**2 + comedy**2)
    assert near[1][1] == pytest.approx((drama**2 + ghost**2) / (a_norm * e_norm))
    assert near[2][1] == pytest.approx(drama / a_norm)
    assert index.similar("c", 2) == [
        ("a", pytest.approx(drama / a_norm)),
        ("b", pytest.approx(drama / a_norm)),
    ]
    assert index.similar("nobody", 3) == [] and index.similar("a", 0) == []


def test_a_feature_every_item_has_weighs_nothing() -> None:
    index = ContentIndex({"x": ["c:all", "t:p"], "y": ["c:all"], "w": ["c:all", "t:p"]})
    assert index.similar("y", 5) == []  # all it has is what everyone has
    assert [i for i, _ in index.similar("x", 5)] == ["w"]


def test_cold_only_keeps_the_items_the_predicate_calls_cold() -> None:
    index = ContentIndex(FEATURES, cold=lambda item: item in {"c", "e"})
    assert [i for i, _ in index.similar("a", 10, cold_only=True)] == ["e", "c"]
    assert [i for i, _ in index.similar("a", 10)] == ["b", "e", "c"]
    assert index.similar_many(["a", "d"], 1, cold_only=True) == {
        "a": [("e", pytest.approx(index.similar("a", 2)[1][1]))],
        "d": [("e", pytest.approx(index.similar("d", 1)[0][1]))],
    }


def test_the_content_term_scores_an_item_on_its_first_click() -> None:
    """Only content can rank a never-clicked item: each user clicks a new item x_n
    and then its companion y_n (they share a tag no other item has), both seen for
    the first time. With the content term the blend ranks y_n first; without, never."""
    entries = {"old": CatalogueItem(categories=frozenset({"Any"}))}
    events = [ClickEvent("w", "old", 1_700_000_000_000)]
    ts = 1_700_000_000_000
    for n in range(20):
        for name in (f"x{n}", f"y{n}"):
            entries[name] = CatalogueItem(None, frozenset({"Any"}), frozenset({f"t{n}"}))
        ts += 3_600_000
        events += [ClickEvent(f"u{n}", f"x{n}", ts), ClickEvent(f"u{n}", f"y{n}", ts + 1000)]
    base = BlendConfig(w_emb=0.0, w_content=0.0)
    methods = [
        Method("no content", base),
        Method("content", base.model_copy(update={"w_content": 1.0})),
    ]
    setup = EvalSetup(catalogue=Catalogue(entries))
    result = prequential(events, 1, len(events), methods, setup)
    first = {m: result.methods[m]["first_click"] for m in ("no content", "content")}
    assert first["no content"]["n"] == first["content"]["n"] == 40
    assert first["no content"]["hr@10"] == 0.0
    # Every y_n (half of the first clicks) is found; the x_n come to cold users.
    assert first["content"]["hr@10"] == 0.5
    assert result.methods["content"]["mrr@10"] == pytest.approx(0.5)


_SAME_UNDER_ANY_HASH = """
import random
from offline.content import ContentIndex
rng = random.Random(7)
words = [f"w{i}" for i in range(40)]
feats = {f"i{n}": rng.sample(words, rng.randint(1, 12)) for n in range(300)}
index = ContentIndex(feats)
print(repr([index.similar(f"i{n}", 20) for n in range(300)]))
"""


def test_content_neighbours_do_not_depend_on_string_hashing() -> None:
    """The same catalogue gives bit-identical cosines in every process, whatever
    PYTHONHASHSEED says (a set's order once decided the order of float sums)."""
    import os
    import subprocess
    import sys

    def run(seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _SAME_UNDER_ANY_HASH], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run("1")
    assert first.startswith("[[(") and all(run(seed) == first for seed in ("2", "3"))
