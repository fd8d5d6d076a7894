"""Response models: the API's public contract, and the source of its OpenAPI schema.

Prices and sizes go out as fixed-point decimal strings ("45.12000000"): a JSON number would pass through a
client's binary float and lose the exactness the tables store. Timestamps are ISO-8601 in UTC ("...Z").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, PlainSerializer


def _decimal_text(value: Decimal) -> str:
    # "f", not str(): str(Decimal("0E-8")) is "0E-8", which many clients cannot parse as a plain number.
    return format(value, "f")


DecimalString = Annotated[
    Decimal,
    PlainSerializer(_decimal_text, return_type=str),
    Field(examples=["45.12000000"]),
]


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["start must be before end (start=..., end=...)"])


class Trade(BaseModel):
    symbol: str
    exchange: str
    exchange_timestamp: AwareDatetime
    exchange_sequence_number: int
    price: DecimalString
    volume: DecimalString
    side: str
    trade_id: str
    ingestion_timestamp: AwareDatetime


class Quote(BaseModel):
    symbol: str
    exchange: str
    exchange_timestamp: AwareDatetime
    exchange_sequence_number: int
    bid_price: DecimalString
    bid_size: DecimalString
    ask_price: DecimalString
    ask_size: DecimalString
    ingestion_timestamp: AwareDatetime


class Gap(BaseModel):
    gap_id: str
    data_type: str
    exchange: str
    symbol: str
    first_missing: int
    last_missing: int
    missing_count: int
    severity: str
    status: str
    detected_at: AwareDatetime
    resolved_at: AwareDatetime | None
    attempts: int
    reason: str | None


class _MarketResponse(BaseModel):
    """The resolved query is echoed so a client that relied on defaults knows which window it got, and
    `count == limit` tells it to page on from the last timestamp."""

    count: int
    symbol: str
    exchange: str
    start: AwareDatetime
    end: AwareDatetime
    limit: int


class TradesResponse(_MarketResponse):
    data: list[Trade]


class QuotesResponse(_MarketResponse):
    data: list[Quote]


class GapsResponse(BaseModel):
    data: list[Gap]
    count: int
    exchange: str | None
    symbol: str | None
    status: str | None


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    catalog_reachable: bool
    namespace: str
    snapshots: dict[str, int | None] = Field(description="Current snapshot id per table; null = never written.")
    error: str | None = None
