"""One settings tree for every K2 process, read from `K2_*` environment variables.

Nested sections map to `K2_<SECTION>_<FIELD>` (for example `K2_CATALOG_URI`, `K2_INGEST_BATCH_MAX_ROWS`).
Nothing else in K2 reads `os.environ`: build one `Settings` at the edge and pass it down.

Every value that is or may hold a secret (a password inside a URL, keys, shared secrets) is a `Secret`: a pydantic
`SecretStr` that `repr`, `str`, logs and JSON dumps show as `**********`. Code reveals it with `.get_secret_value()`
only where it hands the value to the library that uses it (the database driver, the Redis client, pyiceberg's
FileIO, PyJWT, HMAC). The sections holding secrets validate assignment (all but `auth`, whose secret may come from a
file), so `settings.catalog.uri = "postgresql://..."` stores a `SecretStr` too.
"""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# Unreferenced files younger than this may belong to a commit or compaction in flight: never delete them.
ORPHAN_MIN_AGE_FLOOR_HOURS = 1.0
# A five-field cron expression (minute hour day month weekday), as Dagster's schedules take.
CRON = r"^\S+( \S+){4}$"
# `settings.model_dump_json(context={REVEAL_SECRETS: True})` writes secrets in clear: only to hand settings to another
# K2 process (`K2Settings.pinned`); every other dump shows them as `**********`.
REVEAL_SECRETS = "reveal_secrets"
SECRET_SECTION = ConfigDict(validate_assignment=True)
MIN_SECRET_BYTES = 32  # HMAC keys: as long as the SHA-256 output (RFC 2104 section 3, RFC 7518 section 3.2)


def _dump_secret(value: SecretStr, info: SerializationInfo) -> str:
    context = info.context
    return value.get_secret_value() if isinstance(context, dict) and context.get(REVEAL_SECRETS) else str(value)


Secret = Annotated[SecretStr, PlainSerializer(_dump_secret, when_used="json")]


class KafkaSettings(BaseModel):
    model_config = SECRET_SECTION

    bootstrap_servers: str = "127.0.0.1:9092"
    topics_file: Path = REPO_ROOT / "config" / "kafka" / "topics.yaml"
    # Caps every topic's partition count (the embedded default runs few partitions); None keeps the file's.
    max_partitions: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1, description="Overrides topics.yaml when set.")
    # Confluent Schema Registry URL (a secret: it may carry basic-auth credentials, `https://user:pass@host`); empty
    # means the file-backed registry built from `schemas_dir`.
    schema_registry_url: Secret = SecretStr("")
    schemas_dir: Path = REPO_ROOT / "schemas" / "avro"
    group_id: str = "k2-ingester"
    # Tansu takes about half the session timeout to settle a group assignment: keep it low locally.
    session_timeout_ms: int = Field(default=3000, ge=1000)  # bench.scaleout: 3000 -> ~2.3 s to assignment
    heartbeat_interval_ms: int = Field(default=500, ge=100)
    broker_binary: Path | None = None


class CatalogSettings(BaseModel):
    """Where the Iceberg tables are registered: pyiceberg's SQL catalog on K2's database (`sql`, the default), or an
    Iceberg REST catalog server (`rest`), so engines that speak only REST read the same tables. K2's own tables (API
    keys, audit log) stay in the SQL database `uri` names either way."""

    model_config = SECRET_SECTION

    name: str = "k2"
    type: Literal["sql", "rest"] = "sql"
    # The catalog database URL, password included (a secret); empty means SQLite under K2_HOME (the embedded default).
    # With `type=rest` it holds only K2's own tables.
    uri: Secret = SecretStr("")
    # Empty means a local-file warehouse under K2_HOME (`sql`), or the REST server's default warehouse (`rest`, where
    # it is the warehouse the server knows, e.g. `s3://bucket` for SeaweedFS, a name for Polaris or Lakekeeper).
    warehouse: str = ""
    namespace: str = "market"
    # `type=rest`: the server's base URL (e.g. http://127.0.0.1:8181), OAuth2 client credentials `id:secret` or a
    # bearer token, and any further pyiceberg RestCatalog properties (JSON, e.g. {"scope": "PRINCIPAL_ROLE:ALL"}).
    rest_uri: str = ""
    rest_credential: Secret = SecretStr("")
    rest_token: Secret = SecretStr("")
    rest_properties: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rest_needs_uri(self) -> CatalogSettings:
        if self.type == "rest" and not self.rest_uri:
            raise ValueError("catalog.type=rest needs catalog.rest_uri (K2_CATALOG_REST_URI), the REST server's URL")
        return self


