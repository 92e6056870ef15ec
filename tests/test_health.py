"""Health monitor: verdicts from real git directories, and a real process publishing them."""
from __future__ import annotations

import os
import subprocess

import pytest
import zmq

from conftest import wait_for
from gitsieve.actors.health import Health
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.head import head_is_born
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import HealthStatus, Heartbeat


@pytest.fixture
def health(workspace):
    workspace.config("[health]\ninterval = 0.3\n")
    actor = Health(workspace.load())
    yield actor
    actor.close()


def test_clean_workspace_is_ok(health):
    status = health.evaluate()
    assert status.ok and status.reasons == () and status.operation == ""
    assert status.free_mb > 0


def test_min_free_mb_huge_is_not_ok(workspace):
    workspace.config("[health]\nmin_free_mb = 10000000\n")  # 10 TB: more than any disk here
    actor = Health(workspace.load())
    try:
        status = actor.evaluate()
    finally:
        actor.close()
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


def test_a_work_tree_never_checked_out_is_not_ok(health, workspace, tmp_path):
    """`git clone --no-checkout`: no index, so git status lists every committed file as a
    staged deletion, and gitsieve pushed an empty tree at its start."""
    workspace.git("push", "-q", "origin", "HEAD")
    (workspace.path(".git") / "index").unlink()
    status = health.evaluate()
    assert not status.ok and status.operation == "no checkout"
    assert "never checked out" in status.reasons[0]
    workspace.git("read-tree", "HEAD")
    assert health.evaluate().ok
    # a new repository with no commit and no index yet is fine: its first files sync
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "init", "-q", "-b", "main", str(fresh)], check=True)
    assert not head_is_born(fresh / ".git") and head_is_born(workspace.path(".git"))
    workspace.git("pack-refs", "--all")  # a packed branch is born too
    assert head_is_born(workspace.path(".git"))


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
    assert "stats" not in actors["l2-01"]  # published statuses stay small
    assert health.actor_table(with_stats=True)["l2-01"]["stats"] == {"messages_in": 7}
    assert actors["l2-01"]["alive"] is True


def test_a_git_operation_is_noticed_at_once_whatever_the_interval(workspace, actors):
    """The gate checks follow the git directory's changes (inotify): with a 60 s interval a
    merge starting, a detached HEAD and their ends still change the verdict at once."""
    workspace.config("[health]\ninterval = 60\n")
    config = workspace.load()
    actors("health", workspace.root)

    def verdict():
        try:
            return control.request(config, "health", "status", timeout=1).data["health"]
        except control.Unreachable:
            return None
    wait_for(lambda: (verdict() or {}).get("ok") is True, 15, message="an ok verdict")
    git_dir = workspace.path(".git")
    (git_dir / "MERGE_HEAD").write_text(workspace.head() + "\n")
    wait_for(lambda: verdict()["operation"] == "merge", 10, message="the merge noticed")
    (git_dir / "MERGE_HEAD").unlink()
    wait_for(lambda: verdict()["ok"], 10, message="ok again")
    workspace.git("checkout", "-q", "--detach")
    wait_for(lambda: verdict()["operation"] == "detached HEAD", 10,
             message="the detached HEAD noticed")
    workspace.git("checkout", "-q", "main")
    wait_for(lambda: verdict()["ok"], 10, message="ok on the branch again")


@pytest.fixture
def verdict_sockets(workspace):
    """(config, SUB for the verdicts, PUSH for heartbeats) of a fast health monitor the
    test starts; the sockets connect when the test says."""
    workspace.config("[health]\ninterval = 0.3\n[runtime]\nheartbeat_interval = 0.2\n")
    config = workspace.load()
    config_mod.prepare_runtime_dir(config)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    push = context.socket(zmq.PUSH)
    push.linger = 0
    try:
        yield config, sub, push
    finally:
        sub.close()
        push.close()
        context.term()


