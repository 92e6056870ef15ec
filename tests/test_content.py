"""The content layer's pure rules: common.content.classify and its helpers."""
import hashlib
import json
import subprocess

import pytest

from gitsieve.common.judge.content import (
    SIZE_CAP,
    SYSTEM,
    UNCHANGED,
    USER,
    classify,
    git_blob_id,
    l1_action,
    strip_volatile,
)
from gitsieve.common.protocol.messages import Change

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
    assert (verdict.verdict, verdict.reason) == (UNCHANGED, "never committed")
    assert not verdict.commit


def test_deleted_committed_file_is_a_user_change():
    verdict = classify("a.txt", b"old\n", None, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, "deleted")
    assert verdict.commit


def test_new_file_is_a_user_change_even_if_it_is_json_with_volatile_keys():
    verdict = classify("s.json", None, as_json({"timestamp": 1}), VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, "new file")


def test_identical_bytes_are_unchanged():
    assert classify("a.txt", b"same", b"same", VOLATILE).verdict == UNCHANGED
    assert classify("s.json", b"{}", b"{}", VOLATILE).verdict == UNCHANGED


# ----- JSON ------------------------------------------------------------------------------
def test_timestamp_only_json_change_is_system_and_names_the_keys():
    head = as_json({"status": "ok", "last_update": 1, "timestamp": 2, "session_id": "a"})
    work = as_json({"status": "ok", "last_update": 9, "timestamp": 2, "session_id": "b"})
    verdict = classify("status.json", head, work, VOLATILE)
    assert verdict.verdict == SYSTEM
    assert verdict.reason == "only volatile keys changed: last_update, session_id"
    assert not verdict.commit


def test_nested_volatile_keys_in_lists_of_dicts_are_system():
    head = as_json({"agents": [{"name": "a", "timestamp": 1}, {"name": "b",
                                                             "meta": {"last_update": 1}}]})
    work = as_json({"agents": [{"name": "a", "timestamp": 7}, {"name": "b",
                                                             "meta": {"last_update": 8}}]})
    verdict = classify("ctx.json", head, work, VOLATILE)
    assert verdict.verdict == SYSTEM
    assert "timestamp" in verdict.reason and "last_update" in verdict.reason


