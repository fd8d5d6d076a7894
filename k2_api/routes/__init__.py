"""One router per resource; `k2_api.main` mounts them all."""

from k2_api.routes.gaps import router as gaps_router
from k2_api.routes.health import router as health_router
from k2_api.routes.trades import router as trades_router

ROUTERS = (health_router, trades_router, gaps_router)

__all__ = ["ROUTERS"]
