"""One router per resource; `k2_api.main` mounts them all."""

from k2_api.routes.bars import router as bars_router
from k2_api.routes.books import router as books_router
from k2_api.routes.gaps import router as gaps_router
from k2_api.routes.health import router as health_router
from k2_api.routes.instruments import router as instruments_router
from k2_api.routes.joins import router as joins_router
from k2_api.routes.replay import router as replay_router
from k2_api.routes.snapshots import router as snapshots_router
from k2_api.routes.sql import router as sql_router
from k2_api.routes.trades import router as trades_router

ROUTERS = (
    health_router,
    trades_router,
    bars_router,
    books_router,
    joins_router,
    replay_router,
    snapshots_router,
    gaps_router,
    instruments_router,
    sql_router,
)

__all__ = ["ROUTERS"]
