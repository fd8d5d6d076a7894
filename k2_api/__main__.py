"""`python -m k2_api`: serve the API on settings.api.host:settings.api.port (configured via K2_* variables)."""

from k2_api.main import serve

if __name__ == "__main__":
    serve()
