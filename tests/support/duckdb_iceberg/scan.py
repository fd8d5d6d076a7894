"""Read an Iceberg table with DuckDB's own Iceberg extension and write what it read to a Parquet file.

Runs in the venv of this folder (`make install`; DuckDB 1.4.4 with the iceberg and avro extensions from PyPI wheels),
never in K2's, and imports nothing of K2: it is the independent reader the interoperability tests compare K2 with.
Offline: the extensions are loaded from the wheels' files and DuckDB may install or download none.

    python scan.py METADATA_JSON OUT_PARQUET [--snapshot-id ID]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb


def extension(name: str) -> Path:
    """The extension file a `duckdb-ext-<name>` wheel ships for this DuckDB release and platform."""
    import duckdb_ext  # type: ignore[import-not-found]  # a namespace package the wheels install

    roots = [Path(p) / "extensions" for p in duckdb_ext.__path__]
    found = [f for root in roots for f in root.glob(f"v{duckdb.__version__}/*/{name}.duckdb_extension")]
    if not found:
        raise SystemExit(f"no {name} extension for DuckDB {duckdb.__version__} under {roots}")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metadata")
    parser.add_argument("out")
    parser.add_argument("--snapshot-id", type=int)
    args = parser.parse_args()
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name in ("avro", "iceberg"):  # avro first: iceberg reads its manifests with it
        con.execute(f"LOAD '{extension(name)}'")
    options = f", snapshot_from_id => {args.snapshot_id}" if args.snapshot_id is not None else ""
    source = f"iceberg_scan('{args.metadata}'{options})"
    con.execute(f"COPY (SELECT * FROM {source}) TO '{args.out}' (FORMAT parquet)")


if __name__ == "__main__":
    main()
