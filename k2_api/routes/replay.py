"""`/v1/replay`: a whole UTC day of one stream, in exchange order, streamed as NDJSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from k2_api.deps import AsOfDep, ReaderDep
from k2_api.models import ErrorResponse
from k2_api.params import Day, Exchange, Symbol
from k2_core.read.export import ndjson_lines
from k2_core.read.result import Replay

router = APIRouter(
    prefix="/v1", tags=["market data"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
)

NDJSON = "application/x-ndjson"


def ndjson(replay: Replay) -> Iterator[bytes]:
    """One JSON object per line, one chunk per record batch; decimals as strings, as in every K2 JSON body."""
    try:
        for batch in replay:
            chunk = ndjson_lines(batch)
            if chunk:
                yield chunk
    finally:
        replay.close()


@router.get("/replay", response_class=StreamingResponse, responses={200: {"content": {NDJSON: {}}}})
def replay(
    reader: ReaderDep,
    as_of: AsOfDep,
    symbol: Symbol,
    exchange: Exchange,
    date: Day,
    kind: Annotated[Literal["trades", "quotes"], Query(description="Which stream to replay.")] = "trades",
) -> StreamingResponse:
    """Every trade (or quote) of one UTC day in exchange order, streamed as NDJSON without buffering the day."""
    stream = reader.replay(symbol, exchange, date, kind=kind, as_of=as_of)
    headers = {"K2-Sources": ",".join(stream.sources)}
    if stream.snapshot_id is not None:
        headers["K2-Snapshot-Id"] = str(stream.snapshot_id)
    return StreamingResponse(ndjson(stream), media_type=NDJSON, headers=headers)
