"""Request dependencies. Routes declare what they need with these `Annotated` aliases instead of reaching into
`app.state`, so the state layout is known in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from k2_api.formats import FORMATS, Format, negotiate
from k2_core.read.engine import QueryEngine
from k2_core.read.params import AsOf, validate_as_of
from k2_core.read.realtime import RealtimeBuffer
from k2_core.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_reader(request: Request) -> QueryEngine:
    reader: QueryEngine = request.app.state.reader
    return reader


def get_realtime(request: Request) -> RealtimeBuffer | None:
    realtime: RealtimeBuffer | None = getattr(request.app.state, "realtime", None)
    return realtime


def output_format(
    format: Annotated[
        str | None,
        Query(description=f"Response format: {', '.join(FORMATS)}. Default: from the Accept header, else json."),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Format:
    return negotiate(format, accept)


def time_travel(
    as_of_snapshot: Annotated[
        str | None, Query(description="Read the table as of this snapshot id (GET /v1/snapshots lists them).")
    ] = None,
    as_of: Annotated[
        str | None, Query(description="Read the table as of this ISO-8601 time (the snapshot current then).")
    ] = None,
) -> AsOf | None:
    return validate_as_of(as_of_snapshot, as_of)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ReaderDep = Annotated[QueryEngine, Depends(get_reader)]
RealtimeDep = Annotated[RealtimeBuffer | None, Depends(get_realtime)]
FormatDep = Annotated[Format, Depends(output_format)]
AsOfDep = Annotated[AsOf | None, Depends(time_travel)]
