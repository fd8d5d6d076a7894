"""Where the bytes of a historical file come from: `open_source` reads plain, gzip (.gz, how Tardis publishes) and
zip (.zip, how Binance publishes) files alike, and `expand` turns what a user typed (a file, a folder, a glob) into
the files it means, in date order, so that a month of daily dumps is imported day after day whatever the shell or
the file system listed first.
"""

from __future__ import annotations

import glob
import gzip
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from k2_core.exceptions import SourceError

# The first date in a file name: 2024-01-02 (Binance daily, Tardis) or 2024-01 (Binance monthly).
_DATE = re.compile(r"(?<![0-9])([0-9]{4})-([0-9]{2})(?:-([0-9]{2}))?(?![0-9])")
# Files a download folder holds beside the data: Binance's checksums, and hidden files (.DS_Store).
_NOT_DATA = (".checksum",)
_GLOB_CHARS = frozenset("*?[")


@contextmanager
def open_source(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, streamed and decompressed by its suffix (.gz, .zip; anything else is read as is). A zip
    must hold exactly one file, as Binance's do: which of several to read is not for K2 to guess. Failing to open
    or to decompress, now or half way through, is a SourceError naming the file."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise SourceError(f"{path}: a zip must hold exactly one file, this one holds {len(members)}")
                with archive.open(members[0]) as stream:
                    yield stream
        elif suffix == ".gz":
            with gzip.GzipFile(path, "rb") as unzipped:
                yield unzipped  # type: ignore[misc]  # a GzipFile is a binary stream; typeshed does not say IO[bytes]
        else:
            with path.open("rb") as stream:
                yield stream
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip or zip member is an EOFError, a corrupt one a zlib.error
        raise SourceError(f"cannot read {path}: {exc}") from exc


def date_key(path: Path) -> tuple[int, int, int, int, str]:
    """Sorts files by the first date in their name (a month sorts before its days), then by name; files without a
    date come last."""
    match = _DATE.search(path.name)
    if match is None:
        return (1, 0, 0, 0, path.name)
    year, month, day = match.groups()
    return (0, int(year), int(month), int(day or 0), path.name)


def _is_data(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and not path.name.lower().endswith(_NOT_DATA)


def expand(spec: str) -> list[Path]:
    """The files `spec` names, in date order (`date_key`): a file itself; a folder's files (its direct children,
    leaving out hidden files and Binance's .CHECKSUM files); or the files a glob matches (`**` included). Naming
    nothing readable is a SourceError: an import of no files is a typo, not a success."""
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            return [path]
        if path.is_dir():
            files = [p for p in path.iterdir() if _is_data(p)]
            if not files:
                raise SourceError(f"folder {spec} holds no data files")
            return sorted(files, key=date_key)
    except OSError as exc:
        raise SourceError(f"cannot read {spec}: {exc}") from exc
    if not _GLOB_CHARS & set(spec):
        raise SourceError(f"no such file or folder: {spec}")
    files = [p for p in map(Path, glob.glob(str(path), recursive=True)) if _is_data(p)]
    if not files:
        raise SourceError(f"no files match {spec}")
    return sorted(files, key=date_key)
