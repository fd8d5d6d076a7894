"""Databento DBN files for tests and benchmarks, written by `databento_dbn`'s own encoder (its `Metadata` and record
classes serialise themselves; its `Transcoder` compresses), so the reader is checked against the format as Databento
writes it rather than against K2's idea of it."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import databento_dbn as dbn

UNDEF = dbn.UNDEF_PRICE


@dataclass(frozen=True)
class Interval:  # what databento_dbn reads a mapping interval from (attributes, not a dict)
    start_date: date
    end_date: date
    symbol: str


@dataclass(frozen=True)
class SymbolMapping:  # what databento_dbn reads a raw symbol's mappings from
    raw_symbol: str
    intervals: list[Interval]


def ns(text: str) -> int:
    """An ISO time with up to nine decimals (UTC) -> nanoseconds since the epoch, exactly."""
    whole, _, frac = text.partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def px(value: str | int) -> int:
    """A decimal price -> DBN's int64 units of 1e-9 (exact; the value may have nine decimals)."""
    units = Decimal(value).scaleb(9)
    assert units == units.to_integral_value(), value
    return int(units)


def trade(
    iid: int,
    ts_event: str,
    price: str | int,
    size: int = 1,
    side: str = "N",
    sequence: int = 0,
    ts_recv: str | None = None,
) -> dbn.TradeMsg:
    return dbn.TradeMsg(
        publisher_id=1,
        instrument_id=iid,
        ts_event=ns(ts_event),
        price=price if isinstance(price, int) else px(price),
        size=size,
        action=dbn.Action.TRADE,
        side=dbn.Side(side),
        depth=0,
        ts_recv=ns(ts_recv or ts_event),
        sequence=sequence,
    )


def mbp1(
    iid: int,
    ts_event: str,
    bid: str | int,
    bid_size: int,
    ask: str | int,
    ask_size: int,
    action: str = "A",
    side: str = "B",
    sequence: int = 0,
    ts_recv: str | None = None,
) -> dbn.MBP1Msg:
    """An mbp-1 (or, with action "T", tbbo) record; a price given as an int is already in 1e-9 units (UNDEF)."""
    level = dbn.BidAskPair(
        bid_px=bid if isinstance(bid, int) else px(bid),
        ask_px=ask if isinstance(ask, int) else px(ask),
        bid_sz=bid_size,
        ask_sz=ask_size,
        bid_ct=1 if bid_size else 0,
        ask_ct=1 if ask_size else 0,
    )
    return dbn.MBP1Msg(
        publisher_id=1,
        instrument_id=iid,
        ts_event=ns(ts_event),
        price=level.bid_px if side == "B" else level.ask_px,
        size=1,
        action=dbn.Action(action),
        side=dbn.Side(side),
        depth=0,
        ts_recv=ns(ts_recv or ts_event),
        sequence=sequence,
        levels=level,
    )


def mbp10(
    iid: int,
    ts_event: str,
    bids: Sequence[tuple[str | int, int]],
    asks: Sequence[tuple[str | int, int]],
    action: str = "A",
    side: str = "B",
    sequence: int = 0,
    flags: int = 0,
) -> dbn.MBP10Msg:
    """An mbp-10 record whose levels are `bids` and `asks` (price, size) best first, at most ten a side; the levels
    past them are empty (UNDEF_PRICE). A price given as an int is already in 1e-9 units."""

    def units(price: str | int) -> int:
        return price if isinstance(price, int) else px(price)

    pairs = []
    for depth in range(10):
        bid = bids[depth] if depth < len(bids) else (UNDEF, 0)
        ask = asks[depth] if depth < len(asks) else (UNDEF, 0)
        pairs.append(
            dbn.BidAskPair(
                bid_px=units(bid[0]),
                ask_px=units(ask[0]),
                bid_sz=bid[1],
                ask_sz=ask[1],
                bid_ct=1 if bid[1] else 0,
                ask_ct=1 if ask[1] else 0,
            )
        )
    top = pairs[0].bid_px if side == "B" else pairs[0].ask_px
    return dbn.MBP10Msg(
        publisher_id=1,
        instrument_id=iid,
        ts_event=ns(ts_event),
        price=top,
        size=1,
        action=dbn.Action(action),
        side=dbn.Side(side),
        depth=0,
        ts_recv=ns(ts_event),
        flags=flags,
        sequence=sequence,
        levels=pairs,
    )


def metadata(
    schema: str,
    mappings: Mapping[str, Sequence[tuple[date, date, int]]],
    version: int = dbn.DBN_VERSION,
    stype_in: dbn.SType = dbn.SType.RAW_SYMBOL,
    ts_out: bool = False,
) -> dbn.Metadata:
    """Metadata as a historical request by raw symbol writes it: raw symbol -> [start, end) date ranges -> id."""
    return dbn.Metadata(
        dataset="GLBX.MDP3",
        start=ns("2024-11-01T00:00:00"),
        end=ns("2024-11-03T00:00:00"),
        stype_in=stype_in,
        stype_out=dbn.SType.INSTRUMENT_ID,
        schema=dbn.Schema.from_str(schema),
        symbols=list(mappings),
        mappings=[
            SymbolMapping(raw, [Interval(start, end, str(iid)) for start, end, iid in intervals])
            for raw, intervals in mappings.items()
        ],
        ts_out=ts_out,
        version=version,
    )


def encode(meta: dbn.Metadata, records: Iterable[dbn.TradeMsg | dbn.MBP1Msg | dbn.MBP10Msg | bytes]) -> bytes:
    return bytes(meta) + b"".join(rec if isinstance(rec, bytes) else bytes(rec) for rec in records)


def zstd(plain: bytes) -> bytes:
    """DBN bytes -> the same stream zstd-compressed, as Databento delivers `.dbn.zst` files."""
    out = io.BytesIO()
    with dbn.Transcoder(out, dbn.Encoding.DBN, dbn.Compression.ZSTD) as transcoder:
        transcoder.write(plain)
    return out.getvalue()


def write(path: Path, plain: bytes) -> Path:
    """Writes `plain` DBN bytes to `path`, compressed when its name ends in .zst."""
    path.write_bytes(zstd(plain) if path.suffix == ".zst" else plain)
    return path
