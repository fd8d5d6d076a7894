"""Optimistic commits for maintenance writers: on a conflict, re-read the table and redo the attempt.

Every K2 table disables pyiceberg's own blind retry (`commit.retry.num-retries=0`), because a retry must re-plan
against what the other writer committed: compaction re-validates the files it replaces, backfill re-checks which
rows are already stored. So the attempt is a function of the refreshed table, called again after each conflict.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_core.exceptions import CommitConflictError, WriteError
from k2_core.lake.catalog import CATALOG_FAILURES
from k2_core.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


def commit_with_retries(
    table: Table,
    attempt: Callable[[Table], T],
    *,
    retries: int,
    backoff_seconds: float,
    what: str,
    full_jitter: bool = False,
) -> T:
    """Run `attempt(table)` until it commits. A `CommitFailedException` (another writer won the race) refreshes the
    table and tries again, at most `retries` more times, then raises `CommitConflictError`. Storage and catalog
    failures raise `WriteError`. The wait before retry n is `backoff_seconds * 2**n`, plus up to 10%; with
    `full_jitter`, a random share of it, so writers that keep colliding spread out."""
    for n in range(retries + 1):
        try:
            return attempt(table)
        except CommitFailedException as exc:
            if n == retries:
                raise CommitConflictError(f"{what} on {table.name()}: gave up after {n + 1} attempts") from exc
            cap = backoff_seconds * 2**n
            wait = random.uniform(0, cap) if full_jitter else cap * (1 + random.random() / 10)  # noqa: S311 - jitter
            log.info("commit conflict, retrying", extra={"table": str(table.name()), "what": what, "wait_s": wait})
            time.sleep(wait)
            try:
                table.refresh()
            except CATALOG_FAILURES as refresh_exc:
                raise WriteError(f"cannot refresh {table.name()}: {refresh_exc}") from refresh_exc
        except CATALOG_FAILURES as exc:  # CommitStateUnknownException is a RESTError
            raise WriteError(f"{what} on {table.name()} failed: {exc}") from exc
    raise AssertionError("unreachable")  # the loop returns or raises