def test_real_process_publishes_verdicts_and_heartbeats(workspace, actors, verdict_sockets):
    config, sub, push = verdict_sockets
    statuses: list[HealthStatus] = []

    def latest(predicate):
        def check():
            while sub.poll(20):
                statuses.append(messages.decode(sub.recv()))
            return bool(statuses) and predicate(statuses[-1])
        return check

    sub.connect(config.endpoints.health)
    actors("health", workspace.root)
    wait_for(latest(lambda s: s.ok), timeout=15, message="an ok verdict")
    push.connect(config.endpoints.heartbeat)
    push.send(messages.encode(Heartbeat(actor="watcher", pid=os.getpid(), sent=1.0,
                                        state="running", stats={"changes": 3})))
    wait_for(latest(lambda s: "watcher" in s.actors and "health" in s.actors),
             timeout=10, message="heartbeats aggregated")
    assert "stats" not in statuses[-1].actors["watcher"]
    assert statuses[-1].actors["watcher"]["pid"] == os.getpid()

    (workspace.path(".git") / "MERGE_HEAD").write_text(workspace.head() + "\n")
    wait_for(latest(lambda s: not s.ok), timeout=10, message="merge noticed")
    assert statuses[-1].operation == "merge"
    reply = control.request(config, "health", "status")
    assert reply.ok and reply.data["health"]["ok"] is False
    assert reply.data["health"]["operation"] == "merge"

    (workspace.path(".git") / "MERGE_HEAD").unlink()
    wait_for(latest(lambda s: s.ok), timeout=10, message="ok again")


