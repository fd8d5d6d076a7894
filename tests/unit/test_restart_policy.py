"""`k2 run`'s restart policy: backoff doubling while a process keeps failing soon after start, capped, started
anew after a good run, and a give-up after too many fast failures in a row."""

from __future__ import annotations

import pytest

from k2_cli.supervisor import GiveUp, RestartPolicy

POLICY = RestartPolicy(backoff=1.0, max_backoff=5.0, stable=30.0, max_fast_failures=4)


def test_backoff_doubles_while_failures_come_fast_and_is_capped() -> None:
    failures, waits = 0, []
    for _ in range(4):
        failures, wait = POLICY.after_exit(ran_for=2.0, fast_failures=failures)
        waits.append(wait)
    assert waits == [1.0, 2.0, 4.0, 5.0]
    assert failures == 4


def test_a_good_run_starts_the_count_anew() -> None:
    assert POLICY.after_exit(ran_for=30.0, fast_failures=4) == (1, 1.0)
    assert POLICY.after_exit(ran_for=3600.0, fast_failures=3) == (1, 1.0)


def test_too_many_fast_failures_in_a_row_give_up_with_the_reason() -> None:
    with pytest.raises(GiveUp, match="exited 4 times in a row, each within 30s of starting"):
        POLICY.after_exit(ran_for=0.5, fast_failures=4)
