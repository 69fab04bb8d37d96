"""Offline job: known-answer embeddings, the index, its files and versioned publishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.catalogue import Catalogue, CatalogueItem
from core.errors import DatasetError, IndexNotFound
from offline import (
    ItemIndex,
    Manifest,
    OfflineSettings,
    build_embeddings,
    build_index,
    current_version,
    interaction_matrix,
    load_current,
    ppmi_svd_embeddings,
    publish,
)
from offline.embeddings import _DENSE_SVD_MAX_ITEMS

TS0 = 1_600_000_000_000  # 2020-09-13 in epoch ms


def two_worlds(
    rng: np.random.Generator, users_per_group: int, items_per_group: int, p: float = 0.5
) -> pd.DataFrame:
    """Users of group g consume a random half of items of group g and nothing else.

    Items "A0" and "A1" are twins: every group-A user consumes both (the benfred/
    implicit checkerboard, with a pair whose nearest neighbour is obvious).
    """
    rows = []
    ts = TS0
    for group in ("A", "B"):
        for u in range(users_per_group):
            chosen = rng.random(items_per_group) < p
            chosen[:2] = group == "A"
            for i in np.flatnonzero(chosen):
                rows.append((f"{group}u{u}", f"{group}{i}", ts, "rating", 4.0))
                ts += 1000
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "type", "weight"]).astype(
        {"ts": "int64", "type": "category", "weight": "float32"}
    )


def test_interaction_matrix_is_binary_with_items_sorted_as_strings() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "item_id": ["2", "10", "2", "10"],
            "ts": [TS0, TS0 + 1, TS0 + 2, TS0 + 3],
            "type": "click",
            "weight": [1.0, 2.0, 3.0, 4.0],
        }
    )
    matrix, items = interaction_matrix(df)
    assert items == ["10", "2"]  # lexical, not numeric
    assert matrix.toarray().tolist() == [[1.0, 1.0], [1.0, 0.0]]  # the repeated (u1, 2) is 1


def test_interaction_matrix_rejects_missing_columns() -> None:
    with pytest.raises(DatasetError, match="item_id"):
        interaction_matrix(pd.DataFrame({"user_id": ["u"]}))


# 20 items per group takes the dense SVD path, 600 the sparse (ARPACK) one.
@pytest.mark.parametrize("items_per_group", [20, 600])
def test_groups_stay_apart_and_twins_are_nearest(
    rng: np.random.Generator, items_per_group: int
) -> None:
    df = two_worlds(rng, users_per_group=40, items_per_group=items_per_group)
    ids, vectors = build_embeddings(df, dim=16, seed=0)
    if items_per_group == 600:
        assert len(ids) > _DENSE_SVD_MAX_ITEMS  # keeps this case on the ARPACK path
    index = ItemIndex.from_vectors(ids, vectors)
    for item_id in ids:
        neighbours = index.similar(item_id, 5)
        assert len(neighbours) == 5
        assert all(n[0] == item_id[0] for n, _ in neighbours), (item_id, neighbours)
    (best_of_a0, cos_a0), (best_of_a1, cos_a1) = (
        index.similar("A0", 1)[0],
        index.similar("A1", 1)[0],
    )
    assert (best_of_a0, best_of_a1) == ("A1", "A0")
    assert cos_a0 == pytest.approx(1.0, abs=0.02)
    assert cos_a1 == pytest.approx(cos_a0, abs=1e-6)


def test_vectors_are_unit_float32_and_deterministic(rng: np.random.Generator) -> None:
    df = two_worlds(rng, users_per_group=40, items_per_group=600)
    ids1, v1 = build_embeddings(df, dim=16, seed=7)
    ids2, v2 = build_embeddings(df.sample(frac=1.0, random_state=1), dim=16, seed=7)
    assert v1.dtype == np.float32
    assert v1.shape == (df["item_id"].nunique(), 16)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    assert ids1 == ids2
    np.testing.assert_array_equal(v1, v2)  # same data in another row order, same seed


def test_isolated_item_gets_zero_vector_and_dim_is_clamped() -> None:
    # "solo" is only consumed by a user who consumed nothing else: no co-occurrence.
    x = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    vectors = ppmi_svd_embeddings(x, dim=64)
    assert vectors.shape == (3, 2)  # min(64, 3 items - 1)
    assert np.isfinite(vectors).all()
    assert not vectors[2].any()


def test_bad_parameters_raise() -> None:
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="dim"):
        ppmi_svd_embeddings(x, dim=0)
    with pytest.raises(ValueError, match="shift"):
        ppmi_svd_embeddings(x, shift=0.0)


def small_index(rng: np.random.Generator, n: int = 80, dim: int = 8) -> ItemIndex:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[3] = 0.0  # an item with no signal
    ids = [f"i{j}" for j in range(n)]
    titles = {"i0": "Zero", "i1": "One", "not-indexed": "Ghost"}
    return ItemIndex.from_vectors(ids, vectors, titles=titles, params={"dim": dim}, source="t")


def test_similar_is_exact_cosine_ranking(rng: np.random.Generator) -> None:
    index = small_index(rng)
    got = index.similar("i0", 10)
    assert len(got) == 10
    assert "i0" not in {i for i, _ in got}
    assert "i3" not in {i for i, _ in got}  # zero vector never a neighbour
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    # Brute force over the stored unit vectors gives the same answer.
    v = index._vectors
    brute = v @ v[0]
    brute[[0, 3]] = -np.inf
    expected = [f"i{j}" for j in np.argsort(-brute, kind="stable")[:10]]
    assert [i for i, _ in got] == expected
    assert scores[0] == pytest.approx(float(brute.max()), abs=1e-5)


def test_similar_edges(rng: np.random.Generator) -> None:
    index = small_index(rng)
    assert index.similar("nope", 5) == []
    assert index.similar("i3", 5) == []  # a zero vector has no meaningful neighbours
    assert index.similar("i0", 0) == []
    # More than exist: every other non-zero item once (80 - self - the zero one).
    assert len(index.similar("i0", 500)) == 78
    # Different k share one cached list: a short answer is a prefix of a long one.
    assert index.similar("i1", 5) == index.similar("i1", 70)[:5]
    assert "i0" in index and "nope" not in index and 5 not in index
    assert len(index) == 80
    assert index.title("i1") == "One" and index.title("i2") is None
    assert index.title("not-indexed") is None  # titles of unknown items are dropped


def test_similar_many_equals_similar(rng: np.random.Generator) -> None:
    raw = rng.normal(size=(80, 8)).astype(np.float32)
    raw[3] = 0.0
    ids = [f"i{j}" for j in range(80)]
    # Two indexes over the same vectors, so neither answer comes from the other's cache.
    index, fresh = ItemIndex.from_vectors(ids, raw), ItemIndex.from_vectors(ids, raw)
    asked = ["i5", "i0", "nope", "i3", "i5", "i79"]
    batch = fresh.similar_many(asked, 7)
    assert set(batch) == set(asked)
    for item_id in asked:
        assert batch[item_id] == index.similar(item_id, 7)
    assert batch["nope"] == [] and batch["i3"] == []


def test_from_vectors_validates(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="do not match"):
        ItemIndex.from_vectors(["a", "b"], np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="unique"):
        ItemIndex.from_vectors(["a", "a"], np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex.from_vectors(["a"], np.full((1, 4), np.nan, dtype=np.float32))


def test_save_load_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    index = small_index(rng)
    index.save(tmp_path / "ix")
    loaded = ItemIndex.load(tmp_path / "ix")
    assert loaded.manifest == index.manifest
    assert Manifest.from_dict(json.loads(json.dumps(index.manifest.to_dict()))) == index.manifest
    assert loaded.version == index.version
    assert loaded.title("i0") == "Zero"
    ids = [f"i{j}" for j in range(80)]
    assert loaded.similar_many(ids, 10) == index.similar_many(ids, 10)


def test_manifest_describes_the_build(rng: np.random.Generator) -> None:
    m = small_index(rng).manifest
    assert (m.item_count, m.dim, m.method, m.source, m.before_ts) == (80, 8, "ppmi-svd", "t", None)
    assert m.params == {"dim": 8}
    stamp, digest = m.version.split("-")
    assert len(stamp) == len("20261122T221500Z") and stamp.endswith("Z") and len(digest) == 6
    assert m.built_at.startswith(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T")


@pytest.mark.parametrize(
    "damage",
    [
        "missing_items",
        "missing_faiss",
        "garbage_faiss",
        "garbage_manifest",
        "count_mismatch",
        "garbage_catalogue",
    ],
)
def test_damaged_index_raises_index_not_found(
    tmp_path: Path, rng: np.random.Generator, damage: str
) -> None:
    directory = tmp_path / "ix"
    small_index(rng).save(directory)
    if damage == "missing_items":
        (directory / "items.json").unlink()
    elif damage == "missing_faiss":
        (directory / "index.faiss").unlink()
    elif damage == "garbage_faiss":
        (directory / "index.faiss").write_bytes(b"not a faiss index")
    elif damage == "garbage_manifest":
        (directory / "manifest.json").write_text("{")
    elif damage == "garbage_catalogue":
        (directory / "catalogue.json").write_text('{"format": 1, "items": {"i0": 5}}')
    else:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["item_count"] = 81
        (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexNotFound) as info:
        ItemIndex.load(directory)
    assert "build-index" in info.value.hint


def test_load_of_absent_dir_raises_index_not_found(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFound, match="missing"):
        ItemIndex.load(tmp_path / "nothing-here")


def test_load_current_without_a_publish(tmp_path: Path) -> None:
    assert current_version(tmp_path) is None
    with pytest.raises(IndexNotFound) as info:
        load_current(tmp_path)
    assert "streamrec build-index" in info.value.hint


def test_publish_switches_current_and_prunes(tmp_path: Path, rng: np.random.Generator) -> None:
    published = []
    for _ in range(4):
        index = small_index(rng)  # new random vectors: a distinct content hash each time
        version_dir = publish(index, tmp_path, keep=2)
        assert version_dir == tmp_path / "index" / index.version
        assert current_version(tmp_path) == index.version
        published.append(index)
    newest = published[-1]
    assert load_current(tmp_path).similar("i0", 5) == newest.similar("i0", 5)
    left = sorted(p.name for p in (tmp_path / "index").iterdir() if p.is_dir())
    assert left == sorted(ix.version for ix in published[-2:])
    assert (tmp_path / "index" / "CURRENT").read_text().strip() == newest.version


def test_publish_same_index_twice_is_idempotent(tmp_path: Path, rng: np.random.Generator) -> None:
    index = small_index(rng)
    assert publish(index, tmp_path) == publish(index, tmp_path)
    assert load_current(tmp_path).manifest == index.manifest


def test_garbage_current_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "CURRENT").write_text("../../etc\n")
    assert current_version(tmp_path) is None
    with pytest.raises(IndexNotFound):
        load_current(tmp_path)


def test_build_index_excludes_events_at_or_after_before_ts(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    df = two_worlds(rng, users_per_group=10, items_per_group=8)
    cut = int(df["ts"].max()) + 1
    late = pd.DataFrame(
        {
            "user_id": ["Au0", "Au1", "Bu0"],
            "item_id": ["late", "late", "at-cut"],
            "ts": [cut + 5, cut + 9, cut],
            "type": "rating",
            "weight": [5.0, 5.0, 5.0],
        }
    ).astype({"ts": "int64", "type": "category", "weight": "float32"})
    index = build_index(
        pd.concat([df, late], ignore_index=True),
        tmp_path,
        OfflineSettings(dim=4),
        before_ts=cut,
        source="mem",
    )
    assert "late" not in index and "at-cut" not in index
    assert len(index) == df["item_id"].nunique()
    assert index.manifest.before_ts == cut
    assert index.manifest.params["interactions"] == len(df)
    assert current_version(tmp_path) == index.version

    everything = build_index(pd.concat([df, late]), tmp_path / "all", OfflineSettings(dim=4))
    assert "late" in everything and "at-cut" in everything


def test_build_index_with_nothing_left_raises(tmp_path: Path, rng: np.random.Generator) -> None:
    df = two_worlds(rng, users_per_group=3, items_per_group=4)
    with pytest.raises(DatasetError, match="no interactions"):
        build_index(df, tmp_path, before_ts=int(df["ts"].min()))
    assert current_version(tmp_path) is None


def test_the_whole_catalogue_is_kept_with_the_version(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    df = two_worlds(rng, users_per_group=10, items_per_group=8)
    catalogue = Catalogue(
        {
            "A0": CatalogueItem("Twin", frozenset({"x"}), frozenset({"soft"})),
            "never-clicked": CatalogueItem("Ghost", frozenset({"y"})),
        }
    )
    index = build_index(df, tmp_path, OfflineSettings(dim=4), catalogue=catalogue)
    assert (tmp_path / "index" / index.version / "catalogue.json").is_file()
    loaded = load_current(tmp_path)
    assert loaded.catalogue == catalogue  # every item, clicked or not
    assert loaded.title("A0") == "Twin" and loaded.title("never-clicked") == "Ghost"
    assert loaded.catalogue.categories("never-clicked") == {"y"}
    assert dict(loaded.titles) == {"A0": "Twin"}  # what search offers: indexed items
    # The catalogue is part of the content: another one makes another version.
    other = build_index(
        df, tmp_path / "b", OfflineSettings(dim=4), catalogue=Catalogue({"A0": CatalogueItem("B")})
    )
    assert other.version.split("-")[1] != index.version.split("-")[1]
    assert build_index(df, tmp_path / "c", OfflineSettings(dim=4)).catalogue == Catalogue()
    with pytest.raises(ValueError, match="not both"):
        ItemIndex.from_vectors(["a"], np.ones((1, 2)), catalogue=catalogue, titles={"a": "A"})


def test_a_version_saved_before_catalogue_json_still_loads(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    small_index(rng).save(tmp_path / "ix")
    (tmp_path / "ix" / "catalogue.json").unlink()  # as every version built before it
    loaded = ItemIndex.load(tmp_path / "ix")
    assert loaded.title("i0") == "Zero" and dict(loaded.titles) == {"i0": "Zero", "i1": "One"}
    assert loaded.catalogue == Catalogue.from_titles({"i0": "Zero", "i1": "One"})


def test_a_version_knows_each_items_first_click(tmp_path: Path, rng: np.random.Generator) -> None:
    df = two_worlds(rng, users_per_group=6, items_per_group=5)
    # A later click of an item does not move its first one; row order does not matter.
    again = df.iloc[[0]].assign(ts=int(df["ts"].max()) + 60_000)
    shuffled = pd.concat([again, df.sample(frac=1.0, random_state=1)], ignore_index=True)
    index = build_index(shuffled, tmp_path, OfflineSettings(dim=4, ranker=False))
    expected = {str(k): int(v) for k, v in df.groupby("item_id")["ts"].min().items()}
    assert dict(index.first_seen) == expected
    loaded = ItemIndex.load(tmp_path / "index" / index.version)
    assert dict(loaded.first_seen) == expected and loaded.version == index.version
    # The times are part of the content: other times, another version.
    later = shuffled.assign(ts=shuffled["ts"] + 1)
    assert build_index(later, tmp_path / "b", OfflineSettings(dim=4, ranker=False)).version != (
        index.version
    )


def test_a_version_saved_before_first_clicks_loads_without_them(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    build = build_index(two_worlds(rng, 3, 4), tmp_path, OfflineSettings(dim=4, ranker=False))
    directory = tmp_path / "index" / build.version
    items = json.loads((directory / "items.json").read_text())
    del items["first_ms"]  # as every version built before it
    (directory / "items.json").write_text(json.dumps(items))
    assert dict(ItemIndex.load(directory).first_seen) == {}


@pytest.mark.parametrize("damage", ["short", "not a list", "floats", "booleans"])
def test_damaged_first_clicks_make_the_version_unreadable(
    tmp_path: Path, rng: np.random.Generator, damage: str
) -> None:
    build = build_index(two_worlds(rng, 3, 4), tmp_path, OfflineSettings(dim=4, ranker=False))
    directory = tmp_path / "index" / build.version
    items = json.loads((directory / "items.json").read_text())
    n = len(items["ids"])
    assert len(items["first_ms"]) == n
    items["first_ms"] = {
        "short": [1] * (n - 1),
        "not a list": "soon",
        "floats": [1.5] * n,
        "booleans": [True] * n,
    }[damage]
    (directory / "items.json").write_text(json.dumps(items))
    with pytest.raises(IndexNotFound, match="first_ms"):
        ItemIndex.load(directory)


def test_first_clicks_must_match_the_ids() -> None:
    with pytest.raises(ValueError, match="first-click times"):
        ItemIndex.from_vectors(["a", "b"], np.ones((2, 4), dtype=np.float32), first_ms=[1])
