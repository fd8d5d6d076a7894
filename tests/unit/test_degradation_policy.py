from k2_core.ingest.degradation import Breaker, Degradation, Level
from k2_core.settings import DegradationSettings

POLICY = DegradationSettings(lag_seconds=[10, 20, 30], write_seconds=[1, 2, 3], recover_seconds=5)


def test_levels_rise_at_once_and_walk_down_one_at_a_time() -> None:
    d = Degradation(POLICY)
    assert d.observe(0, 2.5, now=0) is Level.SKIP_NON_CRITICAL
    assert d.observe(0, 0.1, now=1) is Level.SKIP_NON_CRITICAL  # calm starts
    assert d.observe(0, 0.1, now=6) is Level.BIGGER_BATCHES
    assert d.observe(0, 0.1, now=8) is Level.BIGGER_BATCHES
    assert d.observe(0, 0.1, now=11) is Level.NORMAL


def test_a_backlog_being_caught_up_is_not_shed_one_falling_behind_is() -> None:
    d = Degradation(POLICY)
    assert d.observe(400, 0.1, now=0) is Level.SKIP_NON_CRITICAL  # old messages, no trend yet: not overload
    assert d.observe(390, 0.1, now=1) is Level.SKIP_NON_CRITICAL  # catching up (after downtime, a replay)
    assert not d.sheds("asx", "CSL")
    assert d.observe(395, 0.1, now=2) is Level.SHED_SYMBOLS  # falling further behind: shed
    assert d.sheds("asx", "CSL")
    assert not d.sheds("asx", "BHP")  # a critical symbol
    assert not d.sheds("nyse", "JPM")


def test_breaker_opens_after_repeated_failures_and_closes_on_success() -> None:
    d = Degradation(POLICY)
    assert d.write_failed() is Breaker.CLOSED
    assert d.write_failed() is Breaker.CLOSED
    assert d.write_failed() is Breaker.OPEN
    assert d.level is Level.BREAKER_OPEN
    assert not d.sheds("asx", "CSL")  # the probe batch after the backoff must not shed
    d.probing()
    assert d.breaker is Breaker.HALF_OPEN
    d.write_succeeded()
    assert d.breaker is Breaker.CLOSED
    assert d.level is Level.SKIP_NON_CRITICAL
