"""Crash containment: kill -9 of each actor type under ``gitsieve run`` loses no edit, and
no restarted layer resurrects a stale verdict.

Periodic reconciling is switched off here (``reconcile_interval = 0``), so what rescues
the messages ZeroMQ dropped with the killed process is the watcher's reconcile after it
sees the restart in the health monitor's actors map.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import zmq

from conftest import (
    FakeSocket,
    Gitsieve,
    create_workspace,
    processes_mentioning,
    wait_for,
)
from gitsieve.actors.debouncer import Debouncer
from gitsieve.actors.watcher import Watcher
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Decision, HealthStatus

SYNC_TIMEOUT = 45.0
KILLED = ["watcher", "router", "l1", "l2-01", "l3-01", "debouncer", "executor", "health"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    base = tmp_path_factory.mktemp("recovery")
    ws = create_workspace(base)
    ws.patterns("ALLOW:docs/.*:User documentation\n")
    ws.config("""
        [debounce]
        allow = 0.2
        default = 0.3
        rules = []
        max_wait = 2
        [limits]
        max_commits_per_hour = 0
        max_commits_per_day = 0
        cooldown_seconds = 0
        [health]
        interval = 0.3
        fsck_interval = 0
        [runtime]
        heartbeat_interval = 0.2
        [watcher]
        reconcile_interval = 0
        [workers]
        l2 = 1
        l3 = 1
        [git]
        retry_backoff = 0.2
        push_backoff_max = 1
    """)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, base / "gitsieve.log")
    try:
        gitsieve.wait_running()
        yield ws, gitsieve
    finally:
        code, _ = gitsieve.stop()
        print(gitsieve.log()[-6000:])
    assert code == 0
    assert not processes_mentioning(str(ws.root)), "an actor outlived gitsieve"
    assert not (ws.root / ".git/index.lock").exists()


def remote_content(ws, rel: str) -> str | None:
    result = subprocess.run(["git", "show", f"main:{rel}"], cwd=ws.remote, capture_output=True)
    return result.stdout.decode() if result.returncode == 0 else None


def actor_status(cfg, actor_id: str) -> dict:
    """The actor's status; {} while it cannot answer (killed, restarting)."""
    try:
        reply = control.request(cfg, actor_id, "status", timeout=0.5)
    except control.Unreachable:
        return {}
    return reply.data if reply.ok else {}


def actor_pid(cfg, actor_id: str) -> int | None:
    status = actor_status(cfg, actor_id)
    return status.get("pid") if status.get("state") == "running" else None


@pytest.mark.parametrize("victim", KILLED)
def test_kill_9_with_a_burst_of_edits_in_flight_loses_nothing(running, victim):
    ws, gitsieve = running
    cfg = ws.load()
    old_pid = wait_for(lambda: actor_pid(cfg, victim), 20, message=f"{victim} running")
    # Half the burst is ALLOWed by L1; half is unmatched and crosses L2 and L3.
    expected = {}
    for index in range(30):
        folder = "docs" if index % 2 else "notes"
        expected[f"{folder}/{victim}-{index}.txt"] = f"edit {index} before {victim} died\n"

    def burst():
        for number, (rel, text) in enumerate(expected.items()):
            ws.write(rel, text)
            if number == 12:
                os.kill(old_pid, signal.SIGKILL)
            time.sleep(0.01)

    writer = threading.Thread(target=burst)
    writer.start()
    writer.join()
    new_pid = wait_for(lambda: (actor_pid(cfg, victim) or old_pid) != old_pid and
                       actor_pid(cfg, victim), 30, message=f"{victim} restarted")
    assert new_pid != old_pid
    if victim != "watcher":  # a watcher started afresh has no restart of its own to see
        # The watcher saw the restart in the health monitor's map and reconciled.
        wait_for(lambda: any(seen.startswith(f"{victim} (pid {old_pid} -> ") for seen in
                             actor_status(cfg, "watcher").get("restarts_seen", ())), 20,
                 message=f"the watcher to see {victim} restarted")
        wait_for(lambda: actor_status(cfg, "watcher").get("restart_reconciles", 0) >= 1, 20,
                 message="the watcher's reconcile after the restart")
    # Edits after the restart arrive too.
    ws.write(f"notes/{victim}-after.txt", "after the restart\n")
    expected[f"notes/{victim}-after.txt"] = "after the restart\n"
    for rel, text in expected.items():
        wait_for(lambda: remote_content(ws, rel) == text, SYNC_TIMEOUT, 0.1,
                 f"{rel} on the remote after kill -9 of {victim}")
    assert not (ws.root / ".git/index.lock").exists()


# ----- stale verdicts -------------------------------------------------------------------------
def decision(path, epoch, seq, commit=True):
    return Decision(path=path, kind="write", seq=seq, epoch=epoch, observed=time.time(),
                    commit=commit, action="ANALYZE")


