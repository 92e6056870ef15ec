"""common.judge.attribution.write_history as pure logic: lookups by identity and time, the
newest write of each kind of writer per file, the total cap (its forgetting is a gap),
pruning, and gaps."""
from __future__ import annotations

from dataclasses import dataclass

from gitsieve.common.judge.attribution.file_identity import FileIdentity, IdentityKind
from gitsieve.common.judge.attribution.write_history import Missed, WriteHistory


@dataclass(frozen=True)
class Event:
    stamp: float
    writer: str = "system"


def by_writer(event: Event) -> str:
    return event.writer


def identity(n: int) -> FileIdentity:
    return FileIdentity(1, IdentityKind.HANDLE, n.to_bytes(8, "little"))


def test_writes_are_found_by_identity_within_the_window():
    history = WriteHistory(kind_of=by_writer)
    history.record(identity(1), Event(1.0, "user"))
    history.record(identity(1), Event(2.0, "system"))
    history.record(identity(1), Event(3.0, "self"))
    assert history.writes_to(identity(1), 1.5, 3.0) == [Event(2.0), Event(3.0, "self")]
    assert history.writes_to(identity(1), 0.0, 9.0) == [Event(1.0, "user"), Event(2.0),
                                                        Event(3.0, "self")]
    assert history.writes_to(identity(2), 0.0, 9.0) == []
    assert history.writes_to(None, 0.0, 9.0) == []


def test_a_user_write_is_kept_among_a_hundred_agent_writes():
    """Regression: a fixed-length history (32 writes per file) let an agent's rewrites push
    the person's write out, and their change was then judged on the agent's writes alone."""
    history = WriteHistory(kind_of=by_writer)
    history.record(identity(1), Event(1.0, "user"))
    for number in range(100):
        history.record(identity(1), Event(2.0 + number / 1000))
    found = history.writes_to(identity(1), 0.0, 9.0)
    assert [event.writer for event in found] == ["user", "system"]
    assert found[-1].stamp == 2.099  # the newest of the agent's, for writes_until


def test_at_the_cap_the_least_recently_written_file_goes():
    history = WriteHistory(max_files=2)
    history.record(identity(1), Event(1.0))
    history.record(identity(2), Event(2.0))
    history.record(identity(1), Event(3.0))  # 1 is now the most recent
    history.record(identity(3), Event(4.0))
    assert set(history.files) == {identity(1), identity(3)} and history.evicted == 1
    # the forgotten file's writes are a gap: a change weighing them is UNKNOWN, not USER
    assert history.gap_within(2.5, 9.0) is None
    assert history.gap_within(1.5, 9.0).reason is Missed.HISTORY_CAP


def test_prune_drops_stale_files_and_gaps():
    history = WriteHistory(history=10.0)
    history.record(identity(1), Event(1.0))
    history.record(identity(2), Event(15.0))
    history.note_gap(2.0, 3.0, Missed.FANOTIFY_OVERFLOW)
    history.note_gap(14.0, 16.0, Missed.HELPER_AWAY)
    assert history.gap_within(2.5, 2.6).reason is Missed.FANOTIFY_OVERFLOW
    history.prune(20.0)
    assert set(history.files) == {identity(2)}
    assert history.gap_within(0.0, 5.0) is None
    assert history.gap_within(15.5, 30.0).reason is Missed.HELPER_AWAY


def test_a_file_of_one_event_keeps_it_without_a_tuple_and_more_as_one():
    """An agent's storm of new files leaves one write (and one creation) per file: a tuple
    around each cost 64 bytes, 6 MiB of L2 for 50,000 files.  Lookups read both shapes."""
    history = WriteHistory(kind_of=by_writer)
    history.record(identity(1), Event(1.0, "user"))
    assert history.files[identity(1)] == Event(1.0, "user")
    history.record(identity(1), Event(2.0, "system"))
    assert history.files[identity(1)] == (Event(1.0, "user"), Event(2.0))
    history.record(identity(1), Event(3.0, "system"))  # the newer system write replaces
    assert history.writes_to(identity(1), 0.0, 9.0) == [Event(1.0, "user"), Event(3.0)]
    history.record(identity(2), Event(4.0))
    history.prune(now=1.0 + 30.5)  # identity(1)'s newest is 3.0: kept; both shapes pruned
    assert set(history.files) == {identity(1), identity(2)}
    history.prune(now=4.0 + 30.5)
    assert history.files == {}
