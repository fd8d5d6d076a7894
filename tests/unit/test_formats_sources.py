"""Where a historical file's bytes come from (plain, gzip, zip) and which files a path, folder or glob names, in
date order."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest

from k2_core.exceptions import K2Error, SourceError
from k2_core.ingest.formats.sources import expand, open_source
from tests.support.formats import write_gz, write_zip

TEXT = b"1,2,3\n4,5,6\n"


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".zip", ".CSV.GZ"])
def test_plain_gzip_and_zip_files_give_the_same_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix.lower().endswith(".gz"):
        write_gz(path, TEXT)
    elif suffix == ".zip":
        write_zip(path, "data.csv", TEXT)
    else:
        path.write_bytes(TEXT)
    with open_source(path) as stream:
        assert stream.read() == TEXT


def test_a_zip_must_hold_exactly_one_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", TEXT)
        archive.writestr("b.csv", TEXT)
    folder_only = tmp_path / "folder.zip"
    with zipfile.ZipFile(folder_only, "w") as archive:
        archive.writestr("data/", b"")
        archive.writestr("data/a.csv", TEXT)
    for path, count in ((empty, 0), (two, 2)):
        with pytest.raises(SourceError, match=f"exactly one file, this one holds {count}"), open_source(path):
            pass
    with open_source(folder_only) as stream:  # a folder entry is no file
        assert stream.read() == TEXT


def test_unreadable_sources_are_source_errors_naming_the_file(tmp_path: Path) -> None:
    corrupt_gz = tmp_path / "corrupt.csv.gz"
    corrupt_gz.write_bytes(b"not gzip at all")
    truncated_gz = tmp_path / "truncated.csv.gz"
    truncated_gz.write_bytes(gzip.compress(TEXT * 1000)[:-12])
    corrupt_zip = tmp_path / "corrupt.zip"
    corrupt_zip.write_bytes(b"PK not really")
    for path in (tmp_path / "missing.csv", corrupt_gz, truncated_gz, corrupt_zip):
        with pytest.raises(SourceError, match=str(path.name)) as raised, open_source(path) as stream:
            stream.read()
        assert isinstance(raised.value, K2Error)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(TEXT)


def test_a_folder_expands_to_its_data_files_in_date_order(tmp_path: Path) -> None:
    _touch(
        tmp_path / "dumps",
        "BTCUSDT-trades-2024-01-10.zip",
        "BTCUSDT-trades-2024-01-02.zip",
        "BTCUSDT-trades-2024-01-02.zip.CHECKSUM",
        "BTCUSDT-trades-2023-12.zip",  # a month sorts before its days
        "BTCUSDT-trades-2024-01.zip",
        "binance_trades_2024-01-01_BTCUSDT.csv.gz",  # Tardis names: the date is inside
        "notes.txt",
        ".DS_Store",
    )
    _touch(tmp_path / "dumps" / "nested", "BTCUSDT-trades-2020-01-01.zip")  # only direct children
    assert [p.name for p in expand(str(tmp_path / "dumps"))] == [
        "BTCUSDT-trades-2023-12.zip",
        "BTCUSDT-trades-2024-01.zip",
        "binance_trades_2024-01-01_BTCUSDT.csv.gz",
        "BTCUSDT-trades-2024-01-02.zip",
        "BTCUSDT-trades-2024-01-10.zip",
        "notes.txt",  # no date: last, by name
    ]


def test_a_glob_expands_in_date_order_and_a_file_to_itself(tmp_path: Path) -> None:
    _touch(tmp_path / "a", "ETHUSDT-aggTrades-2024-02-01.zip", "ETHUSDT-aggTrades-2024-01-31.zip")
    _touch(tmp_path / "b", "ETHUSDT-aggTrades-2024-01-15.zip", "ETHUSDT-trades-2024-01-01.zip")
    assert [p.name for p in expand(str(tmp_path / "*" / "*-aggTrades-*.zip"))] == [
        "ETHUSDT-aggTrades-2024-01-15.zip",
        "ETHUSDT-aggTrades-2024-01-31.zip",
        "ETHUSDT-aggTrades-2024-02-01.zip",
    ]
    assert [p.name for p in expand(str(tmp_path / "**" / "*2024-01-01*"))] == ["ETHUSDT-trades-2024-01-01.zip"]
    one = tmp_path / "a" / "ETHUSDT-aggTrades-2024-02-01.zip"
    assert expand(str(one)) == [one]


def test_naming_nothing_readable_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no such file or folder"):
        expand(str(tmp_path / "missing.csv"))
    with pytest.raises(SourceError, match="no files match"):
        expand(str(tmp_path / "*.zip"))
    with pytest.raises(SourceError, match="holds no data files"):
        expand(str(tmp_path / "empty"))
