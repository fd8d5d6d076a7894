"""Strict reference-data rules over whole Arrow columns: what the ingester (k2_stream.prepare) and `k2 import`
(k2_core.ingest.importer) both run over a batch's valid records before anything is planned or stored.

Where an instrument is marked `strict` in `market.instruments`, or its exchange is in
`K2_INSTRUMENTS_STRICT_EXCHANGES`, a record is refused (a dead letter or an import's rejected row, with its
`ReferenceDataError: ...` reason) when a price is not a whole multiple of the tick size, a size not a whole multiple
of the lot size, or its exchange time's UTC date is outside [listed, delisted]. On a strict exchange a symbol the
table does not list is refused too. Records of any other instrument pass untouched, as they did before reference
data existed.

The checks are exact: prices, sizes, ticks and lots are all DECIMAL(18,8), so "a multiple of" is a remainder of the
unscaled integers. `ReferenceWatcher` keeps the rules current in a long-running process: it looks at the table's
current snapshot at most every `K2_INSTRUMENTS_REFRESH_SECONDS` and reads the rows again only when it changed, so a
reload (`k2 instruments load`, the Dagster asset) reaches a running ingester within seconds, without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog

from k2_core.exceptions import ReferenceDataError
from k2_core.ingest.validate import as_int64, unscaled
from k2_core.lake.instruments import load_table, read_instruments
from k2_core.logging import get_logger
from k2_core.model.instruments import Instrument
from k2_core.model.records import DECIMAL_SCALE, PRICE_FIELDS, SIZE_FIELDS
from k2_core.model.topics import Kind
from k2_core.settings import InstrumentSettings

log = get_logger(__name__)

BoolArray = npt.NDArray[np.bool_]
_EPOCH = date(1970, 1, 1)
_DAY_US = 86_400_000_000


def _plain(value: Decimal) -> str:
    """45.12500000 -> 45.125, 10.00000000 -> 10 (no exponent)."""
    return format(value.normalize(), "f")


def _unscaled(value: Decimal) -> int:
    return int(value.scaleb(DECIMAL_SCALE))


@dataclass(frozen=True)
class ReferenceRules:
    """The strict rules of one snapshot of `market.instruments` (`snapshot_id`; None: no reference data)."""

    instruments: dict[tuple[str, str], Instrument]
    strict_exchanges: frozenset[str]
    snapshot_id: int | None = None

    @classmethod
    def of(
        cls, instruments: Iterable[Instrument], strict_exchanges: Collection[str] = (), snapshot_id: int | None = None
    ) -> ReferenceRules:
        return cls({(i.exchange, i.symbol): i for i in instruments}, frozenset(strict_exchanges), snapshot_id)

    @cached_property
    def any_strict(self) -> bool:
        """Whether any rule applies at all (most installations: none, and a batch is passed through untouched)."""
        return bool(self.strict_exchanges) or any(i.strict for i in self.instruments.values())

    def is_strict(self, exchange: str, symbol: str) -> bool:
        if exchange in self.strict_exchanges:
            return True
        instrument = self.instruments.get((exchange, symbol))
        return instrument is not None and instrument.strict

    def refuse(self, kind: Kind, exchange: str, table: pa.Table) -> list[tuple[int, str]]:
        """Each row of `table` (records of `exchange`, already valid by the record rules) a strict rule refuses, by
        index, with its reason; in index order."""
        if not table.num_rows or not self.any_strict:
            return []
        encoded = pc.dictionary_encode(table.column("symbol")).combine_chunks()
        codes = np.asarray(encoded.indices, dtype=np.int64)
        refused: dict[int, str] = {}
        for code, symbol in enumerate(encoded.dictionary.to_pylist()):
            if not self.is_strict(exchange, symbol):
                continue
            rows = np.flatnonzero(codes == code)
            instrument = self.instruments.get((exchange, symbol))
            if instrument is None:
                reason = f"{symbol} is not listed in market.instruments for strict exchange {exchange}"
                refused.update((int(r), self._reason(reason)) for r in rows)
                continue
            for i, why in self._check(kind, instrument, table.take(pa.array(rows))):
                refused.setdefault(int(rows[i]), self._reason(f"{symbol} on {exchange}: {why}"))
        return sorted(refused.items())

    @staticmethod
    def _reason(text: str) -> str:
        return f"{ReferenceDataError.__name__}: {text}"

    @staticmethod
    def _check(kind: Kind, instrument: Instrument, rows: pa.Table) -> Iterable[tuple[int, str]]:
        """(row, why) for each rule a row breaks; a row may appear more than once (the first reason is kept)."""
        for names, step, what in (
            (PRICE_FIELDS[kind], instrument.tick_size, "tick_size"),
            (SIZE_FIELDS[kind], instrument.lot_size, "lot_size"),
        ):
            step_unscaled = _unscaled(step)
            for name in names:
                values, _ = unscaled(rows.column(name))  # the record rules bound them: they fit
                for i in np.flatnonzero(values % step_unscaled != 0).tolist():
                    value = rows.column(name)[i].as_py()
                    yield i, f"{name} {_plain(value)} is not a multiple of {what} {_plain(step)}"
        if instrument.listed is None and instrument.delisted is None:
            return
        days = as_int64(rows.column("exchange_timestamp")) // _DAY_US
        early = days < (instrument.listed - _EPOCH).days if instrument.listed else np.zeros(len(days), np.bool_)
        late = days > (instrument.delisted - _EPOCH).days if instrument.delisted else np.zeros(len(days), np.bool_)
        for i in np.flatnonzero(early | late).tolist():
            day = date.fromordinal(_EPOCH.toordinal() + int(days[i]))
            window = f"[{instrument.listed or '-'}, {instrument.delisted or '-'}]"
            yield i, f"exchange_timestamp's date {day} is outside its listed dates {window}"


def keep_mask(n: int, refused: Iterable[tuple[int, str]]) -> BoolArray:
    """True for the rows not among `refused`."""
    keep = np.ones(n, dtype=np.bool_)
    keep[[i for i, _ in refused]] = False
    return keep


class ReferenceWatcher:
    """The current `ReferenceRules` of a catalog, re-read when the table's snapshot changes, looked at no more often
    than `settings.refresh_seconds`. Not thread-safe: one per consuming thread."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        settings: InstrumentSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog, self.namespace, self.settings, self.clock = catalog, namespace, settings, clock
        self._rules = ReferenceRules.of((), settings.strict_exchanges)
        self._checked_at: float | None = None

    def rules(self) -> ReferenceRules:
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < self.settings.refresh_seconds:
            return self._rules
        self._checked_at = now
        table = load_table(self.catalog, self.namespace)
        snapshot_id = table.metadata.current_snapshot_id if table is not None else None
        if table is None or snapshot_id == self._rules.snapshot_id:
            return self._rules
        rows = read_instruments(table, snapshot_id).to_pylist()
        self._rules = ReferenceRules.of(
            (Instrument.from_row(r) for r in rows), self.settings.strict_exchanges, snapshot_id
        )
        strict = sum(1 for i in self._rules.instruments.values() if i.strict)
        log.info(
            "reference data read",
            extra={"snapshot_id": snapshot_id, "instruments": len(rows), "strict_instruments": strict},
        )
        return self._rules
