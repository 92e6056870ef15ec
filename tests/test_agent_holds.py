"""Which recorded write-opens are still open (common.agent.holds), on this process's own
descriptors; the wrapper's HELD/CLOSED records end to end are in test_agent_wrapper."""
from __future__ import annotations

import os

from gitsieve.common.agent.holds import HoldTracker, writable_paths
from gitsieve.common.agent.journal import LATE_CHECK, Op


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_write_opens_of_the_wanted_paths_count(tmp_path):
    for name in ("w", "r", "other"):
        (tmp_path / name).write_text("x")
    fds = [os.open(tmp_path / "w", os.O_WRONLY), os.open(tmp_path / "r", os.O_RDONLY),
           os.open(tmp_path / "other", os.O_RDWR)]
    try:
        prefix = os.fsencode(tmp_path) + b"/"
        assert writable_paths(os.getpid(), prefix, {b"w", b"r"}) == {b"w"}
        assert writable_paths(2 ** 22 + 1, prefix, {b"w"}) is None  # no such process
    finally:
        for fd in fds:
            os.close(fd)


def test_a_held_path_is_recorded_once_then_closed(tmp_path):
    clock = Clock()
    tracker = HoldTracker(os.fsencode(tmp_path), clock)
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    tracker.opened(os.getpid(), b"log")
    tracker.opened(os.getpid(), b"quick")  # never open by the time of the check
    assert tracker.due_in() is not None
    clock.now += 0.05
    assert tracker.check() == [(Op.HELD, b"log", os.getpid())]
    tracker.opened(os.getpid(), b"log")  # opened again while held: no second HELD
    assert tracker.check() == []
    os.close(fd)
    assert tracker.check() == [(Op.CLOSED, b"log", os.getpid())]
    assert tracker.due_in() is None and tracker.holders == {}


def test_a_late_check_bounds_the_window_with_a_closed_record(tmp_path):
    clock = Clock()
    tracker = HoldTracker(os.fsencode(tmp_path), clock)
    tracker.opened(os.getpid(), b"gone")
    clock.now += LATE_CHECK + 0.01  # the supervisor was busy: the close time is unknown
    assert tracker.check() == [(Op.CLOSED, b"gone", os.getpid())]
    assert tracker.close_all() == []