def test_real_json_change_next_to_volatile_keys_is_user():
    head = as_json({"task": "write docs", "timestamp": 1})
    work = as_json({"task": "write tests", "timestamp": 2})
    verdict = classify("ctx.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, "JSON data changed")


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
    assert verdict.verdict == SYSTEM
    assert "formatting" in verdict.reason


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
    assert (verdict.verdict, verdict.reason) == (SYSTEM, "only volatile keys changed: "
                                                         "timestamp")
    head = b'{"s": "\\ud800", "timestamp": 1}'
    verdict = classify("s.json", head, head.replace(b"1}", b"2}"), VOLATILE)
    assert verdict.reason == "only volatile keys changed: timestamp"


def test_scalar_json_outside_json_files_is_text():
    # "1" and "2" parse as JSON numbers, but a .txt of numbers is text, judged as such
    assert classify("n.txt", b"1", b"2", VOLATILE).verdict == USER


def test_invalid_json_falls_back_to_text_rules():
    head = b'{"timestamp": 1, "v": 1}'
    work = b'{"timestamp": 2, "v": 1'  # truncated: not JSON any more
    verdict = classify("x.json", head, work, VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, "content changed")


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
    assert (verdict.verdict, verdict.reason) == (SYSTEM, "only volatile keys changed: "
                                                         "timestamp")
    changed = nested(900, 1).replace(b'"a":{"timestamp"', b'"b":{"timestamp"')
    assert classify("deep.json", nested(900, 1), changed, VOLATILE).verdict == USER


def test_non_utf8_json_file_is_text():
    verdict = classify("x.json", b'{"a": "\xff"}', b'{"a": "\xfe"}', VOLATILE)
    assert (verdict.verdict, verdict.reason) == (USER, "content changed")


# ----- logs ------------------------------------------------------------------------------
def test_append_only_log_growth_is_system():
    head = b"line 1\nline 2\n"
    verdict = classify("logs/agent.log", head, head + b"line 3\n", VOLATILE)
    assert verdict.verdict == SYSTEM
    assert verdict.reason == "log grew by 7 bytes (append-only)"


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
    assert capped.verdict == USER and "bytes only" in capped.reason
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
    change = Change("a", "write", 1, 0.0, 0.0, trail=({"layer": "L1", "verdict": "ALLOW"},))
    assert l1_action(change) == "ALLOW"
    assert l1_action(Change("a", "write", 1, 0.0, 0.0)) == "ANALYZE"
    assert l1_action(Change("a", "write", 1, 0.0, 0.0, trail=("junk", {"layer": "L1"}))) \
        == "ANALYZE"




# ----- issue 3: volatile text, junk, the user's own writes, masked digests ------------------
from gitsieve.common.config.loader import _SCHEMA  # noqa: E402
from gitsieve.common.judge.content import compile_volatile, masked_digest  # noqa: E402

VOLATILE_TEXT = compile_volatile(_SCHEMA[("filter", "text_volatile_patterns")][1])
T1, T2 = "2024-05-01T10:00:00.123+00:00", "2024-05-02T11:30:59.9Z"
U1, U2 = "0b8f6c1e-3d2a-4f5b-9c8d-7e6f5a4b3c2d", "9a1b2c3d-4e5f-4a6b-8c7d-6e5f4a3b2c1d"


@pytest.mark.parametrize("head, work", [
    (f"built {T1}\n", f"built {T2}\n"),
    (f"run {U1} ok\n", f"run {U2} ok\n"),
    ("epoch 1714557600\n", "epoch 1714557999.25\n"),
    ("at 10:00:01\n", "at 23:59:59.5\n"),
])
def test_text_differing_only_in_volatile_tokens_is_system(head, work):
    found = classify("status.txt", head.encode(), work.encode(), VOLATILE, volatile=VOLATILE_TEXT)
    assert (found.verdict, found.reason) == (SYSTEM, "only timestamp/uuid-like tokens changed")


def test_text_with_a_real_change_beside_a_timestamp_is_user():
    found = classify("s.txt", f"a {T1}\n".encode(), f"b {T2}\n".encode(), VOLATILE,
                     volatile=VOLATILE_TEXT)
    assert found.verdict == USER
    assert classify("s.txt", f"a {T1}".encode(), f"a {T2}".encode()).verdict == USER  # no patterns


def test_json_timestamp_value_under_a_non_volatile_key_is_system():
    head, work = as_json({"updated": T1, "n": 1}), as_json({"updated": T2, "n": 1})
    assert classify("a.json", head, work, VOLATILE, volatile=VOLATILE_TEXT).verdict == SYSTEM
    assert classify("a.json", head, as_json({"updated": T2, "n": 2}), VOLATILE,
                    volatile=VOLATILE_TEXT).verdict == USER


@pytest.mark.parametrize("name", [".a.swp", ".a.swx", "a~", "4913", ".#a", ".goutputstream-Q",
                                  "a.tmp", "a.bak", "a.orig"])
def test_editor_and_backup_junk_is_never_committed_even_new_or_by_the_user(name):
    for head in (None, b"old"):
        found = classify(f"dir/{name}", head, b"new", VOLATILE, user_writer=True)
        assert found.verdict == SYSTEM and "never committed" in found.reason


def test_a_user_writer_is_committed_even_for_timestamp_only_changes():
    head, work = f"at {T1}\n".encode(), f"at {T2}\n".encode()
    assert classify("m.md", head, work, VOLATILE, volatile=VOLATILE_TEXT,
                    user_writer=True).verdict == USER
    assert classify("m.md", head, head, VOLATILE, user_writer=True).verdict == UNCHANGED


def test_binary_changes_are_user_and_named_by_hash():
    found = classify("x.bin", b"\0a", b"\0b", VOLATILE, volatile=VOLATILE_TEXT)
    assert found.verdict == USER and "sha256" in found.reason


def test_masked_digest_ignores_volatile_tokens_and_keys_only():
    same = [masked_digest("s.md", f"x {T1}\n".encode(), VOLATILE, VOLATILE_TEXT),
            masked_digest("s.md", f"x {T2}\n".encode(), VOLATILE, VOLATILE_TEXT)]
    assert same[0] == same[1] and same[0] is not None
    assert masked_digest("s.md", b"y\n", VOLATILE, VOLATILE_TEXT) != same[0]
    assert masked_digest("a.json", as_json({"timestamp": 1, "k": 1}), VOLATILE) == \
        masked_digest("a.json", as_json({"k": 1, "timestamp": 2}), VOLATILE)
    assert masked_digest("b.bin", b"\0\1", VOLATILE) is None
    assert masked_digest("big.txt", b"x" * 10, VOLATILE, size_cap=5) is None
