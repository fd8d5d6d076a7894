"""`k2 instruments load|list`: reference data (`market.instruments`) from the files of `K2_INSTRUMENTS_DIR`.

`load` stores the files as one new snapshot, or nothing when they hold the rows stored already; a bad file is
refused whole with the file, line and field it breaks (exit code 2), and the table is left as it was. `list` prints
the stored rows, as of now or of a past load.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from k2_cli.query import AsOfOpt, SnapshotOpt, _engine, _fail, _render
from k2_core.exceptions import ConfigError, QueryError

app = typer.Typer(help="Reference data: load the instrument files, list what is stored.", no_args_is_help=True)
EXIT_BAD_INPUT = 2


@app.command()
def load() -> None:
    """Load every <exchange>.csv of K2_INSTRUMENTS_DIR into market.instruments (one snapshot, only if changed)."""
    from k2_core.lake.instruments import load_reference_files
    from k2_core.settings import Settings

    settings = Settings()
    try:
        result = load_reference_files(settings)
    except ConfigError as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if result.changed:
        Console().print(
            f"{result.rows} instruments stored from {settings.instruments.dir}: snapshot {result.snapshot_id}"
        )
    else:
        Console().print(f"{result.rows} instruments unchanged (snapshot {result.snapshot_id}); nothing committed")


@app.command("list")
def list_(
    exchange: Annotated[str | None, typer.Option("--exchange", "-e", help="Only this exchange.")] = None,
    symbol: Annotated[str | None, typer.Option("--symbol", "-s", help="Only this uppercase ticker.")] = None,
    as_of_snapshot: SnapshotOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """The stored instruments by exchange and symbol, as of now or of a past snapshot or time."""
    try:
        with _engine() as engine:
            result = engine.instruments(exchange, symbol, as_of_snapshot=as_of_snapshot, as_of=as_of)
    except QueryError as exc:
        raise _fail(exc) from None
    caption = f"{result.table.num_rows} rows; snapshot {result.snapshot_id}"
    _render(result.table, "instruments", caption=caption)