class S3Settings(BaseModel):
    """Object-store access for an `s3://` warehouse (MinIO, AWS S3), handed to pyiceberg's FileIO as catalog
    properties. Unset keys fall back to pyiceberg's own defaults (the AWS credential chain)."""

    model_config = SECRET_SECTION

    endpoint: str = Field(default="", description="S3 API endpoint, e.g. http://minio:9000; empty for AWS.")
    region: str = "us-east-1"
    access_key_id: Secret = SecretStr("")
    secret_access_key: Secret = SecretStr("")
    path_style_access: bool = Field(default=True, description="Path-style URLs (MinIO); False for virtual-host.")

    def fileio_properties(self) -> dict[str, str]:
        props = {"s3.region": self.region, "s3.force-virtual-addressing": str(not self.path_style_access).lower()}
        if self.endpoint:
            props["s3.endpoint"] = self.endpoint
        if key_id := self.access_key_id.get_secret_value():
            props["s3.access-key-id"] = key_id
        if secret := self.secret_access_key.get_secret_value():
            props["s3.secret-access-key"] = secret
        return props


class IngestSettings(BaseModel):
    batch_max_rows: int = Field(default=50_000, ge=1)
    batch_max_seconds: float = Field(default=1.0, gt=0)
    dedup_window_hours: float = Field(default=24.0, gt=0)
    gap_alert_threshold: int = Field(default=10, ge=1, description="Gaps this large or larger are alerts.")
    gap_halt_threshold: int = Field(default=100, ge=1, description="Gaps larger than this halt the partition.")
    commit_retries: int = Field(default=8, ge=0)
    retry_backoff_seconds: float = Field(default=0.2, gt=0)
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    # A commit conflict means another writer has just committed: the written files are committed again almost at once
    # (a random wait up to this, doubling per attempt), not after a failed write's backoff.
    conflict_backoff_seconds: float = Field(default=0.02, gt=0)
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="0 disables the /metrics endpoint.")
    book_metrics_port: int = Field(
        default=9110, ge=0, le=65535, description="The book ingester's /metrics and /health (0 disables them)."
    )
    # Snapshot retention as the ingester writes (k2_core.upkeep.retention): every N commits to a table,
    # checkpoint-tag and expire down to the newest `keep_snapshots` plus hourly/daily checkpoints.
    # 0 = leave it to the Dagster job.
    retention_every_commits: int = Field(default=50, ge=0)
    keep_snapshots: int = Field(default=20, ge=1)
    # `independent` (default): each ingester commits its own batches. `coordinated`: ingesters write data files and
    # hand them to the one elected committer (`python -m k2_stream.committer`) over `control_topic`
    # (k2_core.ingest.coordination, docs/scaleout.md).
    commit_mode: Literal["independent", "coordinated"] = "independent"
    control_topic: str = Field(default="k2.control.commits", min_length=1)
    # A worker waits this long for the committer's verdict, then hands the same request in again (same id: it is
    # committed at most once), `commit_resubmits` times, then resets as after a failed write.
    commit_verdict_seconds: float = Field(default=10.0, gt=0)
    commit_resubmits: int = Field(default=3, ge=0)
    committer_metrics_port: int = Field(
        default=9111, ge=0, le=65535, description="The committer's /metrics and /health; 0 disables them."
    )
    # Write and commit a batch on a thread of its own while the next one is consumed and decoded (k2_stream.pipeline);
    # at most one batch in flight, committed in order. Independent commit mode only. On by default since the batch
    # loop stopped paying for the cyclic GC: on a quiet 2-core machine 442-459k rows/s against 361-416k without it
    # (docs/performance.md, Pipelined batches).
    pipeline: bool = True


