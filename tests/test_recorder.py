"""common.judge.attribution.recorder as pure logic (events built by hand, real files for the
identities): what a write or name operation is recorded under, and every blind spot that
makes a change UNKNOWN, never the user's; and what the process judge makes of it."""
from __future__ import annotations

import dataclasses
import os
import time

from gitsieve.common.judge.attribution.base import UNKNOWN, USER
from gitsieve.common.judge.attribution.events import (
    ARRIVALS,
    LineageEntry,
    NameOp,
    Op,
    Overflow,
    OverflowSource,
    Unmarked,
    Write,
)
from gitsieve.common.judge.attribution.exact import WriterRules, blind, combine
from gitsieve.common.judge.attribution.file_identity import FileIdentifier
from gitsieve.common.judge.attribution import recorder as recorder_module
from gitsieve.common.judge.attribution.recorder import WriteRecorder
from gitsieve.common.judge.attribution.write_history import Missed
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import ChangeKind, L2Reason, Mode, Technique, Writer

RULES = WriterRules(["agent-runtime"])
EDITOR = (LineageEntry(10, 1, "vim notes.md", 1000, "", False, False, False),)
AGENT = (LineageEntry(11, 1, "python agent-runtime", 1000, "", False, False, False),)


def recorder_on(tmp_path, **kwargs) -> WriteRecorder:
    return WriteRecorder(os.path.realpath(tmp_path), RULES.classify, **kwargs)


def write_of(tmp_path, rel: str, lineage=EDITOR, wall: float | None = None) -> Write:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    identity = FileIdentifier().of_path(path).encode()
    return Write(1, rel.encode(), Op.CLOSE_WRITE, lineage[0].pid if lineage else 99,
                 time.time() if wall is None else wall, time.monotonic(), identity, lineage)


def test_writes_are_found_by_the_identity_of_the_file_now_at_the_path(tmp_path):
    recorder = recorder_on(tmp_path)
    recorder.record([write_of(tmp_path, "a.tmp", AGENT)])
    os.replace(tmp_path / "a.tmp", tmp_path / "a.json")  # atomic replace: same file
    [event] = recorder.writes_to(tmp_path / "a.json", 0, time.time() + 1)
    assert (event.pid, event.path, event.evidence.writer) == (11, "a.tmp", "SYSTEM")
    (tmp_path / "b.txt").write_text("another file")
    assert recorder.writes_to(tmp_path / "b.txt", 0, time.time() + 1) == []


def test_an_empty_lineage_is_classified_unknown_not_skipped(tmp_path):
    recorder = recorder_on(tmp_path)
    recorder.record([write_of(tmp_path, "a.txt", EDITOR), write_of(tmp_path, "b.txt", ())])
    [event] = recorder.writes_to(tmp_path / "b.txt", 0, time.time() + 1)
    assert event.evidence.writer == UNKNOWN
    # writes whose writer is unknown make the change UNKNOWN, never "no writes"
    found = combine([event])
    assert found.writer == UNKNOWN and found.confidence == 0.0


def test_excluded_directories_and_bad_identities_are_not_recorded(tmp_path):
    recorder = recorder_on(tmp_path, excluded=("runtime",))
    recorder.record([write_of(tmp_path, "runtime/x"),
                     dataclasses.replace(write_of(tmp_path, "y"), identity=b"\x01")])
    assert recorder.writes.files == {} and recorder.bad_identities == 1


def test_name_operations_are_kept_per_path_directories_left_out(tmp_path):
    recorder = recorder_on(tmp_path)
    now = time.time()
    recorder.record([NameOp(1, b"new.json", Op.MOVED_TO, 11, now, 0.0, False, AGENT),
                     NameOp(1, b"dir", Op.CREATE, 11, now, 0.0, True, AGENT)])
    [into] = recorder.operations_on("new.json", ARRIVALS, now - 1, now + 1)
    assert (into.op, into.evidence.writer) == (Op.MOVED_TO, "SYSTEM")
    assert "dir" not in recorder.names


def test_name_operations_are_capped_per_path_and_in_paths_forgetting_into_a_gap(tmp_path):
    """A storm of new files kept one history per name until the history's 30 s ran out:
    now at most ``max_files`` names, the least recent forgotten, their span a blind spot."""
    recorder = recorder_on(tmp_path, max_files=100)
    now = time.time()
    for number in range(40):
        recorder.record([NameOp(1, b"status.json", Op.MOVED_TO, 11, now + number, 0.0,
                                False, AGENT)])
    assert len(recorder.names["status.json"]) == recorder_module.HISTORY_PER_FILE
    assert recorder.missed("status.json", now - 1, now + 50, unmarked=False) is None
    for number in range(150):
        recorder.record([NameOp(1, f"out/{number}.json".encode(), Op.CREATE, 11,
                                now + 50 + number * 0.01, 0.0, False, AGENT)])
    assert len(recorder.names) == 100 and "status.json" not in recorder.names
    assert "out/149.json" in recorder.names and "out/49.json" not in recorder.names
    assert recorder.missed("status.json", now + 30, now + 35,
                           unmarked=False) is Missed.HISTORY_CAP


