"""The catalogue: the type, its JSON, MovieLens's movie and tag files, and a team's own file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from core.catalogue import Catalogue, CatalogueItem
from core.errors import DatasetError
from producer.catalogue import catalogue_format, load_catalogue_file, load_movielens_catalogue
from producer.movielens import load_genres, load_titles

TOY = CatalogueItem("Toy Story (1995)", frozenset({"Animation", "Comedy"}), frozenset({"pixar"}))
HEAT = CatalogueItem("Heat (1995)", frozenset({"Action"}))
SHOE = CatalogueItem(None, frozenset({"Shoes", "Action"}), frozenset({"red"}))


# -- the type ----------------------------------------------------------------------------------
def test_lookups_answer_nothing_known_for_unknown_items() -> None:
    cat = Catalogue({"1": TOY, "6": HEAT, "s": SHOE})
    assert len(cat) == 3 and "1" in cat and "2" not in cat and list(cat) == ["1", "6", "s"]
    assert cat.get("1") is TOY and cat.get("2") is None
    assert cat.title("6") == "Heat (1995)" and cat.title("s") is None and cat.title("2") is None
    assert cat.categories("1") == {"Animation", "Comedy"} and cat.categories("2") == frozenset()
    assert cat.tags("s") == {"red"}
    assert cat.titles() == {"1": "Toy Story (1995)", "6": "Heat (1995)"}
    by = cat.by_category()
    assert dict(by) == {
        "Action": {"6", "s"},
        "Animation": {"1"},
        "Comedy": {"1"},
        "Shoes": {"s"},
    }
    assert cat.by_category() is by  # built once
    with pytest.raises(TypeError):
        by["New"] = frozenset()  # type: ignore[index]
    assert cat.category_names() == ["Action", "Animation", "Comedy", "Shoes"]
    assert cat.restrict(["6", "nope"]) == Catalogue({"6": HEAT})
    assert Catalogue() == Catalogue() and len(Catalogue().by_category()) == 0


def test_json_is_stable_sorted_and_round_trips() -> None:
    one = Catalogue({"b": TOY, "a": SHOE})
    other = Catalogue({"a": SHOE, "b": TOY})
    assert one.to_json() == other.to_json()
    doc = json.loads(one.to_json())
    assert list(doc["items"]) == ["a", "b"]
    assert doc["items"]["b"] == {
        "categories": ["Animation", "Comedy"],
        "tags": ["pixar"],
        "title": "Toy Story (1995)",
    }
    back = Catalogue.from_json(one.to_json())
    assert back == one and back.get("a") == SHOE
    assert Catalogue.from_json(Catalogue().to_json()) == Catalogue()


@pytest.mark.parametrize(
    "bad",
    [
        b"[]",
        b'{"format": 1}',
        b'{"format": 2, "items": {}}',
        b'{"format": 1, "items": {"a": []}}',
        b'{"format": 1, "items": {"a": {"title": 5}}}',
        b'{"format": 1, "items": {"a": {"categories": "x"}}}',
        b'{"format": 1, "items": {"a": {"tags": [1]}}}',
        b"{",
    ],
)
def test_malformed_json_is_a_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        Catalogue.from_json(bad)


# -- MovieLens ------------------------------------------------------------------------------------
def write_latest(d: Path) -> Path:
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")
    (d / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"Toy Story (1995)",Animation|Comedy\n'
        '20,"American President, The (1995)",Comedy|Drama\n'
        "30,Unknown Film (2016),(no genres listed)\n"
    )
    (d / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,10,Pixar,1\n2,10, pixar ,2\n3,10,fun,3\n"
        '4,20,"politics, sort of",4\n5,99,orphan tag,5\n6,20,  ,6\n'
    )
    return d


def write_100k(d: Path) -> Path:
    (d / "u.data").write_text("1\t10\t4\t964982703\n")
    (d / "u.item").write_bytes(
        "10|Toy Story (1995)|01-Jan-1995||http://x|0|1|0\n"
        "20|Misérables, Les (1995)|01-Jan-1995||http://x|1|0|1\n".encode("latin-1")
    )
    (d / "u.genre").write_text("unknown|0\nAnimation|1\nDrama|2\n\n")
    return d


def write_dat(d: Path, *, tags: bool = True) -> Path:
    (d / "ratings.dat").write_text("1::10::4::964982703\n")
    (d / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's\n20::Misérables, Les (1995)::Drama\n".encode(
            "latin-1"
        )
    )
    if tags:  # ml-10m has tags.dat; ml-1m has none
        (d / "tags.dat").write_text("1::10::Pixar::1\n2::10::pixar::2\n3::20::a::b::3\nbroken\n")
    return d


def test_ml_latest_movies_and_tags(tmp_path: Path) -> None:
    cat = load_movielens_catalogue(write_latest(tmp_path))
    assert cat.get("10") == CatalogueItem(
        "Toy Story (1995)", frozenset({"Animation", "Comedy"}), frozenset({"pixar", "fun"})
    )
    assert cat.get("20") == CatalogueItem(
        "American President, The (1995)",
        frozenset({"Comedy", "Drama"}),
        frozenset({"politics, sort of"}),
    )
    assert cat.categories("30") == frozenset()  # "(no genres listed)" is no genre
    assert cat.get("99") == CatalogueItem(None, frozenset(), frozenset({"orphan tag"}))
    # The wrappers the old callers use read the same catalogue.
    assert load_titles(tmp_path) == cat.titles()
    assert load_genres(tmp_path)["20"] == {"Comedy", "Drama"}
    (tmp_path / "tags.csv").unlink()
    assert load_movielens_catalogue(tmp_path).tags("10") == frozenset()


def test_ml_100k_genre_flags(tmp_path: Path) -> None:
    cat = load_movielens_catalogue(write_100k(tmp_path))
    assert cat.get("10") == CatalogueItem("Toy Story (1995)", frozenset({"Animation"}))
    # Flag 0 is "unknown", which is no genre.
    assert cat.get("20") == CatalogueItem("Misérables, Les (1995)", frozenset({"Drama"}))
    (tmp_path / "u.genre").unlink()
    assert load_movielens_catalogue(tmp_path).categories("10") == frozenset()


def test_ml_dat_movies_and_tags(tmp_path: Path) -> None:
    cat = load_movielens_catalogue(write_dat(tmp_path))
    assert cat.get("10") == CatalogueItem(
        "Toy Story (1995)", frozenset({"Animation", "Children's"}), frozenset({"pixar"})
    )
    assert cat.get("20") == CatalogueItem(
        "Misérables, Les (1995)", frozenset({"Drama"}), frozenset({"a::b"})
    )
    ml_1m = tmp_path / "ml-1m"
    ml_1m.mkdir()
    assert load_movielens_catalogue(write_dat(ml_1m, tags=False)).tags("10") == set()


def test_no_movie_file_is_an_empty_catalogue(tmp_path: Path) -> None:
    write_dat(tmp_path, tags=False)
    (tmp_path / "movies.dat").unlink()
    assert load_movielens_catalogue(tmp_path) == Catalogue()
    assert load_titles(tmp_path) == {}


@pytest.mark.realdata
def test_real_ml_latest_small(movielens_dir: Path) -> None:
    cat = load_movielens_catalogue(movielens_dir)
    assert len(cat) == 9742 and len(cat.titles()) == 9742
    assert cat.get("1") == CatalogueItem(
        "Toy Story (1995)",
        frozenset({"Adventure", "Animation", "Children", "Comedy", "Fantasy"}),
        frozenset({"pixar", "fun"}),
    )
    assert cat.categories("114335") == frozenset()  # "(no genres listed)"
    assert len(cat.category_names()) == 19 and "(no genres listed)" not in cat.category_names()
    # tags.csv tags movie 527 "Holocaust" and "holocaust": one tag.
    assert "holocaust" in cat.tags("527") and "Holocaust" not in cat.tags("527")
    assert sum(1 for _, item in cat.items() if item.tags) == 1572
    assert Catalogue.from_json(cat.to_json()) == cat


# -- a team's own catalogue file ---------------------------------------------------------------
OWN_CSV = "\n".join(
    [
        "item_id,title,categories,tags,price",  # 1; price is not ours, and ignored
        'sku-1,"Runner, blue",Shoes|Running, Fast | fresh ,59',  # 2
        "sku-2,,Shoes,,10",  # 3: no title, no tags
        ",Nameless,Shoes,,1",  # 4 missing_item
        "a/b,Slashed,Shoes,,1",  # 5 bad_id
        "sku-1,Again,Hats,,1",  # 6 duplicate_item
        "sku-3,Short",  # 7 short_row
        "",  # 8 blank_line
        "sku-4,Cap,Hats||,,5",  # 9: empty parts dropped
    ]
)


def test_own_csv_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(OWN_CSV + "\n")
    cat, report = load_catalogue_file(path)
    assert cat.get("sku-1") == CatalogueItem(
        "Runner, blue", frozenset({"Shoes", "Running"}), frozenset({"fast", "fresh"})
    )
    assert cat.get("sku-2") == CatalogueItem(None, frozenset({"Shoes"}))
    assert cat.get("sku-4") == CatalogueItem("Cap", frozenset({"Hats"}))
    assert list(cat) == ["sku-1", "sku-2", "sku-4"]
    assert report.lines == {
        "blank_line": (8,),
        "short_row": (7,),
        "missing_item": (4,),
        "bad_id": (5,),
        "duplicate_item": (6,),
    }
    assert (report.rows_read, report.rows_kept) == (8, 3)
    assert report.summary().startswith(f"read 8 rows from {path}: kept 3, skipped 5 (")


def test_own_catalogue_with_item_ids_only_and_as_tsv(tmp_path: Path) -> None:
    path = tmp_path / "items.tsv"
    path.write_text("item_id\tcategories\n1\tA|B\n2\t\n")
    cat, _ = load_catalogue_file(path)
    assert cat == Catalogue(
        {"1": CatalogueItem(None, frozenset({"A", "B"})), "2": CatalogueItem(None)}
    )


def test_own_jsonl_catalogue(tmp_path: Path) -> None:
    lines = [
        json.dumps({"item_id": "a", "title": "A", "categories": ["X", "Y"], "tags": "T1|t2"}),
        json.dumps({"item_id": 7, "categories": "X|Z"}),  # a number id is its text
        json.dumps({"item_id": "b", "title": 5}),  # bad_title
        json.dumps({"item_id": "c", "categories": 5}),  # bad_categories
        json.dumps({"item_id": "d", "tags": ["ok", 1]}),  # bad_tags
        "not json",
        json.dumps({"title": "no id"}),  # missing_item
        json.dumps({"item_id": True}),  # bad_id
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cat, report = load_catalogue_file(path)
    assert cat == Catalogue(
        {
            "a": CatalogueItem("A", frozenset({"X", "Y"}), frozenset({"t1", "t2"})),
            "7": CatalogueItem(None, frozenset({"X", "Z"})),
        }
    )
    assert report.lines == {
        "not_json": (6,),
        "missing_item": (7,),
        "bad_id": (8,),
        "bad_title": (3,),
        "bad_categories": (4,),
        "bad_tags": (5,),
    }
    assert cat.by_category()["X"] == {"a", "7"}


def test_format_from_the_name_gzip_and_errors(tmp_path: Path) -> None:
    assert catalogue_format(Path("x.CSV")) == "csv"
    assert catalogue_format(Path("x.jsonl.gz")) == "jsonl"
    assert catalogue_format(Path("x.txt"), "tsv") == "tsv"
    with pytest.raises(DatasetError) as err:
        catalogue_format(Path("items.txt"))
    assert "--catalogue-format" in err.value.hint
    packed = tmp_path / "items.csv.gz"
    packed.write_bytes(gzip.compress(b"item_id,title\n1,One\n"))
    assert load_catalogue_file(packed)[0] == Catalogue({"1": CatalogueItem("One")})
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,title\n1,One\n")
    with pytest.raises(DatasetError, match=r"'item_id' .*'id', 'title'"):
        load_catalogue_file(wrong)
    allbad = tmp_path / "allbad.csv"
    allbad.write_text("item_id,title\n,One\n")
    with pytest.raises(DatasetError, match=r"no usable row.*missing_item: 1, line 2"):
        load_catalogue_file(allbad)
