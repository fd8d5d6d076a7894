"""Readers of the historical files quants hold (k2_core.ingest.formats.base says what a reader hands on): trades and
quotes (`FORMATS`), and level-2 books (`BOOK_FORMATS`, k2_core.ingest.formats.book_files)."""

from __future__ import annotations

from k2_core.exceptions import ConfigError
from k2_core.ingest.formats.base import BadRow, Chunk, FileFormat, ReadOptions
from k2_core.ingest.formats.book_files import BookFileFormat

FORMATS: dict[str, FileFormat] = {}
BOOK_FORMATS: dict[str, BookFileFormat] = {}


def register(fmt: FileFormat) -> FileFormat:
    if fmt.name in FORMATS or fmt.name in BOOK_FORMATS:
        raise ValueError(f"format {fmt.name!r} registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def register_book(fmt: BookFileFormat) -> BookFileFormat:
    if fmt.name in FORMATS or fmt.name in BOOK_FORMATS:
        raise ValueError(f"format {fmt.name!r} registered twice")
    BOOK_FORMATS[fmt.name] = fmt
    return fmt


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown file format {name!r}; known: {', '.join(sorted([*FORMATS, *BOOK_FORMATS]))}")


def file_format(name: str) -> FileFormat:
    """A trades or quotes format."""
    try:
        return FORMATS[name]
    except KeyError as exc:
        if name in BOOK_FORMATS:
            raise ConfigError(f"{name!r} is a book format: `k2 import` reads it, replays and recovery do not") from exc
        raise _unknown(name) from exc


def any_format(name: str) -> FileFormat | BookFileFormat:
    """A format of either kind, for `k2 import`."""
    found = FORMATS.get(name) or BOOK_FORMATS.get(name)
    if found is None:
        raise _unknown(name)
    return found


__all__ = [
    "BOOK_FORMATS",
    "FORMATS",
    "BadRow",
    "BookFileFormat",
    "Chunk",
    "FileFormat",
    "ReadOptions",
    "any_format",
    "file_format",
    "register",
    "register_book",
]


# Each format module registers its formats on import (k2_core.ingest.formats.<module>), so importing the package
# fills FORMATS and BOOK_FORMATS. A new format is a module of its own, imported here.
from k2_core.ingest.formats import (  # noqa: E402
    binance,  # noqa: F401
    databento,  # noqa: F401
    databento_books,  # noqa: F401
    generic,  # noqa: F401
    tardis,  # noqa: F401
    tardis_books,  # noqa: F401
)
