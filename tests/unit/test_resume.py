"""Where a partition resumes: the newer of Kafka's committed offset and the table's, so a crash between the Iceberg
commit and the Kafka commit neither loses nor duplicates a row."""

from __future__ import annotations

from k2_core.ingest.resume import position, resume_offset, resume_offsets

T = "market.equities.trades.asx"


def test_the_table_wins_after_a_crash_between_the_two_commits() -> None:
    assert resume_offset(committed=100, stored=150) == 150


def test_kafka_wins_when_it_is_ahead_of_the_table() -> None:
    assert resume_offset(committed=200, stored=150) == 200


def test_either_alone_is_the_resume_point() -> None:
    assert resume_offset(committed=None, stored=7) == 7
    assert resume_offset(committed=7, stored=None) == 7


def test_kafkas_no_offset_sentinel_counts_as_none() -> None:
    assert resume_offset(committed=-1001, stored=None) is None
    assert resume_offset(committed=-1001, stored=3) == 3


def test_offset_zero_is_an_offset_not_nothing() -> None:
    assert resume_offset(committed=None, stored=0) == 0


def test_a_partition_never_committed_anywhere_starts_from_its_beginning() -> None:
    assert resume_offset(committed=None, stored=None) is None
    assert position(None) == 0


def test_every_assigned_partition_gets_a_resume_point_and_only_those() -> None:
    committed: dict[tuple[str, int], int | None] = {(T, 0): 10, (T, 1): -1001, (T, 2): None}
    stored = {(T, 0): 12, (T, 1): 5, (T, 9): 99}  # partition 9 is another ingester's
    assert resume_offsets(committed, stored) == {(T, 0): 12, (T, 1): 5, (T, 2): None}


def test_a_reset_never_moves_a_position_back() -> None:
    assert position(resume=40, held=55) == 55  # the batch in hand starts at 55: keep it
    assert position(resume=60, held=55) == 60
    assert position(resume=None, held=-1) == 0  # a partition paused before it could be resumed
