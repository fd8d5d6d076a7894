"""Who may read what: API keys and JWTs with scopes, the audit log, rate limits."""
