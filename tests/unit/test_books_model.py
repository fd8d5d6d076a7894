"""The level-2 book model: topics, Avro schemas and Iceberg tables agree with each other, and a book applies updates
the way every reader of a book must (k2_core.model.books)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from k2_core.exceptions import BookError, ConfigError
from k2_core.model.avro import Decoder, encode
from k2_core.model.books import ASK, BID, Book, spread_mid_imbalance, update_record
from k2_core.model.registry import FileSchemaRegistry
from k2_core.model.tables import BOOK_KEYS, BOOK_SNAPSHOTS, BOOK_TABLES, BOOK_UPDATES, SOURCE_FEED
from k2_core.model.topics import BOOK_RECORDS, KINDS, TopicLayout
from k2_core.settings import KafkaSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY = FileSchemaRegistry(KafkaSettings().schemas_dir)
T0 = datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC)


def test_every_exchange_has_a_books_topic_beside_its_trades_and_quotes() -> None:
    layout = TopicLayout.load(REPO_ROOT / "config" / "kafka" / "topics.yaml", max_partitions=4)
    assert {t.kind for t in layout.topics} == set(KINDS), "trades and quotes topics are as they were"
    assert set(layout.book_topics) == set(layout.exchanges)
    nyse = layout.book_spec("nyse")
    assert nyse.name == "market.equities.books.nyse"
    assert nyse.dlq == "market.equities.books.nyse.dlq"
    assert nyse.partitions == 4
    assert nyse.subject("book_updates") == "market.equities.book_updates-value"
    names = [name for name, _ in layout.all_names()]
    assert len(names) == len(set(names)) == 3 * len(layout.exchanges)
    with pytest.raises(ConfigError, match="no books topic"):
        layout.book_spec("lse")


def test_a_layout_without_books_has_no_books_topics(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("kinds: [trades, quotes]\nasset_classes: {equities: {asx: {partitions: 2}}}\n")
    assert TopicLayout.load(path).books == ()
    path.write_text("kinds: [trades, level3]\nasset_classes: {equities: {asx: {partitions: 2}}}\n")
    with pytest.raises(ConfigError, match="unknown kind 'level3'"):
        TopicLayout.load(path)


def _sample_book(seed: int) -> Book:
    rng = random.Random(seed)
    book = Book(sequence=rng.randint(0, 10**9))
    for i in range(1, 11):
        book.apply(BID, Decimal("100") - Decimal(i) / 100, Decimal(rng.randint(1, 900)))
        book.apply(ASK, Decimal("100") + Decimal(i) / 100, Decimal(rng.randint(1, 900)) / 1000)
    return book


@pytest.mark.parametrize("record", BOOK_RECORDS)
def test_each_book_record_round_trips_avro_and_the_table_in_the_wire_format(record: str) -> None:
    """A record encoded with its subject's schema decodes to itself, and becomes a row of its table with exactly the
    table's columns (the snapshot's `source` is the table's own: the feed's snapshots are all `feed`)."""
    for exchange_class in ("equities", "crypto"):
        schema_id, schema = REGISTRY.latest(f"market.{exchange_class}.{record}-value")
        book = _sample_book(schema_id)
        if record == "book_snapshots":
            value = book.snapshot_record("BHP", "asx", T0, T0)
        else:
            value = update_record("BHP", "asx", T0, 7, ASK, Decimal("100.01"), Decimal("0.00000001"), T0)
        decoded = Decoder(REGISTRY).decode(encode(schema_id, schema, value))
        assert decoded == value
        table_def = BOOK_TABLES[record]  # type: ignore[index]
        row = {**decoded, "source": SOURCE_FEED} if record == "book_snapshots" else decoded
        arrow = table_def.to_arrow([row])
        assert arrow.to_pylist() == [row]
        assert set(arrow.column_names) == set(row)
        assert set(BOOK_KEYS[record]) <= set(arrow.column_names)  # type: ignore[index]


def test_the_avro_fields_are_the_table_columns_in_order() -> None:
    for record, table_def in BOOK_TABLES.items():
        _, schema = REGISTRY.latest(f"market.equities.{record}-value")
        fields = [f["name"] for f in schema["fields"]]
        columns = list(table_def.column_names)
        if record == "book_snapshots":
            columns.remove("source")  # stamped by K2: the feed never says it
        assert fields == columns


def test_book_tables_are_day_partitioned_and_clustered_by_instrument_then_time() -> None:
    for table_def in (BOOK_UPDATES, BOOK_SNAPSHOTS):
        (partition,) = table_def.partition_spec.fields
        assert str(partition.transform) == "day"
        assert table_def.schema.find_field(partition.source_id).name == "exchange_timestamp"
        assert table_def.compaction_keys == ("symbol", "exchange", "exchange_timestamp", "exchange_sequence_number")
        assert table_def.sort_keys == ("exchange_timestamp", "exchange_sequence_number")


def test_sort_puts_rows_in_time_then_sequence_order() -> None:
    rng = random.Random(3)
    rows = [
        update_record(
            "X", "asx", T0.replace(second=rng.randint(0, 5)), rng.randint(0, 100), BID, Decimal(1), Decimal(2), T0
        )
        for _ in range(50)
    ]
    got = BOOK_UPDATES.to_arrow(rows).to_pylist()
    assert [(r["exchange_timestamp"], r["exchange_sequence_number"]) for r in got] == sorted(
        (r["exchange_timestamp"], r["exchange_sequence_number"]) for r in rows
    )


def test_a_book_applies_updates_as_new_level_sizes() -> None:
    """Against a plain list oracle: each update sets the level's size, 0 removes it; sides come best first."""
    rng = random.Random(11)
    book = Book()
    oracle: dict[str, dict[Decimal, Decimal]] = {BID: {}, ASK: {}}
    for seq in range(1, 2001):
        side = rng.choice((BID, ASK))
        price = Decimal(rng.randint(9900, 10100)) / 100
        size = Decimal(0) if rng.random() < 0.3 else Decimal(rng.randint(1, 500))
        book.apply(side, price, size, seq)
        if size == 0:
            oracle[side].pop(price, None)
        else:
            oracle[side][price] = size
    assert book.sequence == 2000
    assert book.levels(BID) == sorted(oracle[BID].items(), key=lambda lv: -lv[0])
    assert book.levels(ASK, depth=5) == sorted(oracle[ASK].items())[:5]
    assert book.best(BID) == max(oracle[BID].items())
    again = Book.from_levels(book.sequence, book.as_dict()["bids"], book.as_dict()["asks"])
    assert again == book


def test_bad_updates_are_book_errors() -> None:
    with pytest.raises(BookError, match="side must be"):
        Book().apply("buy", Decimal(1), Decimal(1))
    with pytest.raises(BookError, match="negative size"):
        Book().apply(BID, Decimal(1), Decimal(-1))


def test_spread_mid_and_imbalance_of_the_top_of_book() -> None:
    book = Book()
    assert spread_mid_imbalance(book) == (None, None, None)
    book.apply(BID, Decimal("99.98"), Decimal(300))
    book.apply(BID, Decimal("99.97"), Decimal(5))
    book.apply(ASK, Decimal("100.02"), Decimal(100))
    spread, mid, imbalance = spread_mid_imbalance(book)
    assert spread == Decimal("100.02") - Decimal("99.98")
    assert mid == (Decimal("100.02") + Decimal("99.98")) / 2
    assert imbalance == Decimal(200) / Decimal(400)


def test_snapshot_levels_are_stored_as_a_list_of_price_size_structs() -> None:
    levels = BOOK_SNAPSHOTS.arrow_schema.field("bids").type
    assert pa.types.is_list(levels) or pa.types.is_large_list(levels)
    assert [f.name for f in levels.value_type] == ["price", "size"]
