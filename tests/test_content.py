"""The content layer's pure rules: judge.content.classify and its helpers."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import create_workspace
from gitsieve.common.judge.content import (
    SIZE_CAP,
    SYSTEM,
    UNCHANGED,
    USER,
    classify,
    compile_volatile,
    git_blob_id,
    masked_digest,
    only_volatile_tokens,
    strip_volatile,
)
from gitsieve.common.judge.junk import editor_junk
from gitsieve.common.judge.pattern import PatternJudge, observe, urgent
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import BadMessage, Change
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    Writer,
    render,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep, l1_action

VOLATILE = ("last_update", "timestamp", "session_id")


def as_json(obj, **kwargs) -> bytes:
    return json.dumps(obj, **kwargs).encode()


# ----- strip_volatile ------------------------------------------------------------------
def test_strip_volatile_removes_keys_at_any_depth():
    doc = {"a": 1, "timestamp": 5, "inner": {"last_update": "x", "keep": {"session_id": 1,
                                                                          "z": 2}}}
    assert strip_volatile(doc, VOLATILE) == {"a": 1, "inner": {"keep": {"z": 2}}}


def test_strip_volatile_reaches_dicts_inside_lists():
    doc = [{"timestamp": 1, "v": 1}, [{"session_id": "s", "w": [{"last_update": 0}]}], 3]
    assert strip_volatile(doc, VOLATILE) == [{"v": 1}, [{"w": [{}]}], 3]


def test_strip_volatile_leaves_input_untouched_and_scalars_alone():
    doc = {"timestamp": 1, "v": [1, 2]}
    strip_volatile(doc, VOLATILE)
    assert doc == {"timestamp": 1, "v": [1, 2]}
    assert strip_volatile("timestamp", VOLATILE) == "timestamp"
    assert strip_volatile(None, VOLATILE) is None


# ----- deletions and new files ---------------------------------------------------------
def test_deleted_file_that_was_never_committed_is_unchanged():
    verdict = classify("a.txt", None, None, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (UNCHANGED, L3Reason.NEVER_COMMITTED)
    assert not verdict.commit


def test_deleted_committed_file_is_a_user_change():
    verdict = classify("a.txt", b"old\n", None, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, L3Reason.DELETED)
    assert verdict.commit


def test_new_file_is_a_user_change_even_if_it_is_json_with_volatile_keys():
    verdict = classify("s.json", None, as_json({"timestamp": 1}), VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, L3Reason.NEW_FILE)


def test_identical_bytes_are_unchanged():
    assert classify("a.txt", b"same", b"same", VOLATILE).verdict == UNCHANGED
    assert classify("s.json", b"{}", b"{}", VOLATILE).verdict == UNCHANGED


# ----- JSON ------------------------------------------------------------------------------
def test_timestamp_only_json_change_is_system_and_names_the_keys():
    head = as_json({"status": "ok", "last_update": 1, "timestamp": 2, "session_id": "a"})
    work = as_json({"status": "ok", "last_update": 9, "timestamp": 2, "session_id": "b"})
    verdict = classify("status.json", head, work, VOLATILE)
    assert verdict.verdict == SYSTEM
    assert (verdict.reason, verdict.detail) == (L3Reason.JSON_VOLATILE_KEYS,
                                                "last_update, session_id")
    assert render(verdict.reason, verdict.detail) == \
        "only volatile keys changed: last_update, session_id"
    assert not verdict.commit


def test_nested_volatile_keys_in_lists_of_dicts_are_system():
    head = as_json({"agents": [{"name": "a", "timestamp": 1}, {"name": "b",
                                                             "meta": {"last_update": 1}}]})
    work = as_json({"agents": [{"name": "a", "timestamp": 7}, {"name": "b",
                                                             "meta": {"last_update": 8}}]})
    verdict = classify("ctx.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (SYSTEM, L3Reason.JSON_VOLATILE_KEYS)
    assert set(verdict.detail.split(", ")) == {"timestamp", "last_update"}


def test_real_json_change_next_to_volatile_keys_is_user():
    head = as_json({"task": "write docs", "timestamp": 1})
    work = as_json({"task": "write tests", "timestamp": 2})
    verdict = classify("ctx.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, L3Reason.JSON_CHANGED)


def test_change_inside_a_list_of_dicts_is_user():
    head = as_json([{"id": 1, "timestamp": 1}, {"id": 2}])
    work = as_json([{"id": 1, "timestamp": 2}, {"id": 3}])
    assert classify("list.json", head, work, VOLATILE).verdict == USER


def test_volatile_key_list_comes_from_the_caller():
    head, work = as_json({"a": 1, "heartbeat": 1}), as_json({"a": 1, "heartbeat": 2})
    assert classify("x.json", head, work, VOLATILE).verdict == USER
    assert classify("x.json", head, work, ("heartbeat",)).verdict == SYSTEM


def test_reformatted_json_with_the_same_data_is_system():
    head = as_json({"a": 1, "b": [1, 2]})
    work = as_json({"b": [1, 2], "a": 1}, indent=2)
    verdict = classify("x.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (SYSTEM, L3Reason.JSON_FORMATTING)


def test_json_content_in_a_file_without_json_extension_is_parsed():
    head = as_json({"v": 1, "timestamp": 1})
    work = as_json({"v": 1, "timestamp": 2})
    assert classify("state.dat", head, work, VOLATILE).verdict == SYSTEM


def test_json_the_fast_parser_would_misread_is_parsed_exactly():
    # orjson reads integers beyond 64 bits as floats, equal when they differ in the last
    # digits; and it refuses lone surrogates, which Python's parser takes
    big = 123456789012345678901234567890
    head = b'{"n": %d, "timestamp": 1}' % big
    assert classify("big.json", head, b'{"n": %d, "timestamp": 1}' % (big + 1),
                    VOLATILE).verdict == USER
    verdict = classify("big.json", head, b'{"n": %d, "timestamp": 2}' % big, VOLATILE)
    assert (verdict.verdict, verdict.reason, verdict.detail) == (
        SYSTEM, L3Reason.JSON_VOLATILE_KEYS, "timestamp")
    head = b'{"s": "\\ud800", "timestamp": 1}'
    verdict = classify("s.json", head, head.replace(b"1}", b"2}"), VOLATILE)
    assert (verdict.reason, verdict.detail) == (L3Reason.JSON_VOLATILE_KEYS, "timestamp")


def test_scalar_json_outside_json_files_is_text():
    # "1" and "2" parse as JSON numbers, but a .txt of numbers is text, judged as such
    assert classify("n.txt", b"1", b"2", VOLATILE).verdict == USER


def test_invalid_json_falls_back_to_text_rules():
    head = b'{"timestamp": 1, "v": 1}'
    work = b'{"timestamp": 2, "v": 1'  # truncated: not JSON any more
    verdict = classify("x.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, L3Reason.CONTENT_CHANGED)


def test_invalid_json_log_still_gets_the_append_rule():
    head = b"{not json\n"
    assert classify("j.log", head, head + b"more\n", VOLATILE).verdict == SYSTEM


def test_deeply_nested_json_never_crashes():
    head = b"[" * 100_000 + b"]" * 100_000
    work = b"[" * 100_000 + b"1" + b"]" * 100_000
    assert classify("deep.json", head, work, VOLATILE).verdict == USER


def nested(depth: int, timestamp: int) -> bytes:
    return b'{"a":' * depth + b'{"timestamp": %d}' % timestamp + b"}" * depth


def test_deep_volatile_key_is_found():
    assert classify("deep.json", nested(50, 1), nested(50, 2), VOLATILE).verdict == SYSTEM


def test_very_deep_json_is_compared_without_a_crash():
    # near the parser's own depth limit: compared (equal subtrees are skipped at C speed);
    # a RecursionError would still give USER "JSON too deep to compare", never a crash
    verdict = classify("deep.json", nested(900, 1), nested(900, 2), VOLATILE)
    assert (verdict.verdict, verdict.reason, verdict.detail) == (
        SYSTEM, L3Reason.JSON_VOLATILE_KEYS, "timestamp")
    changed = nested(900, 1).replace(b'"a":{"timestamp"', b'"b":{"timestamp"')
    assert classify("deep.json", nested(900, 1), changed, VOLATILE).verdict == USER


def test_non_utf8_json_file_is_text():
    verdict = classify("x.json", b'{"a": "\xff"}', b'{"a": "\xfe"}', VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, L3Reason.CONTENT_CHANGED)


# ----- logs ------------------------------------------------------------------------------
def test_append_only_log_growth_is_system():
    head = b"line 1\nline 2\n"
    verdict = classify("logs/agent.log", head, head + b"line 3\n", VOLATILE)
    assert (verdict.verdict, verdict.reason, verdict.detail) == (SYSTEM, L3Reason.LOG_APPENDED,
                                                                 "7")
    assert render(verdict.reason, verdict.detail) == "log grew by 7 bytes (append-only)"


def test_rewritten_log_is_user():
    verdict = classify("logs/agent.log", b"line 1\nline 2\n", b"line 1\nedited\n", VOLATILE)
    assert verdict.verdict == USER


def test_truncated_log_is_user():
    assert classify("a.log", b"line 1\nline 2\n", b"line 1\n", VOLATILE).verdict == USER


def test_append_rule_only_applies_to_log_files():
    head = b"line 1\n"
    assert classify("notes.txt", head, head + b"line 2\n", VOLATILE).verdict == USER


# ----- size cap and binary ---------------------------------------------------------------
def test_files_over_the_size_cap_are_not_parsed():
    head = as_json({"timestamp": 1, "pad": "x" * 100})
    work = as_json({"timestamp": 2, "pad": "x" * 100})
    assert classify("x.json", head, work, VOLATILE).verdict == SYSTEM
    capped = classify("x.json", head, work, VOLATILE, size_cap=50)
    assert (capped.verdict, capped.reason, capped.detail) == (USER, L3Reason.OVER_SIZE_CAP, "50")
    assert "bytes only" in render(capped.reason, capped.detail)
    assert classify("x.json", head, head, VOLATILE, size_cap=50).verdict == UNCHANGED


def test_default_size_cap_is_five_megabytes():
    assert SIZE_CAP == 5 * 1024 * 1024
    big = b'{"timestamp": 1, "pad": "' + b"x" * SIZE_CAP + b'"}'
    verdict = classify("big.json", big, big.replace(b'": 1', b'": 2'), VOLATILE)
    assert verdict.verdict == USER


def test_binary_files_compare_as_bytes():
    head = bytes(range(256)) * 4
    assert classify("img.png", head, head, VOLATILE).verdict == UNCHANGED
    assert classify("img.png", head, head[::-1], VOLATILE).verdict == USER
    assert classify("blob.log", b"\x00\x01", b"\x00\x01\x02", VOLATILE).verdict == SYSTEM


# ----- helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_git_blob_id_matches_git(tmp_path, algorithm):
    target = tmp_path / "file.bin"
    target.write_bytes(b"hello\x00world\n" * 1000)
    expected = subprocess.run(
        ["git", "hash-object", "--literally", "--no-filters", str(target)]
        if algorithm == "sha1" else
        ["git", "hash-object", "--object-format=sha256", "--no-filters", str(target)],
        capture_output=True, text=True, check=False)
    if algorithm == "sha256" and expected.returncode != 0:
        # older git cannot hash sha256 outside a repository: compute the definition
        data = target.read_bytes()
        want = hashlib.sha256(f"blob {len(data)}\0".encode() + data).hexdigest()
    else:
        want = expected.stdout.strip()
    assert git_blob_id(str(target), 64 if algorithm == "sha256" else 40) == want


def test_l1_action_reads_the_trail():
    allow = PatternStep(Action.ALLOW, L1Reason.RULE, "ALLOW:a (line 1)")
    l2 = ProcessStep(Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_WRITER_SEEN, Mode.PSUTIL)
    l3 = ContentStep(Content.USER, L3Reason.NEW_FILE)
    change = Change("a", ChangeKind.WRITE, 1, 0.0, 0.0, trail=(allow, l2, l3))
    assert l1_action(change.trail) == Action.ALLOW
    assert l1_action(Change("a", ChangeKind.WRITE, 1, 0.0, 0.0).trail) == Action.ANALYZE
    # a trail without an L1 step (only other layers' steps) reads as ANALYZE
    assert l1_action((l2, l3)) == Action.ANALYZE
    # a malformed trail never gets this far: decoding refuses it (the old dict steps too)
    wire = messages.encode(change).replace(b"\xa2L1", b"\xa2L9")
    with pytest.raises(BadMessage, match="unknown trail layer"):
        messages.decode(wire)




# ----- issue 3: volatile text, junk, the user's own writes, masked digests ------------------
@pytest.fixture(scope="module")
def volatile_text(tmp_path_factory):
    """The default [filter] text_volatile_patterns, as a loaded config has them."""
    config = create_workspace(tmp_path_factory.mktemp("defaults")).load()
    return compile_volatile(config.text_volatile_patterns)


T1, T2 = "2024-05-01T10:00:00.123+00:00", "2024-05-02T11:30:59.9Z"
U1, U2 = "0b8f6c1e-3d2a-4f5b-9c8d-7e6f5a4b3c2d", "9a1b2c3d-4e5f-4a6b-8c7d-6e5f4a3b2c1d"


@pytest.mark.parametrize("head, work", [
    (f"built {T1}\n", f"built {T2}\n"),
    (f"run {U1} ok\n", f"run {U2} ok\n"),
    ("epoch 1714557600\n", "epoch 1714557999.25\n"),
    ("at 10:00:01\n", "at 23:59:59.5\n"),
])
def test_text_differing_only_in_volatile_tokens_is_system(head, work, volatile_text):
    found = classify("status.txt", head.encode(), work.encode(), VOLATILE, volatile=volatile_text)
    assert (found.verdict, found.reason) == (SYSTEM, L3Reason.VOLATILE_TOKENS)


def test_text_with_a_real_change_beside_a_timestamp_is_user(volatile_text):
    found = classify("s.txt", f"a {T1}\n".encode(), f"b {T2}\n".encode(), VOLATILE,
                     volatile=volatile_text)
    assert found.verdict == USER
    assert classify("s.txt", f"a {T1}".encode(), f"a {T2}".encode()).verdict == USER  # no patterns


def test_json_timestamp_value_under_a_non_volatile_key_is_system(volatile_text):
    head, work = as_json({"updated": T1, "n": 1}), as_json({"updated": T2, "n": 1})
    assert classify("a.json", head, work, VOLATILE, volatile=volatile_text).verdict == SYSTEM
    assert classify("a.json", head, as_json({"updated": T2, "n": 2}), VOLATILE,
                    volatile=volatile_text).verdict == USER


@pytest.mark.parametrize("name", [".a.swp", ".a.swx", "a~", "4913", ".#a", ".goutputstream-Q",
                                  "a.tmp", "a.bak", "a.orig"])
def test_editor_and_backup_junk_is_never_committed_even_new_or_by_the_user(name, junk_workspace):
    """Junk is decided once, by the watcher (observe), and L1 blocks it: before any rule
    (here one that allows everything) and before L2 could name the user as its writer, so
    nothing downstream can commit it, whether the file is new or has a version in HEAD."""
    workspace, rules, judge = junk_workspace
    path = f"dir/{name}"
    kind = editor_junk(path)
    assert kind and rules.match(path).action == Action.ALLOW
    workspace.write(path, "old")
    for seq, (state, change_kind) in enumerate((("new", ChangeKind.WRITE),
                                                ("in HEAD", ChangeKind.WRITE),
                                                ("in HEAD", ChangeKind.DELETE)), 1):
        if state == "in HEAD" and change_kind == ChangeKind.WRITE:
            workspace.git("add", "-f", path)
            workspace.git("commit", "-q", "-m", f"junk {name}")
            workspace.write(path, "new")
        if change_kind == ChangeKind.DELETE:
            workspace.path(path).unlink()
        change = observe(path, change_kind, seq, 1.0, 2.0, rules)
        assert (change.junk, change.rule) == (kind, None), state
        assert not urgent(change)
        assert judge.judge([change]) == [PatternStep(Action.BLOCK, L1Reason.EDITOR_JUNK, kind)]


@pytest.fixture(scope="module")
def junk_workspace(tmp_path_factory):
    workspace = create_workspace(tmp_path_factory.mktemp("junk"))
    workspace.patterns("ALLOW:.*:Everything is the user's\n")
    config = workspace.load()
    return workspace, RuleCache(config.patterns_file), PatternJudge(config)


def test_a_user_writer_is_committed_even_for_timestamp_only_changes(volatile_text):
    head, work = f"at {T1}\n".encode(), f"at {T2}\n".encode()
    assert classify("m.md", head, work, VOLATILE, volatile=volatile_text,
                    user_writer=True).verdict == USER
    assert classify("m.md", head, head, VOLATILE, user_writer=True).verdict == UNCHANGED


def test_binary_changes_are_user_and_named_by_hash(volatile_text):
    head, work = b"\0a", b"\0b"
    found = classify("x.bin", head, work, VOLATILE, volatile=volatile_text)
    assert (found.verdict, found.reason) == (USER, L3Reason.BINARY_CHANGED)
    assert found.detail == (f"{hashlib.sha256(head).hexdigest()[:12]} -> "
                            f"{hashlib.sha256(work).hexdigest()[:12]}")
    assert "sha256" in render(found.reason, found.detail)


def test_masked_digest_ignores_volatile_tokens_and_keys_only(volatile_text):
    same = [masked_digest("s.md", f"x {T1}\n".encode(), VOLATILE, volatile_text),
            masked_digest("s.md", f"x {T2}\n".encode(), VOLATILE, volatile_text)]
    assert same[0] == same[1] and same[0] is not None
    assert masked_digest("s.md", b"y\n", VOLATILE, volatile_text) != same[0]
    assert masked_digest("a.json", as_json({"timestamp": 1, "k": 1}), VOLATILE) == \
        masked_digest("a.json", as_json({"k": 1, "timestamp": 2}), VOLATILE)
    assert masked_digest("b.bin", b"\0\1", VOLATILE) is None
    assert masked_digest("big.txt", b"x" * 10, VOLATILE, size_cap=5) is None


# ----- issue 8: a text file whose only content is a timestamp is churn -------------------------
STAMPS = ["1714557600\n", "1714557600123\n", "1714557600123456\n",
          "1714557600123456789\n",  # date +%s%N
          "1714557600.123456\n", "2024-05-01T10:00:00.123456789+00:00\n",
          "2024-05-01 10:00:00,5Z", "  2024-05-01T10:00:00Z  \n"]


@pytest.mark.parametrize("stamp", STAMPS)
def test_timestamp_only_text_by_an_unknown_writer_is_system_new_or_changed(stamp, volatile_text):
    new = classify("run.stamp", None, stamp.encode(), VOLATILE, volatile=volatile_text)
    assert (new.verdict, new.reason) == (SYSTEM, L3Reason.TIMESTAMP_ONLY)
    changed = classify("run.stamp", b"real words\n", stamp.encode(), VOLATILE,
                       volatile=volatile_text)
    assert (changed.verdict, changed.reason) == (SYSTEM, L3Reason.TIMESTAMP_ONLY)
    assert "timestamp" in render(changed.reason)


@pytest.mark.parametrize("stamp", STAMPS)
def test_the_users_own_timestamp_only_file_is_still_theirs(stamp, volatile_text):
    for head in (None, b"before\n"):
        found = classify("run.stamp", head, stamp.encode(), VOLATILE, volatile=volatile_text,
                         user_writer=True)
        assert found.verdict == USER


@pytest.mark.parametrize("text", ["1234\n", "version 1714557600\n", "42\n", "",
                                  "1714557600 and a note\n", "2024-05-01\n"])
def test_text_with_more_than_a_timestamp_is_not_timestamp_only(text, volatile_text):
    found = classify("n.txt", None, text.encode(), VOLATILE, volatile=volatile_text)
    assert (found.verdict, found.reason) == (USER, L3Reason.NEW_FILE)


def test_default_volatile_patterns_cover_every_epoch_precision(volatile_text):
    for digits in (10, 13, 16, 19):
        token = "1714557600123456789"[:digits]
        assert volatile_text.fullmatch(token), digits
    assert not volatile_text.fullmatch("17145576001")  # 11 digits: not an epoch


def test_a_masked_text_is_never_reused_for_another_pattern():
    """The judge keeps the last few masked texts.  Each is kept with its pattern itself, so
    no later pattern (another config) can be made at the same address and be answered with
    a text masked by the first."""
    stamp = b"2026-11-30T10:00:00Z"
    dates = compile_volatile([r"\d{4}-\d\d-\d\dT[\d:]+Z"])
    epochs = compile_volatile([r"\b\d{10}\b"])
    held = sys.getrefcount(dates)
    assert only_volatile_tokens(stamp, dates)
    assert sys.getrefcount(dates) == held + 1, "kept alive while its masks are kept"
    assert not only_volatile_tokens(stamp, epochs)
    assert only_volatile_tokens(stamp, dates)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 65_536])
def test_work_file_bytes_up_to_the_cap(tmp_path, size):
    from gitsieve.common.judge.worktree import read_work
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (tmp_path / "f").write_bytes(data)
    work = read_work(str(tmp_path / "f"), size_cap=65_536)
    assert (work.data, work.size, work.large_path) == (data, size, "")
    over = read_work(tmp_path / "f", size_cap=size - 1) if size else None
    assert over is None or (over.data, over.large_path) == (None, str(tmp_path / "f"))


def test_a_work_file_grown_since_its_size_was_taken_is_read_to_the_cap(tmp_path):
    """The first read is sized by fstat; the bytes appended after it are read as well,
    up to one past the cap (which makes it a large file)."""
    from gitsieve.common.judge.worktree import _read_up_to
    target = tmp_path / "growing.log"
    target.write_bytes(b"x" * 10)
    fd = os.open(target, os.O_RDONLY)
    try:
        with open(target, "ab") as more:
            more.write(b"y" * 5000)
        assert _read_up_to(fd, 11, 100_000) == b"x" * 10 + b"y" * 5000
        os.lseek(fd, 0, os.SEEK_SET)
        assert _read_up_to(fd, 11, 1001) == (b"x" * 10 + b"y" * 5000)[:1001]
    finally:
        os.close(fd)
