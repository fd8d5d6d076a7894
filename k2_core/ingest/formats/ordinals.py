"""The sequence number of a row whose format has none of its own: its ordinal within its instrument's UTC day.

K2 stores a trade or quote once per (exchange, symbol, exchange_sequence_number) and reports a gap wherever those
numbers skip. Binance trade and aggregate-trade ids are contiguous per instrument, so they are the sequence. Other
formats have no such number (Binance bookTicker's update_id is shared by every instrument and skips; Tardis rows
and generic files have none, unless one is mapped), so a row is numbered 1, 2, 3, ... among the good rows of its
(symbol, UTC day of exchange_timestamp), in file order. Importing the same file again gives every row the same
number, so the duplicates are dropped, and the numbers never skip, so no gap is reported that the file does not
hold.

The counters live as long as one reading of one file (one reader generator), across its chunks. Two files holding
rows of the same instrument and day would number them both from 1 (Tardis files are cut by arrival time, so a file
can open with the last moments of the previous exchange day): import such days whole, from one file.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MICROS_PER_DAY = 86_400_000_000


class DayOrdinals:
    """Numbers rows 1, 2, 3, ... per (symbol, UTC day), carrying on across the calls of one file's reading."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    def number(self, symbols: pa.Array | str, micros: np.ndarray) -> np.ndarray:
        """The ordinals of rows in file order, given each one's symbol (or the one symbol of them all) and its
        exchange time in µs since the epoch."""
        days = np.floor_divide(micros, MICROS_PER_DAY)
        if isinstance(symbols, str):
            names = [symbols]
            codes = np.zeros(len(days), np.int64)
        else:
            encoded = pc.dictionary_encode(symbols)
            names = encoded.dictionary.to_pylist()
            codes = encoded.indices.to_numpy().astype(np.int64)
        ordinals = np.empty(len(days), np.int64)
        if len(days) == 0:
            return ordinals
        first_day = int(days.min())
        span = int(days.max()) - first_day + 1
        keys = codes * span + (days - first_day)
        if keys.min() == keys.max():  # one instrument, one day: the common case, no sorting
            group = (names[int(codes[0])], int(days[0]))
            start = self._counts.get(group, 0)
            ordinals[:] = np.arange(start + 1, start + 1 + len(days))
            self._counts[group] = start + len(days)
            return ordinals
        order = np.argsort(keys, kind="stable")  # stable: file order within a group
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        sizes = np.diff(np.append(starts, len(keys)))
        bases = np.empty(len(starts), np.int64)
        for index, (begin, size) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
            key = int(sorted_keys[begin])
            group = (names[key // span], first_day + key % span)
            bases[index] = self._counts.get(group, 0)
            self._counts[group] = int(bases[index]) + size
        rank = np.arange(len(keys)) - np.repeat(starts, sizes)
        ordinals[order] = rank + 1 + np.repeat(bases, sizes)
        return ordinals
