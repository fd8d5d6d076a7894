"""Readers of the historical files quants hold (k2_core.ingest.formats.base says what a reader hands on)."""

from __future__ import annotations

from k2_core.exceptions import ConfigError
from k2_core.ingest.formats.base import BadRow, Chunk, FileFormat, ReadOptions

FORMATS: dict[str, FileFormat] = {}


def register(fmt: FileFormat) -> FileFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def file_format(name: str) -> FileFormat:
    try:
        return FORMATS[name]
    except KeyError as exc:
        raise ConfigError(f"unknown file format {name!r}; known: {', '.join(sorted(FORMATS))}") from exc


__all__ = ["FORMATS", "BadRow", "Chunk", "FileFormat", "ReadOptions", "file_format", "register"]


# Each format module registers its formats on import (k2_core.ingest.formats.<module>), so importing the package
# fills FORMATS. A new format is a module of its own, imported here.
from k2_core.ingest.formats import (  # noqa: E402
    binance,  # noqa: F401
    databento,  # noqa: F401
    generic,  # noqa: F401
    tardis,  # noqa: F401
)