def test_older_verdict_from_before_a_restart_is_dropped_real_process(workspace, actors):
    """A layer restarted (or backlogged) delivers a verdict from the watcher's previous run
    after the newer run's verdict for the same path: the debouncer drops it as stale."""
    workspace.config("[debounce]\ndefault = 0.2\nmax_wait = 1\nrules = []\n"
                     "[runtime]\nheartbeat_interval = 0.2\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    pull = context.socket(zmq.PULL)
    for sock in (push, pull):
        sock.linger = 0
    try:
        actors("debouncer", workspace.root)
        push.connect(cfg.endpoints.decisions)
        pull.connect(cfg.endpoints.batches)
        wait_for(lambda: actor_pid(cfg, "debouncer"), 15, message="debouncer running")
        old_epoch, new_epoch = 1000.0, 2000.0  # watcher runs before and after a restart
        # The new run's verdict: a system rewrite, not to commit.
        push.send(messages.encode(decision("status.json", new_epoch, 1, commit=False)))
        # The previous run's verdict arrives late (seq is larger, epoch older): stale.
        push.send(messages.encode(decision("status.json", old_epoch, 500, commit=True)))
        # And the mirror case on another path: new run says commit, old says skip.
        push.send(messages.encode(decision("user.txt", new_epoch, 2, commit=True)))
        push.send(messages.encode(decision("user.txt", old_epoch, 900, commit=False)))
        wait_for(lambda: control.request(cfg, "debouncer", "status").data["stale"] == 2,
                 10, message="two stale verdicts counted")
        batches = []
        deadline = time.monotonic() + 3  # several quiet periods
        while time.monotonic() < deadline:
            if pull.poll(100):
                batches.append(messages.decode(pull.recv()))
        assert [b.paths for b in batches] == [("user.txt",)]
    finally:
        push.close()
        pull.close()
        context.term()


def test_stale_verdict_handler_level(workspace):
    workspace.config("[debounce]\ndefault = 0\nmax_wait = 0\nrules = []\n")
    debouncer = Debouncer(workspace.load())
    debouncer.batches_out = FakeSocket()
    try:
        debouncer.on_decision(decision("a.txt", 2000.0, 1, commit=False))
        debouncer.on_decision(decision("a.txt", 1000.0, 7, commit=True))
        debouncer.on_tick(0)
        assert debouncer.batches_out.frames == [] and debouncer.stats["stale"] == 1
    finally:
        debouncer.close()


# ----- the watcher's restart detection, handler level ---------------------------------------
def health_with(actors: dict) -> HealthStatus:
    return HealthStatus(ok=True, reasons=(), free_mb=1e6, operation="", checked=time.time(),
                        actors=actors)


def test_watcher_schedules_reconcile_on_new_pid_reappearance_and_new_actor(workspace):
    watcher = Watcher(workspace.load())
    before = time.time() - 5.0
    try:
        watcher.on_health(health_with({"executor": {"pid": 10, "alive": True},
                                       "watcher": {"pid": os.getpid(), "alive": True}}))
        assert watcher.restart_reconcile_at is None  # nothing sent yet: nothing to lose
        watcher.first_sent = time.time()
        watcher.on_health(health_with({"executor": {"pid": 10, "alive": True}}))
        assert watcher.restart_reconcile_at is None  # nothing changed
        watcher.on_health(health_with({"executor": {"pid": 11, "alive": True}}))
        assert watcher.restart_reconcile_at is not None
        assert "executor (pid 10 -> 11)" in watcher.restarts_seen
        watcher.restart_reconcile_at = None
        watcher.on_health(health_with({"executor": {"pid": 11, "alive": False}}))
        assert watcher.restart_reconcile_at is None  # silent is not yet a restart
        watcher.on_health(health_with({"executor": {"pid": 11, "alive": True}}))
        assert watcher.restart_reconcile_at is not None  # came back
        watcher.restart_reconcile_at = None
        watcher.on_health(health_with({"executor": {"pid": 11},
                                       "l1": {"pid": 4, "started": before}}))
        assert watcher.restart_reconcile_at is None  # new to us, but there all along
        watcher.on_health(health_with({"executor": {"pid": 11}, "l3-02": {"pid": 5}}))
        assert watcher.restart_reconcile_at is not None  # new, start not known
        watcher.restart_reconcile_at = None
        watcher.on_health(health_with({"executor": {"pid": 11},
                                       "l3-01": {"pid": 6, "started": time.time()}}))
        assert watcher.restart_reconcile_at is not None  # started after our first change
        watcher.restart_reconcile_at = None
        watcher.on_health(health_with({"executor": "garbage", "l1": {"pid": "x"}}))
        assert watcher.restart_reconcile_at is None
        assert watcher.stats["bad_actor_entries"] == 2
    finally:
        watcher.shutdown()
        watcher.close()


def test_the_watcher_learns_of_router_losses_through_the_health_monitors_published_map(
        workspace):
    """The published map carries no stats: the router's count of lost changes must reach
    the watcher all the same, and so must when each actor started (so actors seen for the
    first time at startup, older than the watcher's first change, cause no reconcile)."""
    from gitsieve.actors.health import Health
    from gitsieve.common.protocol.messages import Heartbeat
    health, watcher = Health(workspace.load()), Watcher(workspace.load())

    def router_beat(lost: int) -> None:
        stats = {"uptime": 30.0, "changes_lost": lost,
                 "stages": {"l2": {"lost": lost, "dropped": 0}}}
        health.on_heartbeat(Heartbeat(actor="router", pid=4242, sent=time.time(),
                                      state="running", stats=stats))
    try:
        watcher.first_sent = time.time() - 1.0
        router_beat(0)
        watcher.on_health(health.evaluate())
        assert watcher.restart_reconcile_at is None  # started 30 s ago: no predecessor
        watcher.in_flight["a.txt"] = (1, time.monotonic())
        router_beat(3)
        watcher.on_health(health.evaluate())
        assert watcher.restart_reconcile_at is not None and not watcher.in_flight
        assert "router lost 3 change(s)" in watcher.restarts_seen
    finally:
        watcher.shutdown()
        health.close()
