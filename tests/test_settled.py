"""The settled versions' store: what a restart finds, a crash included."""
from __future__ import annotations

import msgpack

from gitsieve.common.judge.settled import JOURNAL_EVERY, SNAPSHOT_EVERY, SettledVersions


def never(_path: str) -> bool:
    return False


def test_versions_settled_after_the_snapshot_survive_a_kill(tmp_path):
    store = SettledVersions(tmp_path)
    store.settle("a.json", 1)
    store.save_due(100.0)  # the first change: a snapshot at once
    store.settle("b.json", 2)
    store.settle("a.json", 3)
    store.save_due(100.0 + JOURNAL_EVERY)  # journaled, the snapshot not yet due
    assert store.changed_since_snapshot
    # killed here: no clean stop, no later snapshot
    again = SettledVersions(tmp_path)
    assert again.load(never) == 2
    assert (again.get("a.json"), again.get("b.json")) == (3, 2)


def test_a_snapshot_empties_the_journal_and_holds_its_entries(tmp_path):
    store = SettledVersions(tmp_path)
    store.settle("a", 1)
    store.save_due(0.0)
    store.settle("b", 2)
    store.save_due(JOURNAL_EVERY)
    assert store.journal_path.stat().st_size > 0
    store.save_due(SNAPSHOT_EVERY + 1)
    assert store.journal_path.stat().st_size == 0
    again = SettledVersions(tmp_path)
    assert again.load(never) == 2 and again.get("b") == 2


def test_a_torn_or_hostile_journal_keeps_what_came_before_it(tmp_path):
    store = SettledVersions(tmp_path)
    store.settle("a", 1)
    store.save()
    with open(store.journal_path, "ab") as journal:
        journal.write(msgpack.packb(["b", 2]) + msgpack.packb(["bad", True])
                      + msgpack.packb({"not": "an entry"}) + msgpack.packb(["c", 3])[:-1])
    again = SettledVersions(tmp_path)
    assert again.load(never) == 2
    assert (again.get("a"), again.get("b"), again.get("bad"), again.get("c")) == (1, 2, None, None)


def test_an_unreadable_snapshot_is_ignored_and_the_cap_holds(tmp_path):
    (tmp_path / "settled-versions.msgpack").write_bytes(b"\xc1 not msgpack")
    store = SettledVersions(tmp_path, cap=2)
    assert store.load(never) == 0
    for number in range(3):
        store.settle(f"p{number}", number)
    store.save()
    again = SettledVersions(tmp_path, cap=2)
    assert again.load(lambda path: path == "p2") == 1 and again.get("p1") == 1