class DegradationSettings(BaseModel):
    """Thresholds for levels 1, 2 and 3 of the degradation cascade (see k2_core.ingest.degradation)."""

    lag_seconds: list[float] = Field(default_factory=lambda: [30.0, 60.0, 120.0], min_length=3, max_length=3)
    write_seconds: list[float] = Field(default_factory=lambda: [1.0, 2.0, 5.0], min_length=3, max_length=3)
    recover_seconds: float = Field(default=30.0, ge=0)
    batch_growth: int = Field(default=4, ge=1)
    # Symbols kept at level 3, as SYMBOL or EXCHANGE:SYMBOL; everything else is shed to the DLQ.
    critical_symbols: list[str] = Field(default_factory=lambda: ["BHP", "CBA", "IBM", "JPM", "BTCUSDT", "ETHUSDT"])
    breaker_failures: int = Field(default=3, ge=1, description="Consecutive failed writes that open the breaker.")


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    default_limit: int = Field(default=1000, ge=1)
    max_limit: int = Field(default=100_000, ge=1)


_UNITS = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """The bytes DuckDB reads `text` (a `memory_limit` such as `1GB`, `256MiB`) as: GB are 1000^3, GiB 1024^3."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size DuckDB reads: {text!r} (e.g. 1GB, 512MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


class QuerySettings(BaseModel):
    model_config = SECRET_SECTION

    # Ranges ending inside this many seconds of now are served (partly) from the API's realtime tail.
    realtime_window_seconds: float = Field(default=300.0, gt=0)
    tail_enabled: bool = Field(default=True, description="The API consumes the market topics into a realtime tail.")
    tail_max_messages: int = Field(default=200_000, ge=1, description="Per topic; the oldest are evicted first.")
    max_range_days: float = Field(default=366.0, gt=0, description="Widest start..end window of one request.")
    max_bars: int = Field(default=500_000, ge=1, description="Most bars one OHLCV request may span.")
    lru_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="In-process result cache; 0 disables.")
    # The HMAC-SHA256 key pagination cursors are signed with (k2_core.read.cursor). Unset: a random key made once per
    # K2_HOME, in K2_HOME/cursor.key (mode 0600), which every process of the installation reads. Set it when
    # processes that must accept each other's cursors do not share a home (API replicas behind a load balancer).
    cursor_secret: Secret | None = None
    # `POST /v1/sql` / `k2 sql` (k2_core.read.sql): each query's budgets, on a DuckDB database of its own.
    sql_timeout_seconds: float = Field(default=30.0, gt=0, description="A SQL query is interrupted after this.")
    sql_memory_limit: str = Field(default="1GB", description="DuckDB memory_limit of one SQL query's database.")
    sql_threads: int = Field(default=2, ge=1, description="DuckDB threads of one SQL query's database.")
    sql_max_rows: int = Field(default=100_000, ge=1, description="Most rows a SQL answer may hold.")
    # Each SQL query runs in a worker process (k2_core.read.sqlworker): its memory capped by an rlimit (what the
    # worker holds at rest, plus sql_memory_limit, plus sql_worker_overhead_mb), killed past the time budget.
    # sql_workers is also the most SQL queries one process runs at once; another waits up to sql_queue_seconds,
    # then is answered 503.
    sql_workers: int = Field(default=2, ge=1, le=64, description="SQL worker processes (and concurrent queries).")
    sql_queue_seconds: float = Field(default=5.0, ge=0, description="Longest wait for a free SQL worker.")
    sql_worker_overhead_mb: int = Field(
        default=256, ge=64, description="A SQL worker's memory cap above sql_memory_limit (connection, answer)."
    )

    @field_validator("sql_memory_limit")
    @classmethod
    def _sql_memory_limit_is_a_size(cls, value: str) -> str:
        parse_bytes(value)  # a ValueError names the accepted forms
        return value

    @field_validator("cursor_secret")
    @classmethod
    def _cursor_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"query.cursor_secret must be at least {MIN_SECRET_BYTES} bytes (e.g. openssl rand -hex 32)"
            )
        return value


class RedisSettings(BaseModel):
    model_config = SECRET_SECTION

    url: Secret = SecretStr("redis://127.0.0.1:6379/0")  # a secret: it may carry a password
    enabled: bool = True
    timeout_seconds: float = Field(default=0.1, gt=0, description="Connect and command timeout.")
    ttl_seconds: int = Field(default=3600, ge=1)
    retry_after_seconds: float = Field(default=5.0, ge=0, description="How long to skip Redis after a failure.")


class MarketHours(BaseModel):
    """When an exchange trades, in its own time zone; `open == close` means around the clock. `calendar`, an
    `exchange_calendars` code (XASX, XNYS, 24/7, ...), makes the sessions the exchange's real ones (holidays, early
    closes; `k2_core.model.calendars`); the weekly hours are the fallback without one."""

    timezone: str = "UTC"
    open: time = time(0, 0)
    close: time = time(0, 0)
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # Monday = 0
    calendar: str | None = None


class RecordedFile(BaseModel):
    """A recorded exchange dump (a file, a folder or a glob, in any trade or quote format `k2 import` reads; book
    gaps are healed by snapshots, not filled) that gap backfill may re-read to recover missing sequences: of one
    symbol, or of every symbol its rows carry (`symbol` unset)."""

    exchange: str
    path: Path
    symbol: str | None = None
    format: str = "binance-trades"
    mapping: dict[str, str] = Field(default_factory=dict, description="Generic formats: K2 column -> file column.")
    time_unit: str | None = None
    time_zone: str = "UTC"


def _default_market_hours() -> dict[str, MarketHours]:
    weekdays = (0, 1, 2, 3, 4)
    return {
        "asx": MarketHours(
            timezone="Australia/Sydney", open=time(10, 0), close=time(16, 0), weekdays=weekdays, calendar="XASX"
        ),
        "nyse": MarketHours(
            timezone="America/New_York", open=time(9, 30), close=time(16, 0), weekdays=weekdays, calendar="XNYS"
        ),
        "binance": MarketHours(calendar="24/7"),
    }


class MaintenanceSettings(BaseModel):
    """The Dagster-run upkeep of the lake: compaction, gap backfill, snapshot expiry, quality checks, where the
    Dagster webserver listens and where Dagster keeps its runs."""

    model_config = SECRET_SECTION

    compaction_target_file_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    compaction_min_files: int = Field(default=16, ge=1, description="A closed day with more files is compacted.")
    commit_retries: int = Field(default=8, ge=0)
    retry_backoff_seconds: float = Field(default=0.2, gt=0)
    snapshot_retention_hours: float = Field(default=7 * 24.0, gt=0)
    keep_last_snapshots: int = Field(default=20, ge=1)
    orphan_min_age_hours: float = Field(default=24.0, description="Younger unreferenced files may be in flight.")
    backfill_max_attempts: int = Field(default=5, ge=1)
    backfill_batch_size: int = Field(default=100, ge=1)
    backfill_min_gap_age_seconds: float = Field(default=30.0, ge=0, description="Lets late numbers arrive first.")
    recorded_files: list[RecordedFile] = Field(default_factory=list)
    freshness_max_lag_seconds: float = Field(default=300.0, gt=0)
    future_tolerance_seconds: float = Field(default=60.0, ge=0, description="Clock skew allowed by the checks.")
    market_hours: dict[str, MarketHours] = Field(default_factory=_default_market_hours)
    dagster_host: str = "127.0.0.1"
    dagster_port: int = Field(default=3000, ge=1, le=65535)
    # The Dagster code server the webserver and the daemon share (`k2 dagster code-server`): K2's definitions loaded
    # once, in one process. 0: each loads them itself from workspace.yaml (the daemon then starts a new process that
    # imports them every minute).
    dagster_code_host: str = "127.0.0.1"
    dagster_code_port: int = Field(default=4000, ge=0, le=65535)
    # When the upkeep runs: the schedules' UTC crons and how often each sensor looks. Read when Dagster loads the
    # code location; the platform soak test compresses them to minutes and seconds.
    gap_sweep_cron: str = Field(default="15 1 * * *", pattern=CRON)
    maintenance_cron: str = Field(default="45 2 * * *", pattern=CRON, description="Snapshot expiry, orphan files.")
    quality_cron: str = Field(default="*/15 * * * *", pattern=CRON)
    # K2's own book snapshots (k2_core.upkeep.book_snapshots): one per instrument per minute mark, so a book rebuild
    # replays at most a minute of updates; a run every 5 minutes writes the marks since, looking back this far
    # (overlap is harmless: marks already written are skipped).
    book_snapshot_cron: str = Field(default="*/5 * * * *", pattern=CRON)
    book_snapshot_lookback_minutes: int = Field(default=10, ge=1, le=1440)
    snapshot_sensor_seconds: int = Field(default=30, ge=1)
    ohlcv_sensor_seconds: int = Field(default=120, ge=1)
    compaction_sensor_seconds: int = Field(default=600, ge=1)
    backfill_sensor_seconds: int = Field(default=60, ge=1)

    @field_validator("orphan_min_age_hours")
    @classmethod
    def _orphans_not_in_flight(cls, hours: float) -> float:
        if hours < ORPHAN_MIN_AGE_FLOOR_HOURS:
            raise ValueError(
                f"maintenance.orphan_min_age_hours must be at least {ORPHAN_MIN_AGE_FLOOR_HOURS:g}: a younger "
                "unreferenced file may belong to a commit or compaction still in flight, and deleting it would leave "
                "that commit pointing at a missing file"
            )
        return hours

    # Dagster's run, event-log and schedule storage (k2_dagster.launcher writes the instance's dagster.yaml from it),
    # e.g. postgresql://k2:secret@postgres:5432/dagster; None keeps them in SQLite under K2_HOME/dagster.
    dagster_postgres_url: Secret | None = None

    @field_validator("dagster_postgres_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgresql+")):
            raise ValueError("maintenance.dagster_postgres_url must be a postgresql:// URL")
        return value


class SupervisorSettings(BaseModel):
    """`k2 run`'s supervision of its processes: restarts with backoff, when to give up, how long a stop may take."""

    port: int = Field(default=9109, ge=0, le=65535, description="Its /health and /metrics (0 = off).")
    restart_backoff_seconds: float = Field(default=1.0, gt=0, description="First wait before a restart; doubles.")
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    # A process that ran this long had a good start: its next exit begins the backoff (and the count) anew.
    stable_seconds: float = Field(default=30.0, gt=0)
    max_fast_failures: int = Field(default=5, ge=1, description="Exits in a row, each soon after start: give up.")
    stop_timeout_seconds: float = Field(default=20.0, gt=0, description="Then the process is killed.")


