"""Content layer (L3): handlers against a real git workspace, then real router + l3."""
from __future__ import annotations

import json
import os
import time

import pytest
import zmq

from conftest import FakeSocket, wait_for
from gitsieve.actors.content_layer import CatFileBatch, ContentLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, CommitReport, Decision

L1_STEP = {"layer": "L1", "verdict": "ANALYZE", "reason": "default", "rule": None}
L2_STEP = {"layer": "L2", "verdict": "UNKNOWN", "reason": "no autonomous writer seen",
           "technique": None, "pid": None, "cmdline": None, "confidence": 0.0}


def verdicts(status: dict) -> dict:
    return {key: count for key, count in status.items() if key.startswith("verdict_")}


def change(path: str, kind: str = "write", seq: int = 1) -> Change:
    return Change(path=path, kind=kind, seq=seq, epoch=1000.0, observed=time.time(),
                  trail=(L1_STEP, L2_STEP))


def status_json(timestamp: int, task: str = "write docs") -> str:
    return json.dumps({"task": task, "last_update": timestamp,
                       "agents": [{"name": "a", "timestamp": timestamp}]}, indent=2)


def commit_all(workspace, message: str = "user work") -> None:
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", message)


@pytest.fixture
def layer(workspace):
    """An l3 worker object on the workspace, its Decision output a fake socket."""
    made = ContentLayer(workspace.load(), instance=1)
    made.setup()
    made.decisions = FakeSocket()
    yield made
    made.shutdown()
    for sock in made._sockets:
        sock.close(linger=0)
    made.context.term()


def decide(layer: ContentLayer, path: str, kind: str = "write") -> Decision:
    before = len(layer.decisions.frames)
    layer.on_change(change(path, kind))
    [decision] = layer.decisions.messages()[before:]
    assert isinstance(decision, Decision)
    assert decision.path == path and decision.action == "ANALYZE"
    assert [step["layer"] for step in decision.trail] == ["L1", "L2", "L3"]
    return decision


def verdict_of(decision: Decision) -> tuple[str, str]:
    return decision.trail[-1]["verdict"], decision.trail[-1]["reason"]


# ----- handlers --------------------------------------------------------------------------
def test_timestamp_only_json_rewrite_is_dropped(workspace, layer):
    workspace.write(".claude/contexts/s.json", status_json(1))
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2))
    decision = decide(layer, ".claude/contexts/s.json")
    assert decision.commit is False
    assert verdict_of(decision) == ("SYSTEM", "only volatile keys changed: last_update, "
                                              "timestamp")


def test_real_json_edit_is_committed(workspace, layer):
    workspace.write(".claude/contexts/s.json", status_json(1))
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2, task="write tests"))
    decision = decide(layer, ".claude/contexts/s.json")
    assert decision.commit is True
    assert verdict_of(decision) == ("USER", "JSON data changed")


def test_new_deleted_and_untouched_files(workspace, layer):
    workspace.write("fresh.txt", "new\n")
    assert verdict_of(decide(layer, "fresh.txt")) == ("USER", "new file")
    os.unlink(workspace.path("README.md"))
    deleted = decide(layer, "README.md", kind="delete")
    assert (deleted.commit, deleted.kind) == (True, "delete")
    assert verdict_of(deleted) == ("USER", "deleted")
    assert verdict_of(decide(layer, "gone.txt", kind="delete")) == ("UNCHANGED",
                                                                    "never committed")
    workspace.path(".gitignore").touch()
    untouched = decide(layer, ".gitignore")
    assert untouched.commit is False and verdict_of(untouched)[0] == "UNCHANGED"


def test_append_only_log_is_dropped_and_rewritten_log_committed(workspace, layer):
    workspace.write("notes/agent.log", "one\ntwo\n")
    commit_all(workspace)
    workspace.write("notes/agent.log", "one\ntwo\nthree\n")
    assert verdict_of(decide(layer, "notes/agent.log"))[0] == "SYSTEM"
    workspace.write("notes/agent.log", "one\nTWO\n")
    assert verdict_of(decide(layer, "notes/agent.log")) == ("USER", "content changed")


def test_a_directory_or_fifo_at_the_path_is_user_and_never_blocks(workspace, layer):
    workspace.write("thing", "file\n")
    commit_all(workspace)
    os.unlink(workspace.path("thing"))
    workspace.path("thing").mkdir()
    assert verdict_of(decide(layer, "thing")) == ("USER", "is a directory now")
    os.mkfifo(workspace.path("pipe"))
    assert verdict_of(decide(layer, "pipe")) == ("USER", "not a regular file")


def test_names_with_spaces_and_newlines(workspace, layer):
    for name in ("dir with space/s s.json", "odd\nname.json"):
        workspace.write(name, status_json(1))
    commit_all(workspace)
    for name in ("dir with space/s s.json", "odd\nname.json"):
        workspace.write(name, status_json(5))
        assert verdict_of(decide(layer, name))[0] == "SYSTEM"
    assert layer.stats["head_fallbacks"] == 1  # only the newline name skipped cat-file


def test_symlink_is_compared_by_its_target(workspace, layer):
    os.symlink("README.md", workspace.path("link"))
    commit_all(workspace)
    assert verdict_of(decide(layer, "link"))[0] == "UNCHANGED"
    os.unlink(workspace.path("link"))
    os.symlink(".gitignore", workspace.path("link"))
    assert verdict_of(decide(layer, "link"))[0] == "USER"


