"""The `k2` command line: a thin Typer shell over k2_core, k2_stream and k2_api."""
