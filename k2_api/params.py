"""Query parameters shared by routes. Times and snapshot ids are strings, not `datetime`/`int`, so that
k2_core applies its one parsing rule (naive = UTC) and words its errors the same for every front door."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

Symbol = Annotated[str, Query(description="Uppercase ticker, e.g. BHP, BRK.B, BTCUSDT.")]
Symbols = Annotated[
    list[str],
    Query(
        description="Uppercase ticker, e.g. BHP. Several: repeat the parameter (symbol=BHP&symbol=CBA) or give a comma "
        "list; rows of every one come in one listing, by time (or bar start), then symbol."
    ),
]
ExchangeSymbols = Annotated[
    list[str] | None,
    Query(
        description="Uppercase ticker, e.g. BHP. Several: repeat the parameter (symbol=BHP&symbol=CBA) or give a comma "
        "list. Omitted: every instrument of the exchange. Rows of many come in one listing, by time (or bar start), "
        "then symbol."
    ),
]
Exchange = Annotated[str, Query(description="Exchange code from the topic layout, e.g. asx.")]
Start = Annotated[
    str | None, Query(description="Inclusive ISO-8601 start; no offset means UTC. Default: end minus one day.")
]
End = Annotated[str | None, Query(description="Exclusive ISO-8601 end; no offset means UTC. Default: now.")]
Limit = Annotated[int | None, Query(description="Maximum rows per page (1..max_limit). Default: default_limit.")]
Cursor = Annotated[
    str | None, Query(description="Continue after a previous page: its next_cursor (or K2-Next-Cursor header).")
]
Day = Annotated[str, Query(description="A UTC date, YYYY-MM-DD.")]
