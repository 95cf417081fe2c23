"""The shared vendor quota, on a real Redis: never more than the limit in any window."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from worker.errors import OwnQuota, RateLimited
from worker.quotaline import HOLD_SECONDS, Reservation, in_line, plan
from worker.ratelimit import LEASE_SECONDS, WAITERS, VendorQuota, no_waiting
from worker.sandbox.embedded_redis import EmbeddedRedis


def test_quota_allows_the_limit_then_waits_for_the_window(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-a", "5/1 second", margin=0.1)
    assert [quota.try_acquire() for _ in range(5)] == [0.0] * 5
    wait = quota.try_acquire()
    assert 0.9 < wait <= 1.11


def test_quota_is_shared_across_clients_and_threads(redis_server: EmbeddedRedis) -> None:
    # given two "processes" (clients) drawing 20 requests each from a 10/1 s quota
    stamps: list[float] = []
    lock = threading.Lock()

    def draw(n: int) -> None:
        quota = VendorQuota(
            redis.Redis.from_url(redis_server.url), "unit-b", "10/1 second", margin=0.05
        )
        for _ in range(n):
            quota.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=draw, args=(20,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then no one-second window ever held more than ten of them
    stamps.sort()
    assert len(stamps) == 40
    assert all(stamps[i + 10] - stamps[i] >= 1.0 for i in range(len(stamps) - 10))


def test_quota_raises_rate_limited_past_max_wait(redis_server: EmbeddedRedis) -> None:
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-c", "1/minute", max_wait=0.2)
    quota.acquire()
    try:
        quota.acquire()
    except RateLimited as exc:
        assert exc.retry_after and exc.retry_after > 50
    else:
        raise AssertionError("the second request in a minute was allowed")


def test_quota_applies_every_limit(redis_server: EmbeddedRedis) -> None:
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-d", "100/second;3/hour")
    assert [quota.try_acquire() for _ in range(3)] == [0.0] * 3
    assert quota.try_acquire() > 3000


def test_no_waiting_refuses_at_once_when_the_quota_is_used_up(
    redis_server: EmbeddedRedis,
) -> None:
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-e", "1/2 seconds")
    quota.acquire()
    began = time.monotonic()
    with no_waiting(), pytest.raises(RateLimited) as refused:
        quota.acquire()
    # a push straight from ingest is handed to its vendor's queue instead of waiting
    assert time.monotonic() - began < 0.5
    assert refused.value.reason == "own_quota"
    assert refused.value.retry_after and refused.value.retry_after >= 1.0
    # outside the block the same call waits for the window and succeeds
    quota.acquire()
    assert time.monotonic() - began >= 1.9


def test_only_a_few_threads_wait_for_one_vendor_at_a_time(redis_server: EmbeddedRedis) -> None:
    # given a quota used up for a second and more threads than may wait for it
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-f", "1/1 second")
    quota.acquire()
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            quota.acquire()
            result = "sent"
        except RateLimited:
            result = "later"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call) for _ in range(WAITERS + 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then the threads past WAITERS were told to come back later instead of waiting,
    # and the ones that waited each got a slot in turn
    assert outcomes.count("later") >= 3
    assert outcomes.count("sent") <= WAITERS


def test_after_its_first_request_a_write_may_wait_for_its_next(
    redis_server: EmbeddedRedis,
) -> None:
    # given a write that sends two requests (a contact, then the deal) under a 1/1 s quota
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-g", "1/1 second")
    began = time.monotonic()
    with no_waiting():
        quota.acquire()  # the first request goes at once
        quota.acquire()  # the second waits for the window instead of wasting the first
    assert time.monotonic() - began >= 0.9


def _script_calls(client: redis.Redis) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def test_a_busy_process_takes_several_slots_per_call_while_the_quota_has_room(
    redis_server: EmbeddedRedis,
) -> None:
    # given a roomy quota and one process sending 200 requests as fast as it can
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-h", "100000/minute")
    before = _script_calls(client)
    for _ in range(200):
        quota.acquire()
    # then it asked Redis far fewer times than it sent, and the window counts every slot
    assert _script_calls(client) - before < 60
    assert quota.headroom()[0][1] >= 200


def test_slots_taken_ahead_never_exceed_the_limit(redis_server: EmbeddedRedis) -> None:
    # given two processes drawing from a 40/1 s quota as fast as they can for 2.5 s
    stamps: list[float] = []
    lock = threading.Lock()

    def draw() -> None:
        quota = VendorQuota(
            redis.Redis.from_url(redis_server.url), "unit-i", "40/1 second", margin=0.05
        )
        ends = time.monotonic() + 2.5
        while time.monotonic() < ends:
            quota.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=draw) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then no one-second window held more than 40 requests, and most of the quota was used
    stamps.sort()
    assert all(stamps[i + 40] - stamps[i] >= 1.0 for i in range(len(stamps) - 40))
    assert len(stamps) >= 90


def test_slots_taken_ahead_expire_unused(redis_server: EmbeddedRedis) -> None:
    # given a process that took slots ahead during a burst
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-j", "100000/minute")
    for _ in range(20):
        quota.acquire()
    # when it next sends after the lease ran out
    time.sleep(LEASE_SECONDS + 0.05)
    before = _script_calls(client)
    quota.acquire()
    # then it asks Redis again instead of sending on a stale slot
    assert _script_calls(client) - before == 1


def _refused_in_line(quota: VendorQuota, places: int = 1) -> OwnQuota:
    """A push straight from ingest (no waiting) that finds no room."""
    with no_waiting(), in_line(), plan(places), pytest.raises(OwnQuota) as refused:
        quota.acquire()
    return refused.value


def test_a_push_without_room_keeps_its_place_in_line(redis_server: EmbeddedRedis) -> None:
    # given a 2/1 s quota used up
    quota = VendorQuota(redis.Redis.from_url(redis_server.url), "unit-line-a", "2/1 second")
    quota.acquire()
    quota.acquire()
    # when three pushes find no room, the first two needing one request, the last two
    first, second, third = (_refused_in_line(quota, n) for n in (1, 1, 2))
    # then each is told exactly when its places are kept, and carries them
    kept = [Reservation.from_job(e.reserved) for e in (first, second, third)]
    assert [k.slots if k else 0 for k in kept] == [1, 1, 2]
    assert first.retry_after is not None and 0.9 < first.retry_after <= 1.26
    assert first.reason == "own_quota"
    # the two single places fit in the next window; two more only in the one after it
    at = [k.at for k in kept if k]
    assert abs(at[1] - at[0]) < 0.1
    assert at[2] - at[0] >= 1.0


def test_a_kept_place_is_spent_with_one_check(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-line-b", "1/1 second", margin=0.05)
    quota.acquire()
    kept = Reservation.from_job(_refused_in_line(quota).reserved)
    assert kept is not None
    # when the push's retry wakes at its time
    time.sleep(max(0.0, kept.at - time.time()))
    before = _script_calls(client)
    with no_waiting(), in_line(kept):
        quota.acquire()
    # then its request goes at once, on the place it kept (one check that the requests
    # actually sent leave room), without queueing again
    assert _script_calls(client) - before == 1
    assert kept.slots == 0


def test_a_place_is_spent_only_while_the_requests_sent_leave_room(
    redis_server: EmbeddedRedis,
) -> None:
    # given a place kept in a 1/1 s line, and a request sent meanwhile on the place's slot
    # (the line ahead went late)
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-line-c", "1/1 second", margin=0.05)
    quota.acquire()
    kept = Reservation.from_job(_refused_in_line(quota).reserved)
    assert kept is not None
    time.sleep(max(0.0, kept.at - time.time()))
    other = VendorQuota(client, "unit-line-c", "1/1 second", margin=0.05)
    stale = Reservation("unit-line-c", kept.at, "someone-late", 1)
    with in_line(stale):
        other.acquire()  # a late place of the line ahead, spent on the first one's slot
    # then the place is spent only once that request has left the window
    with no_waiting(), in_line(kept):
        quota.acquire()
    assert time.time() - kept.at >= 0.9
    # and a place is another vendor's to spend, or not yet to spend when its job woke far
    # too early
    assert Reservation("unit-line-c", time.time(), "x", 1).next_member("another") is None
    early = Reservation("unit-line-c", time.time() + 2 * HOLD_SECONDS, "early", 1)
    assert early.next_member("unit-line-c") is None


def test_places_whose_jobs_woke_late_are_spent_not_queued_again(
    redis_server: EmbeddedRedis,
) -> None:
    # given a 3/3 s quota used up, and three pushes keeping places in line for one moment
    # (a sliding window frees a burst one window after it was sent)
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-line-g", "3/3 seconds", margin=0.05)
    for _ in range(3):
        quota.acquire()
    kept = [Reservation.from_job(_refused_in_line(quota).reserved) for _ in range(3)]
    assert all(k is not None for k in kept)
    # when their jobs wake seconds late (a busy pool starts the last of a burst late), while
    # their own places still fill the window
    time.sleep(max(0.0, max(k.at for k in kept if k) - time.time()) + HOLD_SECONDS + 0.3)
    sent = []
    for place in kept:
        with no_waiting(), in_line(place):
            quota.acquire()  # raises OwnQuota if the push had to queue again
        sent.append(time.time())
    # then each sends on its place at once, and the window counts them as sent now
    assert sent[-1] - sent[0] < 0.5
    assert quota.try_acquire() > 2.0


def test_a_line_of_pushes_never_exceeds_the_limit(redis_server: EmbeddedRedis) -> None:
    # given more pushes than a 5/1 s quota takes in two seconds, each in its own "process"
    stamps: list[float] = []
    retries: list[int] = []
    lock = threading.Lock()

    def push() -> None:
        quota = VendorQuota(
            redis.Redis.from_url(redis_server.url), "unit-line-d", "5/1 second", margin=0.2
        )
        held: Reservation | None = None
        waits = 0
        while waits < 3:
            try:
                with no_waiting(), in_line(held):
                    quota.acquire()
                break
            except OwnQuota as refused:  # its retry, scheduled for the place it kept
                waits += 1
                held = Reservation.from_job(refused.reserved)
                assert held is not None
                time.sleep(max(0.0, held.at - time.time()))
        with lock:
            stamps.append(time.time())
            retries.append(waits)

    threads = [threading.Thread(target=push) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then every push sent, each after at most one wait in line, and no one-second window
    # ever held more than five of them
    stamps.sort()
    assert len(stamps) == 20
    assert max(retries) <= 1
    assert all(stamps[i + 5] - stamps[i] >= 1.0 for i in range(len(stamps) - 5))


def test_a_write_is_never_cut_in_two_by_the_quota(redis_server: EmbeddedRedis) -> None:
    # given a 3/1 s quota with one slot left, and a write of two requests (Leadway's contact
    # and opportunity)
    client = redis.Redis.from_url(redis_server.url)
    quota = VendorQuota(client, "unit-line-e", "3/1 second")
    quota.acquire()
    quota.acquire()
    # then its first request is not sent alone: both wait in line together
    refused = _refused_in_line(quota, 2)
    kept = Reservation.from_job(refused.reserved)
    assert kept is not None and kept.slots == 2
    # and where there is room for both, the first request takes the second's place with it
    roomy = VendorQuota(client, "unit-line-f", "3/1 second")
    roomy.acquire()
    before = _script_calls(client)
    with no_waiting(), in_line(), plan(2):
        roomy.acquire()
        roomy.acquire()
    assert _script_calls(client) - before == 2  # both taken, then the second one spent


def test_a_dense_line_is_spent_at_its_times_without_queueing_again(
    redis_server: EmbeddedRedis,
) -> None:
    # given a 40/3 s quota used up by requests sent over 2.8 s, and 40 pushes keeping places
    # in line: one window on, the places come due as densely as those requests were sent,
    # for longer than a place may wait to be spent
    client = redis.Redis.from_url(redis_server.url)
    spec = "40/3 seconds"
    quota = VendorQuota(client, "unit-line-h", spec, margin=0.05)
    sent: list[float] = []
    for _ in range(40):
        quota.acquire()
        sent.append(time.time())
        time.sleep(0.07)
    kept = [Reservation.from_job(_refused_in_line(quota).reserved) for _ in range(40)]
    assert all(k is not None for k in kept)
    requeued: list[int] = []
    lock = threading.Lock()

    def woken(place: Reservation) -> None:
        time.sleep(max(0.0, place.at - time.time()))
        try:
            with no_waiting(), in_line(place):
                VendorQuota(client, "unit-line-h", spec, margin=0.05).acquire()
        except OwnQuota:
            with lock:
                requeued.append(1)
            return
        with lock:
            sent.append(time.time())

    threads = [threading.Thread(target=woken, args=(k,)) for k in kept if k]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then every push sends on the place it kept (none queues again), and no three-second
    # window ever held more than 40 requests
    assert len(requeued) == 0
    sent.sort()
    assert all(sent[i + 40] - sent[i] >= 3.0 for i in range(len(sent) - 40))
