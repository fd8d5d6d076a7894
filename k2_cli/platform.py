"""Platform commands: `k2 run` (everything, embedded), `k2 ingest`, `k2 api`."""

from __future__ import annotations

from typing import Annotated

import typer

from k2_core.settings import Settings


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest() -> None:
        """Run the stream ingester (Kafka -> Iceberg, exactly once) until Ctrl-C."""
        from k2_stream.__main__ import run_ingester

        run_ingester(Settings())

    @app.command("ingest-books")
    def ingest_books() -> None:
        """Run the level-2 books ingester (books topics -> book_snapshots, book_updates, exactly once) until Ctrl-C."""
        from k2_stream.__main__ import run_book_ingester

        run_book_ingester(Settings())

    @app.command()
    def committer() -> None:
        """Run a committer candidate of coordinated commits (K2_INGEST_COMMIT_MODE=coordinated) until Ctrl-C."""
        from k2_stream.committer import run_committer

        run_committer(Settings())

    @app.command()
    def api() -> None:
        """Serve the query API (REST + OpenAPI at /docs)."""
        from k2_api.main import serve

        serve(Settings())

    @app.command()
    def run(
        simulators: Annotated[bool, typer.Option(help="Start the ASX, NYSE and Binance feed simulators.")] = True,
        dagster: Annotated[bool, typer.Option(help="Start the Dagster UI (:3000) and daemon.")] = True,
        rate: Annotated[int, typer.Option(min=1, help="Trades per second per simulated exchange.")] = 50,
        max_partitions: Annotated[
            int, typer.Option(min=1, help="Cap on partitions per topic for the embedded broker.")
        ] = 4,
    ) -> None:
        """Start the whole platform on the embedded default: broker, catalog, feeds, ingester, API, Dagster."""
        from k2_cli.supervisor import Supervisor

        supervisor = Supervisor(
            Settings(), simulators=simulators, dagster=dagster, rate=rate, max_partitions=max_partitions
        )
        raise typer.Exit(supervisor.run())
