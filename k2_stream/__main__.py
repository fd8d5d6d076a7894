"""`python -m k2_stream`: run the ingester until SIGINT/SIGTERM, then commit the batch in hand and leave."""

from __future__ import annotations

from k2_core.logging import configure_logging
from k2_core.settings import Settings
from k2_stream.ingester import Ingester
from k2_stream.signals import stop_on_signals
from k2_stream.status import serve_status


def run_ingester(settings: Settings) -> None:
    configure_logging("ingester", settings.log_level)
    ingester = Ingester(settings)

    stop_on_signals(ingester.stop)
    server = (
        serve_status(ingester.health, settings.api.host, settings.ingest.metrics_port)
        if settings.ingest.metrics_port
        else None
    )
    try:
        ingester.run()
    finally:
        if server is not None:
            server.shutdown()


def run_book_ingester(settings: Settings) -> None:
    """The level-2 books ingester (k2_stream.book_ingester) until SIGINT/SIGTERM."""
    from k2_stream.book_ingester import BookIngester
    from k2_stream.book_metrics import book_ingester_registry

    configure_logging("book-ingester", settings.log_level)
    ingester = BookIngester(settings)

    stop_on_signals(ingester.stop)
    port = settings.ingest.book_metrics_port
    registry = book_ingester_registry()
    server = serve_status(ingester.health, settings.api.host, port, registry) if port else None
    try:
        ingester.run()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    run_ingester(Settings())
