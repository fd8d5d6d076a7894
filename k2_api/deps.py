"""Request dependencies. Routes declare what they need with these `Annotated` aliases instead of reaching into
`app.state`, so the state layout is known in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from k2_core.query import QueryEngine
from k2_core.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_reader(request: Request) -> QueryEngine:
    reader: QueryEngine = request.app.state.reader
    return reader


SettingsDep = Annotated[Settings, Depends(get_settings)]
ReaderDep = Annotated[QueryEngine, Depends(get_reader)]
