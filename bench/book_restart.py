"""What a book ingester's start reads, as the stored history grows: the whole key columns of the book tables (the
rebuild before issue 18's follow-up) against each book's newest stored day (k2_core.ingest.book_state, now).

    .venv/bin/python -m bench.book_restart                          # 1, 4 and 16 days of 4 symbols
    .venv/bin/python -m bench.book_restart --days 1 8 32 --updates-per-day 50000

History is appended straight to a fresh SQLite catalog (no broker: this measures the start's reads), a day at a
time, each symbol numbered without holes and a feed snapshot every `--snapshot-every` updates. At each size it fills
a tracker both ways for every symbol, checks that both trackers hold the same numbers, and prints the keys read and
the seconds each took. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pyiceberg.expressions import EqualTo

from bench.backlog import bench_settings, workdir
from k2_core.ingest.book_sequence import BookStreams
from k2_core.ingest.book_state import BOOK_KEY, BookState
from k2_core.ingest.gaps import GapGrading, GapStore, event_gap_id
from k2_core.lake.catalog import ensure_tables, open_catalog
from k2_core.model.books import Book, update_record
from k2_core.model.tables import BOOK_SNAPSHOTS, BOOK_UPDATES, BOOK_VALIDITY, SOURCE_FEED


def day_of_rows(
    symbols: tuple[str, ...], day: datetime, per_day: int, every: int, next_seq: dict[str, int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One day of updates (spread over the day, symbols in turn) and the feed snapshots among them."""
    updates, snapshots = [], []
    step = timedelta(days=1) / per_day
    now = datetime.now(UTC)
    for i in range(per_day):
        symbol = symbols[i % len(symbols)]
        seq = next_seq[symbol] = next_seq[symbol] + 1
        at = day + step * i
        updates.append(update_record(symbol, "asx", at, seq, "bid", Decimal(100), Decimal(seq % 50 + 1), now))
        if seq % every == 0:
            snapshots.append({**Book(seq).snapshot_record(symbol, "asx", at, now), "source": SOURCE_FEED})
    return updates, snapshots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 4, 16], help="history sizes to measure at")
    parser.add_argument("--updates-per-day", type=int, default=20_000)
    parser.add_argument("--snapshot-every", type=int, default=500)
    args = parser.parse_args()

    symbols = ("BHP", "CBA", "NAB", "WBC")
    settings = bench_settings("127.0.0.1:1", workdir(), 1)
    ing = settings.ingest
    tables = ensure_tables(open_catalog(settings), settings.catalog.namespace)
    updates, snapshots, validity = (tables[t.name] for t in (BOOK_UPDATES, BOOK_SNAPSHOTS, BOOK_VALIDITY))
    gaps = GapStore(tables["sequence_gaps"], GapGrading(ing.gap_alert_threshold, ing.gap_halt_threshold))
    first_day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=max(args.days))
    next_seq = dict.fromkeys(symbols, 0)
    stored_days = 0
    print(f"{len(symbols)} symbols, {args.updates_per_day:,} updates a day, a snapshot every {args.snapshot_every}")
    for days in sorted(args.days):
        while stored_days < days:
            day_updates, day_snapshots = day_of_rows(
                symbols, first_day + timedelta(days=stored_days), args.updates_per_day, args.snapshot_every, next_seq
            )
            updates.append(BOOK_UPDATES.to_arrow(day_updates))
            snapshots.append(BOOK_SNAPSHOTS.to_arrow(day_snapshots))
            stored_days += 1

        started = time.perf_counter()
        whole = BookStreams(event_gap_id)
        for table in (updates, snapshots, validity):
            table.refresh()
        all_updates = updates.scan(selected_fields=BOOK_KEY).to_arrow()
        all_snapshots = snapshots.scan(
            row_filter=EqualTo(term="source", value=SOURCE_FEED), selected_fields=BOOK_KEY
        ).to_arrow()
        whole.load(all_updates, all_snapshots, validity.scan().to_arrow(), gaps.open_book_gaps())
        whole_s = time.perf_counter() - started

        started = time.perf_counter()
        newest = BookStreams(event_gap_id)
        state = BookState(updates, snapshots, validity, gaps.open_book_gaps, newest)
        state.reset()
        state.ensure([("asx", s) for s in symbols])
        newest_s = time.perf_counter() - started

        same = all(
            (whole.streams[k].last_update, whole.streams[k].last_snapshot, whole.streams[k].last_at)
            == (newest.streams[k].last_update, newest.streams[k].last_snapshot, newest.streams[k].last_at)
            for k in whole.streams
        )
        print(
            f"{days:>3} days ({all_updates.num_rows:,} updates stored): whole history {whole_s:.2f} s "
            f"({all_updates.num_rows + all_snapshots.num_rows:,} keys), newest day {newest_s:.2f} s; "
            f"same tracker: {same}"
        )


if __name__ == "__main__":
    main()
