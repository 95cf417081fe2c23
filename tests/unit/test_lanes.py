"""Each vendor's lane of push threads: bounded, never queuing, one vendor's full lane
leaving the others free."""

from __future__ import annotations

import threading

from worker.sync.lanes import Lanes


def test_a_full_lane_refuses_work_and_leaves_other_vendors_lanes_free() -> None:
    # given a vendor's two threads both busy
    lanes = Lanes(threads=2)
    release = threading.Event()
    busy = [lanes.submit("ivvy", release.wait, 5) for _ in range(2)]
    assert all(f is not None for f in busy)
    try:
        # when a third write for it comes, then it is not started (nothing queues)
        assert lanes.submit("ivvy", lambda: "late") is None
        # and another vendor's write runs at once
        other = lanes.submit("siro", lambda: "written")
        assert other is not None and other.result(timeout=5) == "written"
    finally:
        release.set()
    # and once the vendor's writes end, its lane takes work again
    for future in busy:
        assert future is not None and future.result(timeout=5) is True
    again = lanes.submit("ivvy", lambda: "written")
    assert again is not None and again.result(timeout=5) == "written"


def test_a_write_that_fails_frees_its_place_in_the_lane() -> None:
    # given a lane of one thread whose write raised
    lanes = Lanes(threads=1)

    def fails() -> None:
        raise RuntimeError("vendor error")

    failed = lanes.submit("ivvy", fails)
    assert failed is not None and isinstance(failed.exception(timeout=5), RuntimeError)
    # then the next write still gets the thread
    nxt = lanes.submit("ivvy", lambda: "written")
    assert nxt is not None and nxt.result(timeout=5) == "written"
