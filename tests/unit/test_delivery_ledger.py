"""What a partition's sampled delivery reports say about every message sent to it (k2_stream.bulk.DeliveryLedger):
exact offsets when the partition was the sender's alone, offsets never below the true ones when others wrote between,
and an error, not a guess, when messages went missing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k2_core.exceptions import K2Error
from k2_stream.bulk import DeliveryLedger

TP = ("market.crypto.trades.binance", 1)


def ledger(sent: int, samples: list[tuple[int, int]]) -> DeliveryLedger:
    return DeliveryLedger(sent, samples)


def test_a_partition_of_its_own_gets_exactly_its_offsets() -> None:
    assert list(ledger(7, [(3, 12), (5, 14), (7, 16)]).offsets(TP)) == list(range(10, 17))


def test_others_between_samples_push_the_stretch_to_the_top() -> None:
    # 2 messages after offset 14, the next sample at 20: others took some of 15..19, ours are at most 19 and 20
    assert list(ledger(7, [(3, 12), (5, 14), (7, 20)]).offsets(TP)) == [10, 11, 12, 13, 14, 19, 20]


def test_fewer_offsets_than_messages_is_an_error() -> None:
    with pytest.raises(K2Error, match="went missing"):
        ledger(7, [(3, 12), (7, 14)]).offsets(TP)


def test_a_sample_without_an_offset_is_skipped() -> None:
    """A duplicate of a retried send is acknowledged with no offset (-1001): its neighbours still tell."""
    assert list(ledger(6, [(2, 5), (4, -1001), (6, 9)]).offsets(TP)) == [4, 5, 6, 7, 8, 9]


def test_a_last_sample_without_an_offset_assumes_the_tail_follows() -> None:
    assert list(ledger(6, [(2, 5), (6, -1001)]).offsets(TP)) == [4, 5, 6, 7, 8, 9]
    assert list(ledger(6, [(6, -1001)]).offsets(TP)) == []


@given(
    stretches=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=20), min_size=1, max_size=30),
    start=st.integers(0, 10**12),
)
def test_recorded_offsets_are_never_below_the_true_ones(stretches: list[list[int]], start: int) -> None:
    """Ours interleaved with others' at random (each stretch: how many others' messages come before each of ours, up
    to the sampled last one): the record is ascending, as long, never below the truth, and equal to it wherever no
    other message came between two samples."""
    truth: list[int] = []
    samples: list[tuple[int, int]] = []
    offset = start
    for gaps in stretches:
        for others in gaps:
            offset += others
            truth.append(offset)
            offset += 1
        samples.append((len(truth), truth[-1]))
    recorded = list(ledger(len(truth), samples).offsets(TP))
    assert len(recorded) == len(truth)
    assert recorded == sorted(set(recorded))
    assert all(r >= t for r, t in zip(recorded, truth, strict=True))
    assert [recorded[count - 1] for count, _ in samples] == [offset for _, offset in samples]
    if not any(sum(gaps) for gaps in stretches[1:]) and not any(stretches[0][1:]):
        assert recorded == truth
