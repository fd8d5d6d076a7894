"""`k2 query ...`: placeholder (filled in by its owner)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Query K2's tables.", no_args_is_help=True)