class RecordSettings(BaseModel):
    """Limits every market record must meet before it is stored (k2_core.model.records); breaking one
    dead-letters it."""

    earliest_date: date = Field(default=date(1990, 1, 1), description="Timestamps before this UTC date are refused.")
    future_tolerance_seconds: float = Field(
        default=300.0, ge=0, description="How far past the ingester's clock a timestamp may be (clock skew)."
    )
    max_message_bytes: int = Field(default=1024 * 1024, ge=64, description="Larger Kafka messages are refused.")


class InstrumentSettings(BaseModel):
    """Reference data (`market.instruments`, k2_core.model.instruments): where its files are, which exchanges are
    strict as a whole, and how often the ingester looks for a reload."""

    dir: Path = Field(
        default=REPO_ROOT / "config" / "instruments",
        description="One <exchange>.csv per exchange (docs/instruments.md).",
    )
    # Every instrument of these exchanges is strict, and a symbol the table does not list is refused.
    strict_exchanges: list[str] = Field(default_factory=list)
    refresh_seconds: float = Field(
        default=5.0, gt=0, description="The ingester re-checks the table's snapshot at most this often."
    )


class AuthSettings(BaseModel):
    """API authentication (API keys, OAuth2 bearer JWTs), per-key rate limits. See docs/security.md.

    `mode`: `on` requires credentials on every data route; `off` is refused unless the API binds to a loopback
    address; `auto` (the default) is `off` on loopback (the embedded `k2 run`) and `on` on any other address."""

    mode: Literal["auto", "on", "off"] = "auto"
    jwt_secret: Secret | None = Field(default=None, description="HS256 shared secret for bearer JWTs.")
    jwt_secret_file: Path | None = Field(default=None, description="Read jwt_secret from this file instead.")
    jwks_url: str = Field(default="", description="JWKS endpoint of an OAuth2 issuer (RS256/ES256 JWTs).")
    jwt_audience: str = Field(default="k2", description="Required `aud` claim of bearer JWTs.")
    jwt_issuer: str = Field(default="", description="Required `iss` claim of bearer JWTs; empty = not checked.")
    jwt_leeway_seconds: float = Field(default=30.0, ge=0)
    rate_limit_per_second: float = Field(default=20.0, ge=0, description="Sustained requests per key; 0 = no limit.")
    rate_limit_burst: int = Field(default=100, ge=1, description="Requests a key may make at once.")
    key_default_ttl_days: float = Field(default=90.0, gt=0, description="Expiry of `k2 keys create` keys by default.")
    # -- who the client is, and what its failures cost (docs/security.md, "Clients and proxies", "Floods") --
    # Proxies whose Forwarded / X-Forwarded-For / X-Real-IP headers are believed, as a JSON list of addresses or
    # networks; a request carrying such a header from any other hop is taken as coming from elsewhere.
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    client_failures_per_second: float = Field(default=1.0, ge=0, description="Refill of a client's failure budget.")
    client_failure_burst: int = Field(default=30, ge=1, description="Failed authentications before a client waits.")

    @model_validator(mode="after")
    def _secret_from_file(self) -> AuthSettings:
        if self.jwt_secret_file is not None:
            if self.jwt_secret is not None:
                raise ValueError("set auth.jwt_secret or auth.jwt_secret_file, not both")
            try:
                self.jwt_secret = SecretStr(self.jwt_secret_file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"cannot read auth.jwt_secret_file {self.jwt_secret_file}: {exc}") from exc
        return self


