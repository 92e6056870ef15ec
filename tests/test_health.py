"""Health monitor: verdicts from real git directories, and a real process publishing them."""
from __future__ import annotations

import os

import pytest
import zmq

from actors.health import Health
from common import config as config_mod
from common import control, messages
from common.messages import HealthStatus, Heartbeat
from tests.conftest import wait_for


@pytest.fixture
def health(workspace):
    workspace.config("[health]\ninterval = 0.3\n")
    actor = Health(workspace.load())
    yield actor
    actor.context.term()


def test_clean_workspace_is_ok(health):
    status = health.evaluate()
    assert status.ok and status.reasons == () and status.operation == ""
    assert status.free_mb > 0


def test_min_free_mb_huge_is_not_ok(workspace):
    workspace.config("[health]\nmin_free_mb = 1000000000000\n")
    actor = Health(workspace.load())
    try:
        status = actor.evaluate()
    finally:
        actor.context.term()
    assert not status.ok
    assert any("free disk" in reason for reason in status.reasons)


@pytest.mark.parametrize("marker, is_dir, operation", [
    ("MERGE_HEAD", False, "merge"),
    ("rebase-merge", True, "rebase"),
    ("rebase-apply", True, "rebase"),
    ("CHERRY_PICK_HEAD", False, "cherry-pick"),
    ("REVERT_HEAD", False, "revert"),
    ("BISECT_LOG", False, "bisect"),
])
def test_each_operation_marker(health, workspace, marker, is_dir, operation):
    target = workspace.path(".git") / marker
    if is_dir:
        target.mkdir()
    else:
        target.write_text(workspace.head() + "\n")
    status = health.evaluate()
    assert not status.ok
    assert status.operation == operation
    assert f"git {operation} in progress" in status.reasons


def test_am_is_told_apart_from_rebase(health, workspace):
    apply_dir = workspace.path(".git") / "rebase-apply"
    apply_dir.mkdir()
    (apply_dir / "applying").write_text("")
    assert health.evaluate().operation == "am"


def test_detached_head_is_not_ok(health, workspace):
    workspace.git("checkout", "-q", "--detach")
    status = health.evaluate()
    assert not status.ok and "HEAD is detached" in status.reasons
    assert status.operation == "detached HEAD"


def test_real_rebase_in_progress_detected(health, workspace):
    workspace.write("c.txt", "base\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "base")
    workspace.git("checkout", "-q", "-b", "side")
    workspace.write("c.txt", "side\n")
    workspace.git("commit", "-q", "-am", "side")
    workspace.git("checkout", "-q", "main")
    workspace.write("c.txt", "main\n")
    workspace.git("commit", "-q", "-am", "main")
    workspace.git("rebase", "side", check=False)  # conflicts and stops mid-rebase
    status = health.evaluate()
    assert not status.ok and status.operation == "rebase"
    workspace.git("rebase", "--abort")
    assert health.evaluate().ok


def test_heartbeat_aggregation_in_handler(health):
    health.on_heartbeat(Heartbeat(actor="l2-01", pid=4242, sent=123.0, state="running",
                                  stats={"messages_in": 7}))
    actors = health.evaluate().actors
    assert actors["l2-01"]["pid"] == 4242
    assert actors["l2-01"]["state"] == "running"
    assert actors["l2-01"]["last_seen"] == 123.0
    assert actors["l2-01"]["stats"] == {"messages_in": 7}
    assert actors["l2-01"]["alive"] is True


def test_real_process_publishes_verdicts_and_heartbeats(workspace, actors):
    workspace.config("[health]\ninterval = 0.3\n[runtime]\nheartbeat_interval = 0.2\n")
    config = workspace.load()
    config_mod.prepare_runtime_dir(config)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    push = context.socket(zmq.PUSH)
    push.linger = 0
    statuses: list[HealthStatus] = []

    def latest(predicate):
        def check():
            while sub.poll(20):
                statuses.append(messages.decode(sub.recv()))
            return bool(statuses) and predicate(statuses[-1])
        return check

    try:
        sub.connect(config.endpoints.health)
        actors("health", workspace.root)
        wait_for(latest(lambda s: s.ok), timeout=15, message="an ok verdict")
        push.connect(config.endpoints.heartbeat)
        push.send(messages.encode(Heartbeat(actor="watcher", pid=os.getpid(), sent=1.0,
                                            state="running", stats={"changes": 3})))
        wait_for(latest(lambda s: "watcher" in s.actors and "health" in s.actors),
                 timeout=10, message="heartbeats aggregated")
        assert statuses[-1].actors["watcher"]["stats"] == {"changes": 3}
        assert statuses[-1].actors["watcher"]["pid"] == os.getpid()

        (workspace.path(".git") / "MERGE_HEAD").write_text(workspace.head() + "\n")
        wait_for(latest(lambda s: not s.ok), timeout=10, message="merge noticed")
        assert statuses[-1].operation == "merge"
        reply = control.request(config, "health", "status")
        assert reply.ok and reply.data["health"]["ok"] is False
        assert reply.data["health"]["operation"] == "merge"

        (workspace.path(".git") / "MERGE_HEAD").unlink()
        wait_for(latest(lambda s: s.ok), timeout=10, message="ok again")
    finally:
        sub.close()
        push.close()
        context.term()