def test_an_unchanged_verdict_is_published_less_often_and_a_change_at_once(
        workspace, actors, verdict_sockets):
    """At rest the verdict was published every interval, waking the executor and the
    watcher each time: unchanged, it now comes up to ten intervals apart, each saying when
    the next is due; a new actor or a merge still goes out at the next check."""
    config, sub, push = verdict_sockets
    arrivals: list[tuple[float, HealthStatus]] = []

    def take(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sub.poll(20):
                arrivals.append((time.monotonic(), messages.decode(sub.recv())))

    sub.connect(config.endpoints.health)
    actors("health", workspace.root)
    wait_for(lambda: take(0.1) or any(s.ok for _, s in arrivals), timeout=15,
             message="an ok verdict")
    push.connect(config.endpoints.heartbeat)
    push.send(messages.encode(Heartbeat(actor="watcher", pid=os.getpid(), sent=1.0,
                                        state="running", interval=60.0)))
    wait_for(lambda: take(0.1) or "watcher" in arrivals[-1][1].actors, timeout=10,
             message="the new actor published")
    arrivals.clear()
    take(8.0)  # nothing changes: 26 verdicts at one per interval
    assert 2 <= len(arrivals) <= 12, [round(t, 2) for t, _ in arrivals]
    assert arrivals[-1][1].interval > 3 * 0.3, arrivals[-1][1]
    for (before, status), (after, _) in zip(arrivals, arrivals[1:]):
        assert after - before <= status.interval + 1.0  # each came when it said
    sent = time.monotonic()
    (workspace.path(".git") / "MERGE_HEAD").write_text(workspace.head() + "\n")
    wait_for(lambda: take(0.1) or not arrivals[-1][1].ok, timeout=10,
             message="the merge published")
    assert arrivals[-1][0] - sent < arrivals[-2][1].interval


# ----- recovery checks: fsck, stale index.lock, autonomous restart loops (issue 4) ----------
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

from gitsieve.common.git import integrity  # noqa: E402


def run_fsck(runner: integrity.FsckRunner) -> None:
    runner.next_run = 0.0
    runner.maybe_start(time.monotonic())
    runner._thread.join(30)


def hide_blob(workspace, rel: str):
    """Move the loose object of ``rel``'s committed blob away; return a function that
    puts it back."""
    blob = workspace.git("rev-parse", f"HEAD:{rel}").strip()
    path = workspace.path(".git/objects") / blob[:2] / blob[2:]
    hidden = path.with_name(path.name + ".hidden")
    path.rename(hidden)
    return lambda: hidden.rename(path)


def test_fsck_detects_a_missing_object_and_recovers(workspace):
    workspace.write("precious.txt", "data\n")
    workspace.git("add", "precious.txt")
    workspace.git("commit", "-q", "-m", "precious")
    workspace.config("[health]\nfsck_interval = 3600\n")
    actor = Health(workspace.load())
    try:
        run_fsck(actor.fsck)
        assert actor.fsck.ok is True and actor.evaluate().ok
        restore = hide_blob(workspace, "precious.txt")
        run_fsck(actor.fsck)
        status = actor.evaluate()
        assert actor.fsck.ok is False and not status.ok
        assert any(reason.startswith("git fsck failed") for reason in status.reasons)
        # A failure is re-checked sooner than the interval.
        assert actor.fsck.next_run - time.monotonic() <= integrity.FSCK_RETRY_AFTER_FAILURE
        restore()
        run_fsck(actor.fsck)
        assert actor.fsck.ok is True and actor.evaluate().ok
        assert actor.recovery_status()["fsck"]["runs"] == 3
    finally:
        actor.fsck.stop()
        actor.close()


def test_fsck_failure_in_a_real_process_pauses_and_resumes(workspace, actors):
    workspace.write("precious.txt", "data\n")
    workspace.git("add", "precious.txt")
    workspace.git("commit", "-q", "-m", "precious")
    workspace.config("[health]\ninterval = 0.3\nfsck_interval = 0.5\n"
                     "[runtime]\nheartbeat_interval = 0.2\n")
    config = workspace.load()

    def health_status():
        try:
            return control.request(config, "health", "status", timeout=0.5).data
        except control.Unreachable:
            return {}

    actors("health", workspace.root)
    wait_for(lambda: (health_status().get("fsck") or {}).get("ok") is True, 15,
             message="a passing fsck")
    restore = hide_blob(workspace, "precious.txt")
    try:
        wait_for(lambda: not (health_status().get("health") or {"ok": True})["ok"], 15,
                 message="fsck failure noticed")
        assert "fsck" in " ".join(health_status()["health"]["reasons"])
    finally:
        restore()
    wait_for(lambda: (health_status().get("health") or {}).get("ok") is True, 15,
             message="ok again after a passing fsck")


def test_stale_index_lock_is_reported_not_removed_by_default(workspace):
    # no fsck: a run in flight is a live git in the work tree, and the lock is then not stale
    workspace.config("[git]\nstale_lock_age = 60\n[health]\nfsck_interval = 0\n")
    actor = Health(workspace.load())
    lock = workspace.path(".git/index.lock")
    try:
        lock.write_text("")
        actor.run_recovery_checks(time.monotonic())
        assert actor.evaluate().ok  # young: another git may be about to remove it
        old = time.time() - 120
        os.utime(lock, (old, old))
        actor._next_lock_check = 0.0
        actor.run_recovery_checks(time.monotonic())
        status = actor.evaluate()
        assert not status.ok and any("stale .git/index.lock" in r for r in status.reasons)
        assert lock.exists()
    finally:
        actor.close()


def test_stale_index_lock_removed_only_when_configured_and_no_live_git(workspace):
    # No fsck: a run in flight is one more git in the workspace, and this test is about
    # the person's git alone.
    workspace.config("[git]\nstale_lock_age = 60\nremove_stale_locks = true\n"
                     "[health]\nfsck_interval = 0\n")
    actor = Health(workspace.load())
    lock = workspace.path(".git/index.lock")
    old = time.time() - 120
    lock.write_text("")
    os.utime(lock, (old, old))
    # A live git working in the workspace: the lock may be its own, so it stays.
    live_git = subprocess.Popen(["git", "cat-file", "--batch"], cwd=workspace.root,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: integrity.git_processes_in(workspace.root), 10,
                 message="the live git seen")
        actor.run_recovery_checks(time.monotonic())
        assert lock.exists() and actor.stale_lock == ""
        live_git.stdin.close()
        live_git.wait(10)

        deadline = time.monotonic() + 10
        while lock.exists() and time.monotonic() < deadline:
            actor._next_lock_check = 0.0
            actor.run_recovery_checks(time.monotonic())
            time.sleep(0.05)
        pids = set(integrity.git_processes_in(workspace.root))
        seen = [proc.info["cmdline"] for proc in psutil.process_iter(["cmdline"])
                if proc.pid in pids]
        assert not lock.exists(), f"stale lock kept; git seen in the workspace: {seen}"
        assert actor.recovery_status()["stale_locks_removed"] == 1
        assert actor.evaluate().ok
    finally:
        if live_git.poll() is None:
            live_git.kill()
            live_git.wait()
        actor.close()


def test_autonomous_restart_loop_is_reported_and_never_gates(workspace):
    tag = f"gitsieve-test-agent-{os.getpid()}"
    workspace.config(f'[filter]\nautonomous_processes = ["{tag}"]\n'
                     "[health]\nautonomous_restart_limit = 2\nautonomous_restart_window = 60\n")
    actor = Health(workspace.load())
    actor.autonomous.sample_every = 0.0
    started = []
    try:
        actor.run_recovery_checks(time.monotonic())  # baseline
        assert actor.recovery_status()["autonomous"]["looping"] == ""
        for _ in range(3):  # an agent that dies and is restarted, three times
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                                     tag], cwd=workspace.root)  # it works in the workspace
            started.append(proc)
            # listed with its own command line: between fork and exec it still has pytest's
            wait_for(lambda: any(p.pid == proc.pid and tag in (p.info["cmdline"] or [])
                                 for p in psutil.process_iter(["cmdline"])),
                     5, message="agent listed")
            actor.run_recovery_checks(time.monotonic())
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        info = actor.recovery_status()["autonomous"]
        assert info["new_in_window"] == 3
        assert "restarting in a loop" in info["looping"]
        assert actor.evaluate().ok  # reported only: the user's commits go on
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        actor.close()