class AuditSettings(BaseModel):
    """The audit log's upkeep and connections (docs/security.md, "Audit log"): key lookups and audit writes each
    get a small pool of their own, apart from the catalog's; refused requests are summarised per client."""

    retention_days: float = Field(default=90.0, ge=0, description="The API deletes older rows; 0 keeps them all.")
    prune_every_seconds: float = Field(default=3600.0, gt=0)
    refusal_window_seconds: float = Field(default=60.0, gt=0, description="One client's refusals share a summary.")
    refusal_max_windows: int = Field(default=1000, ge=1, description="Then new clients share one summary window.")
    pool_size: int = Field(default=4, ge=1, description="Per pool: one for key lookups, one for audit writes.")
    max_overflow: int = Field(default=4, ge=0)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="K2_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    home: Path = REPO_ROOT / ".k2"
    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    catalog: CatalogSettings = CatalogSettings()
    s3: S3Settings = S3Settings()
    ingest: IngestSettings = IngestSettings()
    degradation: DegradationSettings = DegradationSettings()
    api: ApiSettings = ApiSettings()
    query: QuerySettings = QuerySettings()
    redis: RedisSettings = RedisSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    records: RecordSettings = RecordSettings()
    instruments: InstrumentSettings = InstrumentSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    supervisor: SupervisorSettings = SupervisorSettings()

    @property
    def catalog_uri(self) -> SecretStr:
        """The catalog database URL (reveal it only to hand it to the driver): `catalog.uri`, or SQLite under home."""
        if self.catalog.uri.get_secret_value():
            return self.catalog.uri
        return SecretStr(f"sqlite:///{self.home / 'catalog.db'}")

    @property
    def warehouse(self) -> str:
        return self.catalog.warehouse or (self.home / "warehouse").as_uri()
