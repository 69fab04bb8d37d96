"""resolve_dataset: local lookups, and real HTTP downloads from a loopback server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import DatasetError
from producer.dataset import resolve_dataset
from producer.movielens import load_ratings

HEADER = "userId,movieId,rating,timestamp\n"
ROWS = "1,10,4.0,964982703\n2,20,3.5,964982800\n"
RATINGS = HEADER + ROWS


@pytest.fixture(autouse=True)
def _no_data_dir_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests decide where data is; run.sh and CI export STREAMREC_DATA_DIR."""
    monkeypatch.delenv("STREAMREC_DATA_DIR", raising=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean; the status codes are asserted instead


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base_url, served directory): a real HTTP server on 127.0.0.1, free port."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval so shutdown() returns in ~50 ms rather than 500 ms.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def publish(
    root: Path,
    name: str,
    folder: str | None = None,
    *,
    md5: str | None = "auto",
    corrupt: bool = False,
) -> bytes:
    """Write NAME.zip (folder/ratings.csv) and NAME.zip.md5 under root/movielens/."""
    out = root / "movielens"
    out.mkdir(exist_ok=True)
    archive = out / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder or name}/ratings.csv", HEADER + ROWS * 50)
        zf.writestr(f"{folder or name}/movies.csv", "movieId,title,genres\n10,A (1995),Drama\n")
    data = archive.read_bytes()
    if corrupt:
        # Flip bytes in the middle of the compressed member: the zip still opens
        # but the CRC check must catch it.
        mid = len(data) // 3
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
        archive.write_bytes(data)
    if md5 is not None:
        digest = hashlib.md5(data).hexdigest() if md5 == "auto" else md5
        # The format GroupLens publishes.
        (out / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {digest}\n")
    return data


def test_download_verifies_extracts_and_caches(
    server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, root = server
    publish(root, "ml-latest-small")
    cache = tmp_path / "cache"
    got = resolve_dataset("ml-latest-small", cache_dir=cache, base_url=base_url)
    assert got == cache / "ml-latest-small"
    assert len(load_ratings(got)) == 100
    assert "download ml-latest-small.zip" in capsys.readouterr().err
    # Nothing half-done left beside it.
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small"]
    # Second call is served from the cache: the server no longer has the file.
    (root / "movielens" / "ml-latest-small.zip").unlink()
    assert resolve_dataset("ml-latest-small", cache_dir=cache, base_url=base_url) == got


def test_download_ml_10m_folder_name_is_normalised(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, root = server
    out = root / "movielens"
    out.mkdir()
    with zipfile.ZipFile(out / "ml-10m.zip", "w") as zf:
        zf.writestr("ml-10M100K/ratings.dat", "1::10::4.0::964982703\n2::20::3.5::964982800\n")
    got = resolve_dataset("ml-10m", cache_dir=tmp_path / "cache", base_url=base_url)
    assert got == tmp_path / "cache" / "ml-10m"
    assert list(load_ratings(got)["item_id"]) == ["10", "20"]


def test_download_without_published_md5_still_checks_zip(
    server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_url, root = server
    publish(root, "ml-latest-small", md5=None)
    got = resolve_dataset("ml-latest-small", cache_dir=tmp_path / "c", base_url=base_url)
    assert (got / "ratings.csv").is_file()
    assert "no ml-latest-small.zip.md5" in capsys.readouterr().err


def test_bad_md5_is_rejected_and_nothing_cached(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server
    publish(root, "ml-latest-small", md5="0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="MD5") as err:
        resolve_dataset("ml-latest-small", cache_dir=cache, base_url=base_url)
    assert "STREAMREC_DATA_DIR" in err.value.hint
    assert list(cache.iterdir()) == []


def test_http_404_is_a_dataset_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = server
    with pytest.raises(DatasetError, match="HTTP 404") as err:
        resolve_dataset("ml-1m", cache_dir=tmp_path / "cache", base_url=base_url)
    assert "ml-1m.zip" in err.value.hint


@pytest.mark.parametrize("md5", ["auto", None])
def test_corrupt_zip_is_rejected(server: tuple[str, Path], tmp_path: Path, md5: str | None) -> None:
    # With a matching published MD5 the corruption is only caught by the zip's
    # own CRCs; without one, the same.
    base_url, root = server
    publish(root, "ml-latest-small", md5=md5, corrupt=True)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"corrupt|not a valid zip"):
        resolve_dataset("ml-latest-small", cache_dir=cache, base_url=base_url)
    assert list(cache.iterdir()) == []


def test_truncated_download_is_not_a_zip(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server
    data = publish(root, "ml-latest-small", md5=None)
    (root / "movielens" / "ml-latest-small.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="not a valid zip"):
        resolve_dataset("ml-latest-small", cache_dir=tmp_path / "cache", base_url=base_url)


def test_zip_without_expected_ratings_file(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server
    publish(root, "ml-100k")  # holds ratings.csv, but ml-100k must have u.data
    with pytest.raises(DatasetError, match=r"ml-100k/u\.data"):
        resolve_dataset("ml-100k", cache_dir=tmp_path / "cache", base_url=base_url)


def test_no_server_is_a_dataset_error(tmp_path: Path) -> None:
    from streamrec.local.stack import free_port

    url = f"http://127.0.0.1:{free_port()}/movielens"
    with pytest.raises(DatasetError, match="could not download") as err:
        resolve_dataset("ml-latest-small", cache_dir=tmp_path / "cache", base_url=url)
    assert "grouplens.org" in err.value.hint


def test_lookup_order_path_then_data_dir_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make(d: Path) -> Path:
        d.mkdir(parents=True)
        (d / "ratings.csv").write_text(RATINGS)
        return d

    explicit = make(tmp_path / "explicit")
    in_data = make(tmp_path / "data" / "ml-latest-small")
    in_cache = make(tmp_path / "cache" / "ml-latest-small")
    cache = tmp_path / "cache"
    # No network needed for any of these: download=False proves it.
    kw = {"cache_dir": cache, "download": False}
    assert resolve_dataset(path=explicit, **kw) == explicit  # type: ignore[arg-type]
    assert resolve_dataset(path=explicit / "ratings.csv", **kw) == explicit  # type: ignore[arg-type]
    assert resolve_dataset(data_dir=tmp_path / "data", **kw) == in_data  # type: ignore[arg-type]
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path / "data"))
    assert resolve_dataset(**kw) == in_data  # type: ignore[arg-type]
    monkeypatch.delenv("STREAMREC_DATA_DIR")
    assert resolve_dataset(**kw) == in_cache  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_dataset(path=tmp_path / "missing", **kw)  # type: ignore[arg-type]


def test_not_found_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="not found") as err:
        resolve_dataset("ml-25m", cache_dir=tmp_path, download=False)
    assert "ml-25m.zip" in err.value.hint
    with pytest.raises(DatasetError, match="not a known MovieLens"):
        resolve_dataset("ml-3b", cache_dir=tmp_path)


def test_data_dir_with_zip_folder_name(tmp_path: Path) -> None:
    d = tmp_path / "data" / "ml-10M100K"
    d.mkdir(parents=True)
    (d / "ratings.dat").write_text("1::10::4.0::964982703\n")
    got = resolve_dataset("ml-10m", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert got == d
