"""The Kafka topic layout `market.<asset_class>.<trades|quotes>.<exchange>`, read from config/kafka/topics.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, cast

import yaml

from k2_core.exceptions import ConfigError

Kind = Literal["trades", "quotes"]
KINDS: tuple[Kind, ...] = ("trades", "quotes")
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


def topic_name(asset_class: str, kind: str, exchange: str) -> str:
    return f"market.{asset_class}.{kind}.{exchange}"


@dataclass(frozen=True)
class TopicLayout:
    topics: tuple[TopicSpec, ...]
    replication_factor: int

    @classmethod
    def load(cls, path: Path, max_partitions: int | None = None, replication_factor: int | None = None) -> TopicLayout:
        try:
            raw = yaml.safe_load(path.read_text())
            specs = []
            for asset_class, exchanges in raw["asset_classes"].items():
                for exchange, conf in exchanges.items():
                    partitions = int(conf["partitions"])
                    if max_partitions is not None:
                        partitions = min(partitions, max_partitions)
                    for kind in raw.get("kinds", KINDS):
                        if kind not in KINDS:
                            raise ConfigError(f"{path}: unknown kind {kind!r}")
                        specs.append(TopicSpec(asset_class, cast(Kind, kind), exchange, partitions))
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read topic layout {path}: {exc}") from exc
        return cls(tuple(specs), replication_factor or int(raw.get("replication_factor", 1)))

    @cached_property
    def by_name(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.topics}

    @cached_property
    def exchanges(self) -> dict[str, str]:
        """exchange -> asset class."""
        return {t.exchange: t.asset_class for t in self.topics}

    def spec(self, exchange: str, kind: Kind) -> TopicSpec:
        try:
            return self.by_name[topic_name(self.exchanges[exchange], kind, exchange)]
        except KeyError as exc:
            raise ConfigError(f"unknown exchange {exchange!r}; known: {sorted(self.exchanges)}") from exc