def test_a_young_process_is_read_again_until_it_has_execd(workspace):
    """The scan keeps each pid's command line once the process is SETTLED_AGE old; one seen
    before it exec'd its program must still be recognised after it does."""
    tag = f"gitsieve-test-late-exec-{os.getpid()}"
    workspace.config(f'[filter]\nautonomous_processes = ["{tag}"]\n')
    actor = Health(workspace.load())
    detector = actor.autonomous
    detector.sample_every = 0.0
    becomes_agent = ("import os, sys, time; time.sleep(0.6); os.execv(sys.executable, "
                     "[sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[1][::-1]])")
    proc = subprocess.Popen([sys.executable, "-c", becomes_agent, tag[::-1]],
                            cwd=workspace.root)
    try:
        detector.sample(time.monotonic())  # baseline: not an agent yet
        assert proc.pid not in detector.known
        wait_for(lambda: tag in " ".join(psutil.Process(proc.pid).cmdline()), 10,
                 message="the program exec'd")
        detector.sample(time.monotonic())
        assert proc.pid in detector.known
        assert [pid for _, pid, _ in detector.starts] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
        actor.close()


def test_autonomous_processes_elsewhere_on_the_machine_are_not_this_workspaces_loop(
        workspace, tmp_path):
    """Issue 11: "restarting in a loop" appeared in a workspace with no agent, because the
    scan counted matching processes anywhere on the machine."""
    tag = f"gitsieve-test-elsewhere-{os.getpid()}"
    workspace.config(f'[filter]\nautonomous_processes = ["{tag}"]\n'
                     "[health]\nautonomous_restart_limit = 1\nautonomous_restart_window = 60\n")
    actor = Health(workspace.load())
    actor.autonomous.sample_every = 0.0
    started = []
    try:
        actor.run_recovery_checks(time.monotonic())
        for _ in range(3):
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                                     tag], cwd=tmp_path)
            started.append(proc)
            # listed with its own command line: between fork and exec it still has pytest's
            wait_for(lambda: any(p.pid == proc.pid and tag in (p.info["cmdline"] or [])
                                 for p in psutil.process_iter(["cmdline"])),
                     5, message="agent listed")
            actor.run_recovery_checks(time.monotonic())
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        info = actor.recovery_status()["autonomous"]
        assert info["new_in_window"] == 0 and info["looping"] == ""
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        actor.close()


def test_at_rest_checks_stretch_and_a_git_operation_or_a_restart_is_checked_at_once(workspace):
    """The checks themselves (not only the publishing) rest while the verdict stays the
    same; a git operation starting or an actor restarting is still checked at the round
    that sees it."""
    workspace.config("[health]\ninterval = 0.3\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    health = Health(cfg)
    checks: list[float] = []
    clock = [1000.0]
    evaluate = health.evaluate
    health.evaluate = lambda: checks.append(clock[0]) or evaluate()

    def ticks(seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            health.on_tick(clock[0])
            clock[0] += 0.1

    def checked_at_once(event) -> None:
        ticks(40.0)  # at rest again: the next check is ten intervals away
        at = clock[0]
        event()
        ticks(0.1)
        assert checks[-1] == at

    try:
        health.setup()
        assert health.git_dir_events is not None
        ticks(40.0)
        assert len(checks) < 30, len(checks)  # every 0.3 s: 133
        assert checks[-1] - checks[-2] >= 2.9  # ten intervals apart
        checked_at_once(lambda: health.on_heartbeat(Heartbeat(
            actor="l2-01", pid=4242, sent=time.time(), state="running")))
        assert "l2-01" in health.verdict.actors
        checked_at_once(lambda: health.on_heartbeat(Heartbeat(
            actor="l2-01", pid=4243, sent=time.time(), state="running")))
        assert health.verdict.actors["l2-01"]["pid"] == 4243

        def merge() -> None:
            (workspace.path(".git") / "MERGE_HEAD").write_text(workspace.head() + "\n")
            health.on_git_dir_changed()
        checked_at_once(merge)
        assert not health.verdict.ok
    finally:
        health.close()
