"""K2's HTTP read API: a thin FastAPI layer over `k2_core.read.engine`; all query rules live in k2_core."""

from k2_api.main import create_app, serve

__all__ = ["create_app", "serve"]