def test_an_overflow_makes_the_window_it_covers_unknown(tmp_path):
    recorder, t = recorder_on(tmp_path), time.time()
    recorder.record([Overflow(0, OverflowSource.FANOTIFY, t - 10, 0.0, t, 0.0, 0)])
    assert recorder.missed("a", t - 5, t + 10) is Missed.FANOTIFY_OVERFLOW
    assert recorder.missed("a", t + 1, t + 10) is None
    recorder.prune(t + recorder.history + 1)
    assert recorder.missed("a", t - 5, t + 10) is None


def test_a_span_stays_open_while_the_helper_is_away(tmp_path):
    recorder, t = recorder_on(tmp_path), time.time()
    recorder.open_missed(t, Missed.HELPER_AWAY)
    assert recorder.missed("a", t + 5, t + 6) is Missed.HELPER_AWAY
    recorder.close_missed(t + 2)
    assert recorder.missed("a", t + 1, t + 1.5) is Missed.HELPER_AWAY
    assert recorder.missed("a", t + 3, t + 6) is None


def test_a_file_of_an_unmarked_directory_is_unknown_below_it_too(tmp_path):
    recorder, t = recorder_on(tmp_path), time.time()
    recorder.record([Unmarked(1, b"tree", t, 0.0), Unmarked(1, b"new/f", t, 0.0)])
    assert recorder.missed("tree/deeper/b", t - 2, t + 1) is Missed.UNMARKED
    assert recorder.missed("new/f", t - 2, t + 1) is Missed.UNMARKED
    assert recorder.missed("new/f", t + 0.1, t + 1) is None  # the window began after the mark
    assert recorder.missed("new/f", t - 2, t + 1, unmarked=False) is None  # removals
    recorder.prune(t + recorder.history + 1)
    assert recorder.unmarked == {}


class BlindAttributor:
    """Stands in for an exact attributor: USER first, then writes that may be missed."""

    mode = Mode.FANOTIFY

    def __init__(self):
        self.answers = []

    def attribute(self, abs_path, observed, since=0.0):
        return self.answers.pop(0)

    def attribute_removal(self, abs_path, observed, since=0.0):
        return self.answers.pop(0)

    def suspects(self, observed):
        return []


def test_the_judge_never_repeats_an_earlier_user_verdict_over_a_blind_spot(workspace):
    attributor = BlindAttributor()
    judge = ProcessJudge(workspace.load(), attributor)
    observed = time.time()
    user = combine([type("W", (), {"evidence": RULES.classify(EDITOR), "stamp": observed,
                                    "op": Op.CLOSE_WRITE})()])
    attributor.answers = [user, blind(Missed.HELPER_AWAY, Technique.FANOTIFY),
                          blind(Missed.FANOTIFY_OVERFLOW, Technique.FANOTIFY)]
    first = judge.judge(Change(path="a.md", kind=ChangeKind.WRITE, seq=1, epoch=1.0,
                               observed=observed))
    assert first.verdict == USER
    second = judge.judge(Change(path="a.md", kind=ChangeKind.WRITE, seq=2, epoch=1.0,
                                observed=observed + 0.1))
    assert (second.verdict, second.reason, second.repeated) == (Writer.UNKNOWN,
                                                                L2Reason.WRITER_UNKNOWN, False)
    assert not judge.drops(second)
    removed = judge.judge(Change(path="a.md", kind=ChangeKind.DELETE, seq=3, epoch=1.0,
                                 observed=observed + 0.2))
    assert removed.verdict == Writer.UNKNOWN and "overflowed" in removed.matched_by


def test_relative_paths_resolve_a_directory_again_after_a_moment(tmp_path):
    """A backlog's changes in one directory resolve it once (RESOLVED_FOR); a directory
    replaced by a link meanwhile is seen as the link's target after that moment."""
    recorder = recorder_on(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "dir").mkdir()
    assert recorder.relative(tmp_path / "dir" / "a.txt") == "dir/a.txt"
    assert recorder.relative(tmp_path / "link" / "a.txt") == "link/a.txt"  # not there yet
    (tmp_path / "dir").rmdir()
    (tmp_path / "dir").symlink_to("real")
    time.sleep(recorder_module.RESOLVED_FOR + 0.05)
    assert recorder.relative(tmp_path / "dir" / "a.txt") == "real/a.txt"
    assert recorder.relative(os.path.join(tmp_path, "other", "..", "real", "b")) == "real/b"
    assert recorder.relative(tmp_path.parent / "elsewhere" / "c") == "../elsewhere/c"
