"""The retry policy: delays by delivery count, jitter bounds, exhaustion, consumer backoff."""

from __future__ import annotations

import pytest

from buslib.retry import Failure, Reject, Retry


def test_delay_for_follows_the_list_and_repeats_the_last_value():
    policy = Retry(max_deliver=6, delays=[0.5, 2, 10], jitter=0)
    assert [policy.delay_for(n) for n in range(1, 6)] == [0.5, 2, 10, 10, 10]


def test_jitter_stays_within_its_fraction():
    policy = Retry(max_deliver=3, delays=[1.0], jitter=0.2)
    samples = [policy.delay_for(1) for _ in range(500)]
    assert all(0.8 <= s <= 1.2 for s in samples)
    assert len(set(samples)) > 1  # it really varies, or many retries would fire in lockstep


def test_exhausted_only_at_or_after_max_deliver():
    policy = Retry(max_deliver=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_consumer_backoff_has_fewer_values_than_max_deliver_and_no_tiny_timeouts():
    assert Retry(max_deliver=4, delays=[0.2, 5, 10, 20], jitter=0).consumer_backoff() == [1.0, 5.0, 10.0]
    assert Retry(max_deliver=1, delays=[3]).consumer_backoff() == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_deliver": 0}, "max_deliver must be at least 1"),
        ({"delays": []}, "non-empty list"),
        ({"delays": [1, -1]}, "seconds >= 0"),
        ({"jitter": 1.5}, "fraction between 0 and 1"),
    ],
)
def test_bad_policies_are_refused_with_a_reason(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Retry(**kwargs)


def test_reject_keeps_its_reason_and_failure_defaults_its_time():
    assert Reject("amount must be positive").reason == "amount must be positive"
    failure = Failure(
        kind="rejected", reason="r", msg=None, group="g", stream="S", stream_seq=1, subject="a.b", num_delivered=1
    )
    assert failure.last_failure_at.tzinfo is not None and failure.first_failure_at is None
