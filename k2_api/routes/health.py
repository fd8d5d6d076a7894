"""`/health`: for load balancers and operators; it answers 503 rather than failing when the catalog is down."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from k2_api.deps import ReaderDep, RealtimeDep, SettingsDep
from k2_api.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthResponse}})
def health(reader: ReaderDep, settings: SettingsDep, realtime: RealtimeDep, response: Response) -> HealthResponse:
    """Service status, whether the catalog is reachable, and each table's current snapshot id."""
    result = reader.health()
    if not result.reachable:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthResponse(
        status="ok" if result.reachable else "unavailable",
        catalog_reachable=result.reachable,
        namespace=settings.catalog.namespace,
        snapshots=result.snapshots,
        error=result.error,
        realtime_topics=None
        if realtime is None
        else sorted(f"{kind}.{exchange}" for kind, exchange in realtime.topics()),
    )
