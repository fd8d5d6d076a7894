"""Every error K2 raises on purpose is a `K2Error`; callers catch the specific class they can handle."""


class K2Error(Exception):
    """Base of all K2 errors."""


class ConfigError(K2Error):
    """Settings or config files are missing or inconsistent."""


class SchemaRegistryError(K2Error):
    """A subject or schema id is unknown to the registry."""


class IncompatibleSchemaError(SchemaRegistryError):
    """A schema version would break readers: it cannot read every registered version of its subject (BACKWARD,
    k2_core.model.compat). Refused before it is registered or produced with; the message says why."""


class SchemaRegistryUnavailableError(K2Error):
    """The schema registry cannot answer now (unreachable, or a server error): nothing is known about the schema,
    so a message waiting on it is retried later, never dead-lettered."""


class DecodeError(K2Error):
    """A Kafka message is not a valid Confluent-framed Avro record of a known schema."""


class EncodeError(K2Error):
    """Rows cannot be written with a writer schema: a column missing or of a type the field cannot take, a null in a
    field that has no null branch, a value outside the field's range, or a schema construct the bulk encoder does not
    write (it refuses rather than guess at bytes a reader would misread)."""


class ValidationError(K2Error):
    """A record decoded but breaks a rule (negative price, wrong exchange, ...)."""


class ReferenceDataError(ValidationError):
    """A record breaks its strict instrument's reference data (`market.instruments`): off tick, off lot, outside its
    listed dates, or an instrument a strict exchange does not list. Dead-lettered (or rejected by `k2 import`)."""


class CommitConflictError(K2Error):
    """Another writer committed to the table first; re-check ownership and retry."""


class FencedError(K2Error):
    """This writer no longer owns a partition it is about to commit: another writer moved its offsets."""


class CommitRejectedError(FencedError):
    """The coordinated committer refused a worker's batch: a partition's range did not start where the table holds
    it (the worker lost the partition, or the range is already committed). The worker resumes from the table.
    `files_uncommitted`: the committer found the request's files in no snapshot, so the worker may delete them."""

    def __init__(self, message: str, files_uncommitted: bool = False) -> None:
        super().__init__(message)
        self.files_uncommitted = files_uncommitted


class CommitTimeoutError(K2Error):
    """No committer answered a worker's commit request in time (none elected, or it failed over)."""


class PartitionHaltedError(K2Error):
    """A sequence gap too large to ingest past blindly: the partition stops until an operator acts."""


class QueryError(K2Error):
    """A query's parameters are invalid (the API maps this to 4xx)."""


class UnknownSymbolError(QueryError):
    """A well-formed symbol with no data on the exchange (the API maps this to 404, other QueryErrors to 400)."""


class QueryTimeoutError(QueryError):
    """A query ran past its time budget and was interrupted (the API maps this to 408)."""


class ScopeError(K2Error):
    """The caller's scopes do not cover a table a query reads (the API maps this to 403); `scope` is the one
    missing."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class ReplayFormatError(K2Error):
    """A line of a recorded file cannot be parsed."""


class SourceError(K2Error):
    """A historical file cannot be found, opened or decompressed, or is not laid out as its format says (a Tardis
    file without its header, a zip holding more than one file): nothing of it can be read."""


class WriteError(K2Error):
    """An Iceberg write or commit failed (storage, catalog database); nothing was committed."""


class SchemaEvolutionError(K2Error):
    """A table cannot take a column a batch carries: K2 defines no such column, or the table holds it with another
    type. Nothing was committed."""


class MaintenanceError(K2Error):
    """A maintenance job (compaction, backfill, expiry) cannot proceed safely; nothing was committed."""


class CompactionError(MaintenanceError):
    """Rewritten files do not hold exactly the rows they replace, or the day changed under the rewrite."""


class MessageTooLargeError(ValidationError):
    """A Kafka message exceeds the configured maximum size; it is dead-lettered without being decoded."""


class AuthenticationError(K2Error):
    """Credentials are missing, malformed, unknown, expired or revoked (the API answers 401)."""


class AuthorizationError(K2Error):
    """The caller is authenticated but its scopes do not cover the request (the API answers 403)."""


class RateLimitError(K2Error):
    """The caller spent its request budget; `retry_after` is the seconds until one request is allowed again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiKeyError(K2Error):
    """An API-key operation is invalid: unknown key id, malformed scope, or an expiry in the past."""


class AuditError(K2Error):
    """The audit log cannot be written: data is not served without its audit record."""


class CredentialStoreError(K2Error):
    """API keys cannot be read from the catalog database: no request can be authenticated (the API answers 503)."""


class BookError(ValidationError):
    """A book update that cannot apply (an unknown side, a negative size)."""


class BookOrderError(K2Error):
    """A book file's records are timed at or before what the book tables already hold for an instrument, and are
    not those stored rows: an earlier day imported after a later one, whose records the per-symbol tracker would
    take for re-deliveries. Nothing of that instrument in the file is stored."""
