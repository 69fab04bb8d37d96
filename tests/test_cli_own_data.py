"""`streamrec` on a team's own data: a RetailRocket-layout click log and a catalogue file,
through the same options for every subcommand that reads interactions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clicklogs import RETAILROCKET_OPTIONS, write_catalogue, write_retailrocket

from offline.index import load_current
from producer.sources import ClickLogSource, MovieLensSource
from streamrec.cli.main import build_parser, main
from streamrec.cli.options import catalogue_arg, source_arg


def test_build_index_reads_the_log_reports_bad_rows_and_keeps_the_catalogue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_retailrocket(tmp_path / "events.csv")
    items = write_catalogue(tmp_path / "items.csv", log, extra=3)
    argv = [
        "build-index",
        *RETAILROCKET_OPTIONS,
        "--path",
        str(log.path),
        "--catalogue",
        str(items),
    ]
    assert main([*argv, "--artifacts-dir", str(tmp_path / "art"), "--dim", "8"]) == 0
    out, err = capsys.readouterr()
    summary = next(
        line for line in err.splitlines() if line.startswith("read ") and "events" in line
    )
    assert summary.startswith(
        f"read {log.rows:,} rows from {log.path}: kept {log.kept:,}, skipped 6 ("
    )
    for reason, lines in log.bad_lines.items():
        assert f"{reason}: 1, line {lines[0]}" in summary
    assert (
        f"read {len(log.items) + 3} rows from {items}: kept {len(log.items) + 3}, skipped 0" in err
    )
    assert "Traceback" not in err
    index = load_current(tmp_path / "art")
    assert set(index.titles) == log.items and index.manifest.source == str(log.path)
    assert f"catalogue of {len(log.items) + 3} items" in out
    # The whole catalogue is kept: items nobody clicked too, with their categories.
    assert "new-0" not in index and index.title("new-0") == "Item new-0, boxed"
    assert index.catalogue.categories("1000") == {"group-0", "all"}
    assert index.catalogue.tags("1000") == {"fresh", "boxed"}
    assert index.catalogue.by_category()["new"] == {"new-0", "new-1", "new-2"}


def test_evaluate_runs_on_the_log_and_reports_what_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_retailrocket(tmp_path / "events.csv", visitors=250)
    items = write_catalogue(tmp_path / "items.csv", log)
    argv = ["evaluate", *RETAILROCKET_OPTIONS, "--path", str(log.path), "--catalogue", str(items)]
    assert main([*argv, "--dim", "8", "--out", str(tmp_path / "eval")]) == 0
    _, err = capsys.readouterr()
    assert f"kept {log.kept:,}, skipped 6 (" in err and "Traceback" not in err
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["events"] == log.kept and result["dataset"] == str(log.path)
    assert result["read"]["skipped"] == {reason: 1 for reason in log.bad_lines}
    assert result["read"]["lines"] == log.bad_lines
    methods = result["test"]["methods"]
    # Visitors browse one item group each: co-occurrence finds the next item often.
    assert methods["co-occurrence"]["hr@10"] > methods["popularity"]["hr@10"]
    assert "ild@10" in methods["blend"]  # diversity from the catalogue's categories
    text = (tmp_path / "eval" / "results.md").read_text()
    assert "Read: read " in text and "skipped 6" in text


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (
            ["--format", "csv", "--user-col", "visitorid"],
            2,
            "--format csv needs --path, --item-col",
        ),
        (["--user-col", "visitorid", "--time-unit", "ms"], 2, "--user-col, --time-unit describe a"),
        (["--catalogue-format", "csv"], 2, "--catalogue-format needs --catalogue"),
    ],
)
def test_incomplete_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], code: int, message: str
) -> None:
    assert main(["build-index", *extra]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"streamrec: error: {message}") and "Traceback" not in err
    assert len(err.splitlines()) <= 2  # the error and, perhaps, a hint


def test_a_log_that_does_not_fit_the_options_is_a_dataset_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_retailrocket(tmp_path / "events.csv", visitors=20, bad=False)
    options = [o if o != "visitorid" else "session_id" for o in RETAILROCKET_OPTIONS]
    assert main(["build-index", *options, "--path", str(log.path)]) == 3
    err = capsys.readouterr().err
    assert "no column 'session_id' (--user-col)" in err
    assert "'timestamp', 'visitorid', 'event', 'itemid', 'transactionid'" in err
    options = [o if o != "ms" else "iso" for o in RETAILROCKET_OPTIONS]
    assert main(["build-index", *options, "--path", str(log.path)]) == 3
    err = capsys.readouterr().err
    assert "no usable row: read" in err and "bad_time:" in err and "hint: check the time" in err


@pytest.mark.parametrize("command", ["replay", "evaluate", "build-index", "loadtest", "demo"])
def test_every_subcommand_that_reads_data_takes_the_same_options(command: str) -> None:
    args = build_parser().parse_args(
        [command, *RETAILROCKET_OPTIONS, "--path", "events.csv", "--catalogue", "items.jsonl"]
    )
    source = source_arg(args)
    assert isinstance(source, ClickLogSource) and source.path == Path("events.csv")
    assert (source.format.user_col, source.format.type_col, source.format.weight_col) == (
        "visitorid",
        "event",
        None,
    )
    catalogue = catalogue_arg(args)
    assert catalogue is not None and catalogue.path == Path("items.jsonl")
    args = build_parser().parse_args([command, "--path", "ml-latest-small"])
    assert source_arg(args) == MovieLensSource(Path("ml-latest-small"))


def test_without_format_movielens_reads_as_before_with_its_catalogue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ml"
    data.mkdir()
    lines = ["userId,movieId,rating,timestamp"]
    lines += [
        f"{u},{10 + (u + k) % 6},4.0,{964982703 + u * 10 + k}" for u in range(30) for k in range(4)
    ]
    (data / "ratings.csv").write_text("\n".join(lines) + "\n")
    (data / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},Film {i},Drama|X{i % 2}\n" for i in range(10, 17))
    )
    (data / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,Noir,1\n")
    assert (
        main(
            [
                "build-index",
                "--path",
                str(data),
                "--artifacts-dir",
                str(tmp_path / "art"),
                "--dim",
                "4",
            ]
        )
        == 0
    )
    assert "read " not in capsys.readouterr().err  # MovieLens fails on a bad row; no report
    index = load_current(tmp_path / "art")
    assert index.title("10") == "Film 10" and index.catalogue.tags("10") == {"noir"}
    assert "16" not in index and index.catalogue.categories("16") == {"Drama", "X0"}
