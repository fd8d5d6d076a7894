"""Reference data: materializing `instruments` loads the files of `K2_INSTRUMENTS_DIR` into `market.instruments`, so
an operator who edited them reloads from the UI (`k2 run` and `k2 instruments load` do the same). Unchanged files
commit nothing; a bad file fails the run with the file, line and field, and the table keeps what it had."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from k2_core.lake.instruments import load_reference_files
from k2_dagster.defs.resources import K2Settings

REFERENCE_GROUP = "reference"


@asset(group_name=REFERENCE_GROUP, kinds={"iceberg"})
def instruments(context: AssetExecutionContext, k2: K2Settings) -> MaterializeResult:
    """Reference data (Iceberg market.instruments): tick and lot sizes, identifiers, listed dates, strictness."""
    settings = k2.get()
    result = load_reference_files(settings)  # ConfigError fails the run, naming the file, line and field
    context.log.info(
        f"{result.rows} instruments from {settings.instruments.dir}: "
        + (f"new snapshot {result.snapshot_id}" if result.changed else "unchanged, nothing committed")
    )
    return MaterializeResult(
        metadata={
            "rows": result.rows,
            "changed": result.changed,
            "snapshot_id": MetadataValue.int(result.snapshot_id) if result.snapshot_id is not None else None,
            "dir": str(settings.instruments.dir),
        }
    )