def test_head_cache_follows_commits_made_outside_gitsieve(workspace, layer):
    workspace.write("s.json", status_json(1))
    commit_all(workspace)
    workspace.write("s.json", status_json(2))
    assert verdict_of(decide(layer, "s.json"))[0] == "SYSTEM"
    assert verdict_of(decide(layer, "s.json"))[0] == "SYSTEM"
    assert layer.stats["head_cache_hits"] == 1
    # the user commits a real edit with their own git: HEAD moves, the cache must not lie
    workspace.write("s.json", status_json(2, task="new task"))
    commit_all(workspace)
    assert verdict_of(decide(layer, "s.json"))[0] == "UNCHANGED"


def test_commit_report_drops_the_head_cache(workspace, layer):
    workspace.write("s.json", status_json(1))
    decide(layer, "s.json")
    assert layer.head_cache
    layer.on_commit(CommitReport(batch_ids=(1,), paths=("s.json",), commit="abc",
                                 pushed=True, error="", finished=time.time()))
    assert not layer.head_cache


def test_dead_cat_file_is_restarted(workspace, layer):
    workspace.write("a.txt", "a\n")
    commit_all(workspace)
    assert verdict_of(decide(layer, "a.txt"))[0] == "UNCHANGED"
    layer.head_reader.proc.kill()
    layer.head_reader.proc.wait()
    layer.drop_head_cache()
    assert verdict_of(decide(layer, "a.txt"))[0] == "UNCHANGED"
    assert layer.head_reader.starts == 2
    assert layer.stats["errors"] == 0


def test_large_files_are_compared_by_object_id(workspace, layer):
    layer.size_cap = layer.head_reader.size_cap = 100
    workspace.write("big.json", json.dumps({"timestamp": 1, "pad": "x" * 200}))
    commit_all(workspace)
    assert verdict_of(decide(layer, "big.json")) == (
        "UNCHANGED", "identical to HEAD (large file, same object id)")
    workspace.write("big.json", json.dumps({"timestamp": 2, "pad": "x" * 200}))
    assert verdict_of(decide(layer, "big.json")) == (
        "USER", "content changed (large file, object id differs)")
    workspace.write("big.json", "small now")
    assert verdict_of(decide(layer, "big.json"))[0] == "USER"
    os.unlink(workspace.path("big.json"))
    assert verdict_of(decide(layer, "big.json", kind="delete")) == ("USER", "deleted")


def test_cat_file_reader_reads_head_and_reports_missing(workspace):
    reader = CatFileBatch(workspace.root)
    try:
        blob = reader.read("README.md")
        assert blob.data == b"workspace\n" and blob.size == 10 and len(blob.oid) == 40
        assert reader.read("no/such/file") is None
        workspace.path("sub").mkdir()
        workspace.write("sub/x", "x")
        commit_all(workspace)
        assert reader.read("sub") is None  # a tree in HEAD, not a file version
        assert reader.read("sub/x").data == b"x"
    finally:
        reader.close()
    assert reader.proc is None


# ----- real processes --------------------------------------------------------------------
def recv(sock: zmq.Socket, timeout: float = 10.0):
    assert sock.poll(int(timeout * 1000)), "no message within the timeout"
    return messages.decode(sock.recv())


def test_real_l3_decides_by_content(workspace, actors):
    workspace.write(".claude/contexts/s.json", status_json(1))
    workspace.write("docs/plan.md", "plan\n")
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2))
    workspace.write("docs/plan.md", "better plan\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    decisions = context.socket(zmq.PULL)
    into_l3 = context.socket(zmq.PUSH)
    commits = context.socket(zmq.PUB)
    for sock in (decisions, into_l3, commits):
        sock.linger = 0
    try:
        decisions.bind(cfg.endpoints.decisions)
        commits.bind(cfg.endpoints.commits)
        into_l3.connect(cfg.endpoints.stage_in("l3"))
        actors("router", workspace.root)
        actors("content_layer", workspace.root, instance=1)

        into_l3.send(messages.encode(change(".claude/contexts/s.json", seq=1)))
        system = recv(decisions)
        assert (system.path, system.commit) == (".claude/contexts/s.json", False)
        assert system.trail[-1]["verdict"] == "SYSTEM"

        into_l3.send(messages.encode(change("docs/plan.md", seq=2)))
        user = recv(decisions)
        assert (user.path, user.commit) == ("docs/plan.md", True)
        step = user.trail[-1]
        assert {key: step[key] for key in ("layer", "verdict", "reason")} == {
            "layer": "L3", "verdict": "USER", "reason": "content changed"}
        assert len(step["masked"]) == 40  # the version's digest blind to volatile tokens

        report = CommitReport(batch_ids=(1,), paths=("docs/plan.md",), commit="0" * 40,
                              pushed=True, error="", finished=time.time())

        def report_seen() -> bool:  # PUB/SUB joins late: publish until it is heard
            commits.send(messages.encode(report))
            return control.request(cfg, "l3-01", "status").data["commit_reports"] > 0
        wait_for(report_seen, 20, 0.1, "l3 to hear a CommitReport")
        status = control.request(cfg, "l3-01", "status").data
        assert verdicts(status) == {"verdict_SYSTEM": 1, "verdict_USER": 1}
        assert status["head_cache_entries"] == 0
        assert status["cat_file_starts"] == 1
    finally:
        for sock in (decisions, into_l3, commits):
            sock.close(linger=0)
        context.term()
