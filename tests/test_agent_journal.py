"""The journal: real files, real writer processes, concurrent readers."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack

from gitsieve.common.agent.journal import (
    AgentTouches,
    DeadMerge,
    Family,
    JournalReader,
    JournalWriter,
    Op,
    Record,
    RetentionPolicy,
    newest_per_key,
    retain,
)


def segments(directory: Path, prefix: str = "") -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if name.endswith(".seg") and name.startswith(prefix))


def run_writer(directory: Path, body: str, close: bool = True) -> None:
    """A separate writer process that appends and exits, closing its writer or not (as if
    killed: its segment keeps its live name, with a dead owner)."""
    code = textwrap.dedent(f"""
        from gitsieve.common.agent.journal import *
        writer = JournalWriter({str(directory)!r}, dead_merge=DeadMerge.WHEN_MANY,
                               policy=RetentionPolicy(dead_segments_before_merge=1000))
    """) + textwrap.dedent(body) + ("\nwriter.close()\n" if close else "")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_round_trip_with_non_utf8_paths_and_digests(tmp_path):
    writer = JournalWriter(tmp_path / "j")
    name = b"caf\xe9/n\xffx"
    writer.append([(Op.CREATE, name, 11), (Op.RENAME_TO, b"b", 12)])
    writer.append([(Op.MARK, b"m", 13)], [bytes.fromhex("aa" * 20)])
    writer.close()
    records = JournalReader(tmp_path / "j").read_new()
    assert [(r.op, os.fsencode(r.path), r.pid, r.seq, r.digest) for r in records] == [
        (Op.CREATE, name, 11, 1, None), (Op.RENAME_TO, b"b", 12, 2, None),
        (Op.MARK, b"m", 13, 3, "aa" * 20)]
    assert records[0].writer == writer.writer
    assert records[0].wall <= records[2].wall and records[0].mono <= records[2].mono
    assert (tmp_path / "j").stat().st_mode & 0o777 == 0o700


def test_a_reader_resumes_without_duplicates(tmp_path):
    writer = JournalWriter(tmp_path)
    reader = JournalReader(tmp_path)
    writer.append([(Op.CREATE, b"a", 1), (Op.CREATE, b"b", 1)])
    assert [r.path for r in reader.read_new()] == ["a", "b"]
    assert reader.read_new() == []
    writer.append([(Op.UNLINK, b"a", 1)])
    assert [(r.op, r.path) for r in reader.read_new()] == [(Op.UNLINK, "a")]
    writer.close()


def test_a_torn_tail_is_read_once_it_is_whole(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.append([(Op.CREATE, b"a", 1)])
    reader = JournalReader(tmp_path)
    assert len(reader.read_new()) == 1
    whole = msgpack.packb([int(Op.CREATE), b"b", 1, 1.0, 1.0, writer.writer, 2, None],
                          use_bin_type=True)
    with open(writer.segment_path, "ab") as segment:
        segment.write(whole[:5])
        segment.flush()
        assert reader.read_new() == []
        segment.write(whole[5:])
    assert [r.path for r in reader.read_new()] == ["b"]
    writer.close()


def test_compaction_bounds_the_segment_and_readers_lose_no_newest_record(tmp_path):
    policy = RetentionPolicy(segment_bytes=4096)
    writer = JournalWriter(tmp_path, policy=policy)
    steady = JournalReader(tmp_path)
    delivered: list[Record] = []
    largest = 0
    paths = [f"dir/file-{index}".encode() for index in range(20)]
    for round_ in range(500):
        writer.append([(Op.OPEN_WRITE, path, round_) for path in paths[:10]])
        writer.append([(Op.OPEN_WRITE, path, round_) for path in paths[10:]])
        largest = max(largest, sum(os.path.getsize(tmp_path / name)
                                   for name in segments(tmp_path)))
        if round_ % 7 == 0:
            delivered.extend(steady.read_new())
    delivered.extend(steady.read_new())
    assert writer.generation > 10  # it did compact, many times
    assert segments(tmp_path) == [writer.segment_path.name]
    assert largest < 3 * 4096
    keys = [(record.writer, record.seq) for record in delivered]
    assert len(keys) == len(set(keys))
    newest = newest_per_key(delivered)
    assert {path for path, _ in newest} == {os.fsdecode(path) for path in paths}
    assert {record.pid for record in newest.values()} == {499}
    # a fresh reader reads the compacted snapshot and what came after it
    fresh = newest_per_key(JournalReader(tmp_path).read_new())
    assert len(fresh) == 20 and {record.pid for record in fresh.values()} == {499}
    writer.close()


def test_dead_writers_segments_are_merged_without_loss_or_duplicates(tmp_path):
    run_writer(tmp_path, "writer.append([(Op.CREATE, b'a', 1), (Op.CREATE, b'b', 1)])",
               close=False)
    early = JournalReader(tmp_path)
    assert [r.path for r in early.read_new()] == ["a", "b"]
    run_writer(tmp_path, "writer.append([(Op.OPEN_WRITE, b'a', 2), (Op.UNLINK, b'c', 2)])")
    assert len(segments(tmp_path, "w-")) == 1 and len(segments(tmp_path, "d-")) == 1
    merger = JournalWriter(tmp_path)  # a wrapper: merges dead segments when it starts
    assert segments(tmp_path, "w-") == [merger.segment_path.name]
    assert segments(tmp_path, "d-") == []
    assert len(segments(tmp_path, "m-")) == 1
    assert [(r.op, r.path, r.pid) for r in early.read_new()] == [
        (Op.OPEN_WRITE, "a", 2), (Op.UNLINK, "c", 2)]
    assert early.read_new() == []
    fresh = {(r.op, r.path, r.pid) for r in JournalReader(tmp_path).read_new()}
    # the newest per (path, family): a's first write was superseded
    assert fresh == {(Op.OPEN_WRITE, "a", 2), (Op.CREATE, "b", 1), (Op.UNLINK, "c", 2)}
    merger.close()


def test_short_lived_writers_merge_only_once_many_dead_segments_exist(tmp_path):
    policy = RetentionPolicy(dead_segments_before_merge=3)
    for index in range(3):
        run_writer(tmp_path, f"writer.append([(Op.MARK, b'p{index}', 1)])")
    assert len(segments(tmp_path, "d-")) == 3  # closed, renamed for merging
    in_process = JournalWriter(tmp_path, policy=policy, dead_merge=DeadMerge.WHEN_MANY)
    assert len(segments(tmp_path, "d-")) == 3 and segments(tmp_path, "m-") == []
    in_process.append([(Op.MARK, b"p3", 1)])
    in_process.close()  # the process lives on: its closed segment is dead data all the same
    JournalWriter(tmp_path, policy=policy, dead_merge=DeadMerge.WHEN_MANY).close()
    assert segments(tmp_path, "m-") != [] and len(segments(tmp_path, "d-")) == 1
    assert sorted(r.path for r in JournalReader(tmp_path).read_new()) == ["p0", "p1", "p2", "p3"]


def test_two_writers_of_one_process_do_not_collide(tmp_path):
    first, second = JournalWriter(tmp_path), JournalWriter(tmp_path)
    first.append([(Op.CREATE, b"a", 1)])
    second.append([(Op.CREATE, b"b", 1)])
    first.append([(Op.CREATE, b"c", 1)])
    assert len(segments(tmp_path, "w-")) == 2
    assert sorted(r.path for r in JournalReader(tmp_path).read_new()) == ["a", "b", "c"]
    first.close()
    second.close()


def test_concurrent_writers_and_a_reader(tmp_path):
    body = """
        import os
        for index in range(1000):
            writer.append([(Op.CREATE, f'{os.getpid()}-{index}'.encode(), os.getpid())])
    """
    code = textwrap.dedent(f"""
        from gitsieve.common.agent.journal import *
        writer = JournalWriter({str(tmp_path)!r})
    """) + textwrap.dedent(body)
    writers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    reader = JournalReader(tmp_path)
    seen: list[Record] = []
    while any(proc.poll() is None for proc in writers):
        seen.extend(reader.read_new())
    seen.extend(reader.read_new())
    assert [proc.returncode for proc in writers] == [0, 0]
    assert len(seen) == 2000
    assert len({(record.writer, record.seq) for record in seen}) == 2000


def test_a_failed_append_loses_only_its_batch_and_keeps_the_journal_readable(tmp_path):
    code = textwrap.dedent(f"""
        import resource
        from gitsieve.common.agent.journal import *
        writer = JournalWriter({str(tmp_path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))  # EFBIG past 600 bytes
        failed = []
        for index in range(40):
            try:
                writer.append([(Op.CREATE, f'file-{{index:02}}'.encode(), 1)])
            except JournalWriteError:
                failed.append(index)
        print(' '.join(map(str, failed)))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    failed = {int(index) for index in result.stdout.split()}
    assert failed  # the limit was hit
    paths = [record.path for record in JournalReader(tmp_path).read_new()]
    assert len(paths) == len(set(paths))
    assert set(paths) == {f"file-{index:02}" for index in range(40)} - {
        f"file-{index:02}" for index in failed}


def record(op: Op, path: str, wall: float, seq: int, writer: int = 1) -> Record:
    return Record(op, path, 1, wall, wall, writer, seq)


def test_retention_keeps_the_newest_per_path_and_family_within_bounds():
    policy = RetentionPolicy(removal_retention=100.0, max_removals=2, max_age=1000.0)
    now = 10_000.0
    records = [
        record(Op.CREATE, "gone", now - 50, 1), record(Op.UNLINK, "gone", now - 40, 2),
        record(Op.CREATE, "back", now - 50, 3), record(Op.UNLINK, "back", now - 60, 4),
        record(Op.RENAME_FROM, "old-removal", now - 500, 5),
        record(Op.UNLINK, "r1", now - 30, 6), record(Op.UNLINK, "r2", now - 20, 7),
        record(Op.OPEN_WRITE, "ancient", now - 2000, 8),
        record(Op.OPEN_WRITE, "kept", now - 10, 9), record(Op.MARK, "kept", now - 5, 10),
        record(Op.OPEN_WRITE, "kept", now - 70, 11, writer=0),
    ]
    kept = retain(newest_per_key(records), now, policy)
    assert [(r.op, r.path) for r in kept] == [
        (Op.CREATE, "back"), (Op.UNLINK, "r1"), (Op.UNLINK, "r2"),
        (Op.OPEN_WRITE, "kept"), (Op.MARK, "kept")]


def test_agent_touches_keeps_the_newest_per_path_and_family_and_directory_renames():
    touches = AgentTouches()
    touches.add([record(Op.OPEN_WRITE, "src/a.py", 100.0, 1),
                 record(Op.CREATE, "src/a.py", 90.0, 2),  # older: kept out
                 record(Op.RENAME_TO, "build", 200.0, 3),
                 record(Op.RENAME_FROM, "old", 150.0, 4),
                 record(Op.UNLINK, "src/b.py", 120.0, 5)])
    assert touches.newest("src/a.py", Family.WRITE).seq == 1
    assert touches.moved_with("build/deep/x.o", Family.WRITE).op is Op.RENAME_TO
    assert touches.moved_with("old/x", Family.REMOVAL).op is Op.RENAME_FROM
    assert touches.moved_with("old/x", Family.WRITE) is None
    assert touches.moved_with("src/b.py/c", Family.REMOVAL) is None  # not a rename
    assert touches.newest("src/b.py", Family.REMOVAL).seq == 5


def test_agent_touches_drops_what_a_later_removal_supersedes_and_expires_removals():
    touches = AgentTouches(RetentionPolicy(removal_retention=100.0, max_removals=2))
    start = time.time() - 1000.0  # the retention counts from the real clock
    touches.add([record(Op.CREATE, "a", start + 10, 1), record(Op.HELD, "a", start + 11, 2),
                 record(Op.UNLINK, "a", start + 12, 3), record(Op.CREATE, "b", start + 20, 4),
                 record(Op.UNLINK, "b", start + 19, 5)])
    assert touches.newest("a", Family.WRITE) is None and touches.newest("a", Family.HOLD) is None
    assert touches.newest("b", Family.WRITE).seq == 4  # created again after its removal
    assert touches.expire(time.time()) == 2  # a's and b's removals are past the retention
    recent = time.time() - 10.0
    touches.add([record(Op.UNLINK, "c", recent, 6), record(Op.UNLINK, "d", recent + 1, 7),
                 record(Op.UNLINK, "e", recent + 2, 8)])  # a third: the oldest goes
    assert {key for key in "abcde" if touches.newest(key, Family.REMOVAL)} == {"d", "e"}
    assert touches.newest("b", Family.WRITE).seq == 4


def test_the_reader_lists_the_directory_only_when_it_changed(tmp_path):
    writer = JournalWriter(tmp_path)
    reader = JournalReader(tmp_path)
    writer.append([(Op.CREATE, b"a", 1)])
    assert [r.path for r in reader.read_new()] == ["a"]
    # an old listing of an unchanged directory is trusted: appends need no listing
    os.utime(tmp_path, (1.0, 1.0))
    reader.read_new()
    listings = reader.listings
    for name in (b"b", b"c"):
        writer.append([(Op.CREATE, name, 1)])
        assert [r.path for r in reader.read_new()] == [os.fsdecode(name)]
    assert reader.listings == listings
    writer.close()  # renamed w- to d-: the directory changed, the offset is kept
    assert reader.read_new() == [] and reader.listings == listings + 1
    second = JournalWriter(tmp_path)
    second.append([(Op.UNLINK, b"a", 2)])
    assert [(r.op, r.path) for r in reader.read_new()] == [(Op.UNLINK, "a")]
    assert reader.writer_alive(second.writer) and not reader.writer_alive(writer.writer)
    assert reader.live_owner_pids() == {os.getpid()}
    second.close()
    reader.read_new()
    assert not reader.writer_alive(second.writer)
    reader.close()
