"""The Kafka topic layout `market.<asset_class>.<trades|quotes|books>.<exchange>`, read from config/kafka/topics.yaml.

Trades and quotes topics (`Kind`) each carry one record type that becomes one table, and every module that says
`Kind` means those two. A books topic carries two record types on one topic, so a symbol's snapshots and level
updates share a partition and keep their order: its specs are `BookTopicSpec`s, kept apart in
`TopicLayout.books`, so nothing written for trades and quotes meets a books topic by accident."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, cast

import yaml

from k2_core.exceptions import ConfigError

Kind = Literal["trades", "quotes"]
KINDS: tuple[Kind, ...] = ("trades", "quotes")
BOOKS = "books"  # the topic kind of level-2 order books (k2_core.model.books)
BookRecord = Literal["book_snapshots", "book_updates"]
BOOK_RECORDS: tuple[BookRecord, ...] = ("book_snapshots", "book_updates")
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    asset_class: str
    kind: Kind
    exchange: str
    partitions: int

    @property
    def name(self) -> str:
        return topic_name(self.asset_class, self.kind, self.exchange)

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    @property
    def subject(self) -> str:
        """The schema-registry subject (Confluent TopicRecordName-free default: one per asset class and kind)."""
        return f"market.{self.asset_class}.{self.kind}-value"


@dataclass(frozen=True)
class BookTopicSpec:
    """`market.<asset_class>.books.<exchange>`: snapshots and updates of every symbol of one exchange, keyed by
    symbol. Each record type has its own subject (Confluent's TopicRecordNameStrategy idea): the wire format's
    schema id says which type a message is."""

    asset_class: str
    exchange: str
    partitions: int

    @property
    def name(self) -> str:
        return topic_name(self.asset_class, BOOKS, self.exchange)

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    def subject(self, record: BookRecord) -> str:
        return f"market.{self.asset_class}.{record}-value"


def topic_name(asset_class: str, kind: str, exchange: str) -> str:
    return f"market.{asset_class}.{kind}.{exchange}"


@dataclass(frozen=True)
class TopicLayout:
    topics: tuple[TopicSpec, ...]
    replication_factor: int
    books: tuple[BookTopicSpec, ...] = ()

    @classmethod
    def load(cls, path: Path, max_partitions: int | None = None, replication_factor: int | None = None) -> TopicLayout:
        try:
            raw = yaml.safe_load(path.read_text())
            specs = []
            books = []
            for asset_class, exchanges in raw["asset_classes"].items():
                for exchange, conf in exchanges.items():
                    partitions = int(conf["partitions"])
                    if max_partitions is not None:
                        partitions = min(partitions, max_partitions)
                    for kind in raw.get("kinds", KINDS):
                        if kind == BOOKS:
                            books.append(BookTopicSpec(asset_class, exchange, partitions))
                        elif kind in KINDS:
                            specs.append(TopicSpec(asset_class, cast(Kind, kind), exchange, partitions))
                        else:
                            raise ConfigError(f"{path}: unknown kind {kind!r}")
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read topic layout {path}: {exc}") from exc
        return cls(tuple(specs), replication_factor or int(raw.get("replication_factor", 1)), tuple(books))

    @cached_property
    def by_name(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.topics}

    @cached_property
    def book_topics(self) -> dict[str, BookTopicSpec]:
        """exchange -> its books topic (exchanges without books are absent)."""
        return {b.exchange: b for b in self.books}

    def all_names(self) -> list[tuple[str, int]]:
        """(topic, partitions) of every topic, trades, quotes and books: what the broker must hold."""
        return [(t.name, t.partitions) for t in self.topics] + [(b.name, b.partitions) for b in self.books]

    def book_spec(self, exchange: str) -> BookTopicSpec:
        try:
            return self.book_topics[exchange]
        except KeyError as exc:
            raise ConfigError(f"exchange {exchange!r} has no books topic; known: {sorted(self.book_topics)}") from exc

    @cached_property
    def exchanges(self) -> dict[str, str]:
        """exchange -> asset class."""
        return {t.exchange: t.asset_class for t in self.topics}

    def spec(self, exchange: str, kind: Kind) -> TopicSpec:
        try:
            return self.by_name[topic_name(self.exchanges[exchange], kind, exchange)]
        except KeyError as exc:
            raise ConfigError(f"unknown exchange {exchange!r}; known: {sorted(self.exchanges)}") from exc
