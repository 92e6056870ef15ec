"""Executor with real executor and health processes, and the rate limiter it uses.

The test plays the debouncer: it binds a PUSH at ``endpoints.batches`` to send Batches and
SUB-connects ``endpoints.commits`` to read the CommitReports.
"""
from __future__ import annotations

import dataclasses

import os
import subprocess
import time

import pytest
import zmq

from conftest import FakeSocket, wait_for
from gitsieve.actors.executor import Executor
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.head import file_clock_ns
from gitsieve.common.judge.limits import RUNAWAY_PATHS_KEPT, RateLimiter, RunawayGuard
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Batch, CommitReport, HealthStatus
from gitsieve.common.protocol.states import Hold, Why

BASE_CONFIG = """\
[health]
interval = 0.3
[runtime]
heartbeat_interval = 0.2
[git]
retry_backoff = 0.3
"""


class Harness:
    def __init__(self, workspace, actors, extra: str = ""):
        workspace.config(BASE_CONFIG + extra)
        self.workspace, self.actors = workspace, actors
        self.config = workspace.load()
        config_mod.prepare_runtime_dir(self.config)
        self.context = zmq.Context()
        self.push = self.context.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.bind(self.config.endpoints.batches)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        # The executor binds its report socket when it starts: the subscriber retries its
        # connection until then, and a report published before it connects is lost.
        self.sub.setsockopt(zmq.RECONNECT_IVL, 10)
        self._sub_events = self.sub.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sub.connect(self.config.endpoints.commits)
        self.reports: list[CommitReport] = []
        self.next_id = 1

    def start(self, *names):
        for name in names:
            self.actors(name, self.workspace.root)
        for name in names:
            wait_for(lambda: self.status(name), timeout=15, message=f"{name} control")
        if "executor" in names and self._sub_events is not None:
            assert self._sub_events.poll(15_000), "the report subscriber never connected"
            self.sub.disable_monitor()
            self._sub_events.close()
            self._sub_events = None
            time.sleep(0.05)  # the subscription itself travels after the connection

    def status(self, actor="executor") -> dict:
        try:
            reply = control.request(self.config, actor, "status", timeout=0.5)
        except control.Unreachable:
            return {}
        return reply.data if reply.ok else {}

    def send(self, *paths):
        batch = Batch(batch_id=self.next_id, paths=paths,
                      observed=tuple(time.time() for _ in paths), created=time.time())
        self.next_id += 1
        self.push.send(messages.encode(batch))
        return batch.batch_id

    def collect(self) -> list[CommitReport]:
        while self.sub.poll(20):
            self.reports.append(messages.decode(self.sub.recv()))
        return self.reports

    def wait_committed(self, path, timeout=20):
        wait_for(lambda: path in self.workspace.files_at(), timeout=timeout,
                 message=f"{path} committed")

    def close(self):
        if self._sub_events is not None:
            self._sub_events.close()
        self.push.close()
        self.sub.close()
        self.context.term()


@pytest.fixture
def harness(workspace, actors):
    made = []

    def make(extra=""):
        made.append(Harness(workspace, actors, extra))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_burst_coalesced_into_one_commit(harness, workspace):
    h = harness()
    names = [f"burst/file {i}.txt" for i in range(5)]
    for name in names:
        workspace.write(name, name)
    before = workspace.head()
    h.start("executor")  # no health monitor yet: everything is held
    ids = [h.send(name) for name in names[:3]] + [h.send(*names[3:])]
    wait_for(lambda: h.status().get("held") == 5, timeout=10, message="5 paths held")
    status = h.status()
    assert "health" in status["held_reason"] and status["commits"] == 0
    assert workspace.head() == before

    h.start("health")
    h.wait_committed(names[-1])
    wait_for(lambda: any(r.commit for r in h.collect()), timeout=10, message="report")
    assert workspace.commit_count() == 2  # the initial commit and one sync
    assert workspace.committed_paths_since(before) == set(names)
    report = next(r for r in h.reports if r.commit)
    assert report.commit == workspace.head()
    assert list(report.batch_ids) == ids
    assert set(report.paths) == set(names) and report.held == () and report.pushed
    wait_for(lambda: workspace.remote_head() == workspace.head(), timeout=10,
             message="pushed")
    status = h.status()
    assert status["held"] == 0 and status["commits"] == 1 and status["pushes"] == 1


def test_rate_limit_holds_then_commits_without_losing_paths(harness, workspace):
    # a cooldown long enough that a loaded machine still looks inside it (3 s ran out
    # before the look once, under CI: the reason was then rightly empty)
    h = harness("[limits]\ncooldown_seconds = 8\n")
    h.start("health", "executor")
    workspace.write("first.txt", "1\n")
    h.send("first.txt")
    h.wait_committed("first.txt")
    after_first = workspace.head()

    workspace.write("second.txt", "2\n")
    workspace.write("third.txt", "3\n")
    h.send("second.txt")
    h.send("third.txt")
    # Both held, once the first commit's job is over, by the rate limit (while that job
    # still pushes, they wait for it: "waiting for the commit being made now").
    held: list = []  # the status that showed both held: its reason, from the same look
    wait_for(lambda: held.append(h.status()) or (held[-1].get("held") == 2
                                                 and held[-1].get("hold") == Hold.RATE_LIMIT),
             timeout=10, message="2 paths held by the rate limit")
    assert "cooldown" in held[-1]["held_reason"]
    assert workspace.head() == after_first  # held, not committed, not dropped

    h.wait_committed("third.txt")
    assert workspace.committed_paths_since(after_first) == {"second.txt", "third.txt"}
    assert workspace.commit_count() == 3
    wait_for(lambda: h.status().get("held") == 0, timeout=10, message="nothing held")


def test_health_not_ok_holds_and_resumes(harness, workspace):
    merge_head = workspace.path(".git") / "MERGE_HEAD"
    merge_head.write_text(workspace.head() + "\n")
    h = harness()
    h.start("health", "executor")
    workspace.write("during-merge.txt", "x\n")
    before = workspace.head()
    h.send("during-merge.txt")
    wait_for(lambda: h.status().get("held") == 1 and "merge" in h.status()["held_reason"],
             timeout=10, message="held because of the merge")
    assert workspace.head() == before

    merge_head.unlink()
    h.wait_committed("during-merge.txt")
    assert workspace.committed_paths_since(before) == {"during-merge.txt"}


def test_push_failure_keeps_commit_and_push_is_retried(harness, workspace):
    hidden = workspace.remote.with_name("remote-away.git")
    h = harness()
    h.start("health", "executor")
    remote_before = workspace.remote_head()
    workspace.remote.rename(hidden)  # the remote becomes unreachable
    try:
        workspace.write("offline.txt", "x\n")
        h.send("offline.txt")
        wait_for(lambda: any(r.commit and not r.pushed for r in h.collect()), timeout=15,
                 message="a commit whose push failed")
        report = next(r for r in h.reports if r.commit)
        assert "push failed" in report.error
        assert report.commit == workspace.head()
        assert h.status()["push_pending"] is True
    finally:
        hidden.rename(workspace.remote)
    assert workspace.remote_head() == remote_before
    wait_for(lambda: workspace.remote_head() == workspace.head(), timeout=20,
             message="push retried")
    wait_for(lambda: h.status().get("push_pending") is False, timeout=10,
             message="push no longer pending")


# ----- the rate limiter --------------------------------------------------------------------
def test_rate_limiter_cooldown_hour_and_day():
    now = [100_000.0]
    limiter = RateLimiter(per_hour=2, per_day=3, cooldown=60, clock=lambda: now[0])
    assert limiter.wait_time() == 0
    limiter.record()
    assert limiter.wait_time() == 60 and "cooldown" in limiter.reason()
    now[0] += 60
    assert limiter.wait_time() == 0
    limiter.record()
    # Two in the last hour: wait until the first one is an hour old.
    assert limiter.wait_time() == pytest.approx(3600 - 60)
    assert "hourly" in limiter.reason()
    now[0] += 3600
    limiter.record()
    assert "daily" in limiter.reason()
    assert limiter.wait_time() == pytest.approx(86400 - 3660)
    now[0] += 86400
    assert limiter.wait_time() == 0 and limiter.reason() == ""


def test_rate_limiter_seeded_from_past_and_zero_means_no_limit():
    limiter = RateLimiter(per_hour=1, per_day=0, cooldown=0, clock=lambda: 5000.0,
                          past=[4000.0])
    assert limiter.wait_time() == pytest.approx(2600.0)
    unlimited = RateLimiter(per_hour=0, per_day=0, cooldown=0, clock=lambda: 5000.0,
                            past=[4999.0] * 100)
    assert unlimited.wait_time() == 0


# ----- handler level: the executor object with fake sockets ----------------------------------
def test_handler_branch_rule_keeps_paths_held_with_reason(workspace):
    workspace.config(BASE_CONFIG + "[limits]\ncooldown_seconds = 0\n")
    executor = Executor(workspace.load())
    executor.batches_in, executor.reports_out = FakeSocket(), FakeSocket()
    try:
        workspace.git("checkout", "-q", "-b", "feature")
        workspace.write("f.txt", "f\n")
        before = workspace.head()
        executor.on_batch(Batch(batch_id=7, paths=("f.txt",), observed=(1.0,), created=2.0))
        executor.on_tick(0)
        assert executor.held_reason.hold == Hold.NO_HEALTH_YET
        executor.on_health(HealthStatus(ok=True, reasons=(), free_mb=1e6, operation="",
                                        checked=time.time()))
        executor.on_tick(0)
        # Held with the branch as its reason: no attempt, no back-off, nothing pushed.
        assert executor.held == {"f.txt": 1.0} and executor.stats["attempts"] == 0
        assert executor.held_reason == Why(
            Hold.BRANCH, "on branch 'feature', configured for 'main'")
        assert executor.explain_paths(["f.txt"])["paths"]["f.txt"]["hold"] == Hold.BRANCH
        assert executor.reports_out.frames == [] and workspace.head() == before
        # Back on the configured branch, the path is committed at once.
        workspace.git("checkout", "-q", "main")
        executor.on_tick(0)
        assert executor.held == {} and executor.stats["commits"] == 1
        assert "f.txt" in workspace.files_at()
        assert executor.extra_status()["pushes"] == 1
    finally:
        executor.close()


# ----- recovery (issue 4): push back-off, commits going on, runaway cap, non-blocking retry --
def ok_health() -> HealthStatus:
    return HealthStatus(ok=True, reasons=(), free_mb=1e6, operation="", checked=time.time())


def test_handler_status_says_why_paths_wait_before_the_next_tick(workspace):
    """A status served in the round that brought paths, before that round's tick, said
    they were held with the last tick's reason: after a commit, nothing held (empty), though
    the cooldown holds them (the rate-limit test failed so now and then)."""
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 30\n")
    try:
        workspace.write("first.txt", "1\n")
        executor.on_batch(Batch(batch_id=1, paths=("first.txt",), observed=(1.0,),
                                created=2.0))
        executor.on_tick(0)
        executor.on_tick(0)
        assert executor.stats["commits"] == 1 and not executor.held
        workspace.write("second.txt", "2\n")
        executor.on_batch(Batch(batch_id=2, paths=("second.txt",), observed=(3.0,),
                                created=4.0))
        status = executor.extra_status()  # this round's tick has not run yet
        assert status["held"] == 1 and status["hold"] == Hold.RATE_LIMIT, status
        assert "cooldown" in status["held_reason"], status
        assert executor.explain_paths(["second.txt"])["paths"]["second.txt"]["hold"] \
            == Hold.RATE_LIMIT
    finally:
        executor.close()


def test_handler_a_verdict_holds_for_three_of_the_intervals_it_announces(workspace):
    """At rest the health monitor publishes an unchanged verdict up to ten intervals apart
    and says so: the executor holds it for three of those (plus 2 s), not for three
    configured intervals, and a verdict older than that still holds commits."""
    workspace.config(BASE_CONFIG.replace("[health]\ninterval = 0.3", "[health]\ninterval = 2"))
    executor = Executor(workspace.load())
    executor.batches_in, executor.reports_out = FakeSocket(), FakeSocket()
    now = [1000.0]
    executor.clock = lambda: now[0]
    try:
        executor.on_health(dataclasses.replace(ok_health(), interval=20.0))
        now[0] += 3 * 20.0 + 1.0  # past three configured intervals, within three announced
        assert executor.blocker(now[0]) == (None, 0.0)
        now[0] += 2.0
        assert executor.blocker(now[0])[0] == Why(Hold.HEALTH_STALE)
        executor.on_health(ok_health())  # announcing nothing: the configured interval
        now[0] += 3 * 2.0 + 2.5
        assert executor.blocker(now[0])[0] == Why(Hold.HEALTH_STALE)
    finally:
        executor.close()


def handler_executor(workspace, extra: str = "") -> Executor:
    workspace.config(BASE_CONFIG + extra)
    executor = Executor(workspace.load())
    executor.batches_in, executor.reports_out = FakeSocket(), FakeSocket()
    executor.on_health(ok_health())
    return executor


def test_handler_push_backoff_2_4_6_capped_and_commits_continue(workspace):
    executor = handler_executor(workspace, "push_backoff_max = 5\n[limits]\n"
                                "cooldown_seconds = 0\n")
    now = [1000.0]
    executor.clock = lambda: now[0]
    hidden = workspace.remote.with_name("away.git")
    workspace.remote.rename(hidden)
    try:
        executor.on_health(ok_health())
        delays = []
        for index in range(4):
            workspace.write(f"f{index}.txt", f"{index}\n")
            executor.on_batch(Batch(batch_id=index, paths=(f"f{index}.txt",),
                                    observed=(1.0,), created=1.0))
            executor.on_tick(0)
            assert executor.held == {}, executor.held_reason  # committed locally
            if index == 0:
                assert executor.push_failures == 1
            delays.append(round(executor.push_retry_at - now[0], 3))
            # The push back-off has not expired: the next commit makes no push attempt.
            now[0] += 0.5
            executor.on_health(ok_health())
        assert executor.stats["commits"] == 4 and executor.push_failures == 1
        assert executor.push_pending
        # Now let each back-off expire: the retries wait 2, 4, then the cap of 5 s.
        waits = [delays[0]]
        for _ in range(3):
            now[0] = executor.push_retry_at
            executor.on_health(ok_health())
            executor.on_tick(0)
            waits.append(round(executor.push_retry_at - now[0], 3))
        assert waits == [2.0, 4.0, 5.0, 5.0]
        assert executor.current_reason(now[0]).hold == Hold.PUSH_BACKOFF
    finally:
        hidden.rename(workspace.remote)
    now[0] = executor.push_retry_at
    executor.on_health(ok_health())
    executor.on_tick(0)
    assert not executor.push_pending and workspace.remote_head() == workspace.head()
    executor.close()


def test_the_runaway_cap_counts_commits_per_path_within_its_window():
    guard = RunawayGuard(limit=3, window=100.0, clock=lambda: 0.0)
    guard.record(["loop.json", "once.txt"], moment=0.0)
    guard.record(["loop.json"], moment=10.0)
    assert guard.wait_time("loop.json", now=20.0) == 0.0  # two commits: not capped yet
    guard.record(["loop.json"], moment=30.0)
    # the third commit within 100 s caps it until the oldest of its last three leaves
    assert guard.wait_time("loop.json", now=40.0) == pytest.approx(60.0)
    assert guard.runaways(now=40.0) == {"loop.json": 3}
    assert guard.wait_time("once.txt", now=40.0) == 0.0
    guard.record(["loop.json"], moment=101.0)  # allowed again: now its last three count
    assert guard.wait_time("loop.json", now=102.0) == pytest.approx(8.0)
    assert guard.wait_time("loop.json", now=111.0) == 0.0
    assert guard.runaways(now=111.0) == {}
    assert guard.wait_time("never.txt") == 0.0
    assert RunawayGuard(limit=0, window=100.0).wait_time("loop.json") == 0.0
    five = RunawayGuard(limit=5, window=100.0)
    for moment in range(7):
        five.record(["busy.json"], moment=float(moment))
        # capped from its fifth commit on, until the fifth newest leaves the window
        expected = moment - 4 + 100.0 - 7.0 if moment >= 4 else 0.0
        assert five.wait_time("busy.json", now=7.0) == pytest.approx(expected)


def test_the_runaway_cap_forgets_paths_once_their_window_is_over():
    """A dirty start commits 10,000 paths once: they are forgotten after the window, and
    meanwhile each answer does not walk the others."""
    guard = RunawayGuard(limit=2, window=60.0)
    guard.record([f"data/f{i}" for i in range(10_000)], moment=0.0)
    guard.record(["data/f7"], moment=30.0)
    assert len(guard._times) == 10_000
    guard.record(["status.json"], moment=61.0)
    assert set(guard._times) == {"data/f7", "status.json"}
    assert guard.wait_time("data/f7", now=61.0) == 0.0  # its first commit left the window
    guard.record(["status.json"], moment=200.0)
    assert set(guard._times) == {"status.json"}
    capped = RunawayGuard(limit=2, window=3600.0)
    capped.record([f"data/f{i}" for i in range(RUNAWAY_PATHS_KEPT)], moment=0.5)
    capped.record(["loop.json"], moment=1.0)
    capped.record(["loop.json"], moment=2.0)
    # at the cap the path committed longest ago goes; the one committed last stays capped
    assert len(capped._times) == RUNAWAY_PATHS_KEPT and "data/f0" not in capped._times
    assert capped.wait_time("loop.json", now=3.0) == pytest.approx(3598.0)


def test_handler_runaway_path_is_capped_visible_and_never_dropped(workspace):
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n"
                                "max_commits_per_hour = 0\nmax_commits_per_day = 0\n"
                                "runaway_commits_per_hour = 2\n")
    try:
        for round_number in range(3):
            workspace.write("status.log", f"rewrite {round_number}\n")
            executor.on_batch(Batch(batch_id=round_number, paths=("status.log",),
                                    observed=(1.0,), created=1.0))
            executor.on_tick(0)
        assert executor.stats["commits"] == 2
        assert executor.held == {"status.log": 1.0}  # held, not dropped
        assert executor.held_reason.hold == Hold.RUNAWAY
        assert executor.recovery_status()["runaways"] == {"status.log": 2}
        # Other paths still commit while the runaway waits.
        workspace.write("user.txt", "mine\n")
        executor.on_batch(Batch(batch_id=9, paths=("user.txt",), observed=(1.0,),
                                created=1.0))
        executor.on_tick(0)
        assert "user.txt" in workspace.files_at() and "status.log" in executor.held
        assert workspace.show("HEAD:status.log") == "rewrite 1\n"
        # When the window lets it in again, its latest content is committed.
        executor.runaway.clock = lambda: time.time() + 3601
        executor.on_tick(0)
        assert executor.held == {}
        assert workspace.show("HEAD:status.log") == "rewrite 2\n"
    finally:
        executor.close()


def test_handler_a_persons_edit_beside_an_agents_backlog_goes_in_a_commit_of_its_own(
        workspace):
    """Unprivileged, nothing names the agent: its thousands of new files and a person's
    edit reach the executor alike.  The quiet area's path commits first, on its own, and
    the backlog follows in the next commit: none is lost."""
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n")
    try:
        burst = [f"agent_out/run/out{number:04d}.json" for number in range(400)]
        for path in burst:
            workspace.write(path, "{}\n")
        workspace.write("notes.md", "my line\n")
        executor.on_batch(Batch(batch_id=1, paths=tuple(burst[:200]), observed=(1.0,) * 200,
                                created=1.0))
        executor.on_batch(Batch(batch_id=2, paths=("notes.md", *burst[200:]),
                                observed=(1.0,) * 201, created=1.0))
        executor.on_tick(0)
        assert workspace.git("show", "--name-only", "--format=", "HEAD").split() == \
            ["notes.md"]
        assert len(executor.held) == 400
        executor.on_tick(0)
        assert executor.held == {}
        assert set(burst) <= set(workspace.files_at())
        assert workspace.remote_head() == workspace.head()
    finally:
        executor.close()


def test_handler_lock_retry_is_scheduled_not_slept(workspace):
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n")
    slept = []
    executor.committer.sleep = slept.append
    lock = workspace.path(".git/index.lock")
    try:
        lock.write_text("")
        workspace.write("a.txt", "a\n")
        executor.on_batch(Batch(batch_id=1, paths=("a.txt",), observed=(1.0,), created=1.0))
        executor.on_tick(0)
        assert slept == []  # the loop never slept inside the commit
        assert executor.held == {"a.txt": 1.0}
        assert executor.held_reason.hold == Hold.COMMIT_BACKOFF
        executor.on_tick(0)  # the push check the first look at the refs asked for
        assert not executor.push_pending
        assert 0 < executor.wakeup_in() <= 1.5 * 0.3  # jittered first back-off
        first = executor.retry_at
        executor.retry_at = 0.0
        executor.on_tick(0)
        assert executor.failures == 2 and executor.retry_at > first - 1  # backing off more
        lock.unlink()
        executor.retry_at = 0.0
        executor.on_tick(0)
        assert executor.held == {} and "a.txt" in workspace.files_at()
    finally:
        executor.close()


# ----- issues 8, 11, 14: git work off the loop, per-path holds, user-written paths ---------
def test_control_and_heartbeats_are_served_while_git_works(harness, workspace, tmp_path):
    """Issue 11: while a large file was committed the executor did not answer its control
    socket for 10-20 s.  Here git is made slow (faulty-git sleeps in hash-object): status
    and explain are answered meanwhile, the health monitor sees no restart, and the commit
    then completes."""
    from conftest import faulty_git
    env, rules = faulty_git(tmp_path, "^hash-object sleep-before:6 1\n")
    h = harness()
    h.start("health")
    h.actors("executor", workspace.root, env=env)
    wait_for(lambda: h.status(), timeout=15, message="executor control")
    workspace.write("big.bin", "x" * 100_000)
    before = workspace.head()
    h.send("big.bin")
    log = rules.with_name(rules.name + ".log")
    wait_for(lambda: log.exists() and log.read_text(), timeout=15, message="git slowed")
    workspace.write("meanwhile.txt", "sent while big.bin is committed\n")
    h.send("meanwhile.txt")
    answered, reasons = [], []
    while len(answered) < 4:  # git sleeps 6 s: the loop must answer meanwhile
        reply = control.request(h.config, "executor", "status", timeout=1.0)
        answered.append(reply.data["busy"])
        reasons.append((reply.data["held"], reply.data["hold"], reply.data["held_reason"]))
        explained = control.request(h.config, "executor", "explain", {"paths": ["big.bin"]},
                                    timeout=1.0).data["paths"]["big.bin"]
        time.sleep(0.2)
    assert workspace.head() == before  # still hashing
    assert all(busy and busy["kind"] == "commit" for busy in answered), answered
    assert explained["held"] and explained["held_reason"] == "being committed now"
    # the path sent meanwhile is held with a reason, never beside an empty one
    assert reasons[-1] == (2, Hold.COMMITTING, "waiting for the commit being made now"), \
        reasons
    # the same loop sends the heartbeats: the health monitor never saw it fall silent
    restarts = control.request(h.config, "health", "status", timeout=1.0).data["restarts"]
    assert restarts.get("executor", 0) == 0
    h.wait_committed("big.bin", timeout=20)
    h.wait_committed("meanwhile.txt", timeout=20)
    wait_for(lambda: h.status().get("busy") is None and h.status().get("held") == 0,
             timeout=10, message="job finished")


def stamped_while_hashed(workspace, monkeypatch, same_tick: bool = False):
    """An executor on a test clock (at 1000) whose committer, once it has hashed shared.md,
    sees the agent stamp it ("updated: 2"); with ``same_tick``, the stamp keeps the file's
    mtime, as a rewrite in the same clock tick does.  Returns the executor and the clock."""
    from gitsieve.common.git.committer import Committer
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n")
    now = [1000.0]
    executor.clock = lambda: now[0]
    executor.on_health(ok_health())  # fresh by the test's clock, whatever the machine's uptime
    path = workspace.root / "shared.md"
    real = Committer._hashed
    rewrites = [1]

    def hashed_then_stamped(self, paths, write):
        oids = real(self, paths, write)
        if rewrites and "shared.md" in paths:
            rewrites.pop()
            stamp = path.stat().st_mtime_ns
            workspace.write("shared.md", "notes\nuser line\nupdated: 2\n")  # the agent
            if same_tick:
                os.utime(path, ns=(stamp, stamp))
        return oids
    monkeypatch.setattr(Committer, "_hashed", hashed_then_stamped)
    return executor, now


def test_handler_a_file_rewritten_while_committed_is_tried_again_within_seconds(
        workspace, monkeypatch):
    """An agent stamping the file a person just changed, as gitsieve commits it: the
    version read is held (changed while committed), and the agent's rewrite brings no Batch
    (L2 drops it). The person's change was tried again only after HOLD_RETRY, a minute
    (test_attribution_e2e[fanotify] on two workers); now after about a second."""
    executor, now = stamped_while_hashed(workspace, monkeypatch)
    try:
        workspace.write("shared.md", "notes\nuser line\nupdated: 1\n")  # the person
        executor.on_batch(Batch(batch_id=1, paths=("shared.md",), observed=(1.0,),
                                created=1.0))
        executor.on_tick(0)
        assert executor.path_holds["shared.md"].hold is Hold.CHANGED_WHILE_COMMITTED
        assert "shared.md" not in workspace.files_at()
        now[0] += 0.5
        executor.on_tick(0)
        assert "shared.md" in executor.path_holds  # not at once: it may be mid-rewrite
        now[0] += 1.0
        executor.on_tick(0)
        assert executor.held == {} and executor.path_holds == {}
        assert workspace.show("HEAD:shared.md") == "notes\nuser line\nupdated: 2\n"
    finally:
        executor.close()


def test_handler_a_same_size_rewrite_in_the_tick_it_was_read_in_is_not_committed_as_read(
        workspace, monkeypatch):
    """File times move in ticks of a few milliseconds: an agent's same-size rewrite in the
    tick the person's version was read in keeps inode, mtime and size, and the version
    read was committed though the file had changed under it (git's "racy clean"). A file
    written in the tick its signature was taken in is now held and looked at again."""
    executor, now = stamped_while_hashed(workspace, monkeypatch, same_tick=True)
    path = workspace.root / "shared.md"
    try:
        workspace.write("shared.md", "notes\nuser line\nupdated: 1\n")  # the person
        in_this_tick = file_clock_ns() + 10**9  # stays "now" for the whole round
        os.utime(path, ns=(in_this_tick, in_this_tick))
        executor.on_batch(Batch(batch_id=1, paths=("shared.md",), observed=(1.0,),
                                created=1.0))
        executor.on_tick(0)
        assert executor.path_holds["shared.md"].hold is Hold.CHANGED_WHILE_COMMITTED
        assert "shared.md" not in workspace.files_at()
        os.utime(path, ns=(in_this_tick - 10**10,) * 2)  # that tick is long past
        now[0] += 1.5
        executor.on_tick(0)
        assert executor.held == {} and executor.path_holds == {}
        assert workspace.show("HEAD:shared.md") == "notes\nuser line\nupdated: 2\n"
    finally:
        executor.close()


def test_handler_a_partly_staged_path_is_held_alone_and_retried_when_the_index_changes(
        workspace):
    """Per-path holds: the person's partial staging holds that path only, with its own
    reason in explain; it is tried again when the index changes."""
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n")
    try:
        lines = [f"line {number}\n" for number in range(1, 21)]
        workspace.write("partial.txt", "".join(lines))
        workspace.git("add", "partial.txt")
        workspace.git("commit", "-q", "-m", "base")
        lines[0], lines[-1] = "first hunk\n", "second hunk\n"
        workspace.write("partial.txt", "".join(lines))
        import subprocess
        subprocess.run(["git", "add", "-p", "--", "partial.txt"], cwd=workspace.root,
                       input="y\nn\n", text=True, check=True, capture_output=True)
        workspace.write("other.txt", "other\n")
        executor.on_batch(Batch(batch_id=1, paths=("partial.txt", "other.txt"),
                                observed=(1.0, 1.0), created=1.0))
        executor.on_tick(0)
        assert "other.txt" in workspace.files_at()
        assert executor.held == {"partial.txt": 1.0}
        assert executor.path_holds == {"partial.txt": Why(Hold.STAGED_BY_YOU)}
        explained = executor.explain_paths(["partial.txt"])["paths"]["partial.txt"]
        assert explained["hold"] == Hold.STAGED_BY_YOU and "staged by you" in \
            explained["held_reason"]
        assert executor.held_paths()["reasons"]["partial.txt"]["hold"] == Hold.STAGED_BY_YOU
        attempts = executor.stats["attempts"]
        executor.on_tick(0)
        assert executor.stats["attempts"] == attempts  # nothing changed: not tried again
        workspace.git("commit", "-q", "-m", "my hunk")  # the index (and HEAD) moves
        executor.on_tick(0)
        assert executor.held == {} and executor.path_holds == {}
        assert workspace.show("HEAD:partial.txt").endswith("second hunk\n")
    finally:
        executor.close()


def test_handler_runaway_cap_never_holds_a_change_the_person_wrote(workspace):
    """Issue 8: changes attributed to the person are never held by the runaway cap."""
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n"
                                "max_commits_per_hour = 0\nmax_commits_per_day = 0\n"
                                "runaway_commits_per_hour = 2\n")
    try:
        for round_number in range(4):
            workspace.write("notes.md", f"my edit {round_number}\n")
            executor.on_batch(Batch(batch_id=round_number, paths=("notes.md",),
                                    observed=(1.0,), created=1.0,
                                    user_written=("notes.md",)))
            executor.on_tick(0)
            assert executor.held == {}, executor.held_reason
        assert workspace.show("HEAD:notes.md") == "my edit 3\n"
        assert executor.stats["commits"] == 4
        # the same path rewritten by someone not known to be the person is capped
        workspace.write("notes.md", "rewritten by a process\n")
        executor.on_batch(Batch(batch_id=9, paths=("notes.md",), observed=(1.0,),
                                created=1.0))
        executor.on_tick(0)
        assert executor.held == {"notes.md": 1.0}
        assert executor.held_reason.hold == Hold.RUNAWAY
        # ... until the person writes it again
        executor.on_batch(Batch(batch_id=10, paths=("notes.md",), observed=(1.0,),
                                created=1.0, user_written=("notes.md",)))
        executor.on_tick(0)
        assert executor.held == {}
    finally:
        executor.close()


def test_handler_the_persons_own_commits_are_pushed(workspace):
    """Issue 11: a user's own commit was pushed only with gitsieve's next commit."""
    executor = handler_executor(workspace)
    try:
        executor.on_tick(0)
        assert not executor.push_pending  # nothing ahead at start
        workspace.write("mine.txt", "mine\n")
        workspace.git("add", "mine.txt")
        workspace.git("commit", "-q", "-m", "mine")
        executor.on_tick(0)  # HEAD moved: noticed by stat, pushed
        assert workspace.remote_head() == workspace.head()
        assert not executor.push_pending and executor.stats["pushes"] == 1
        executor.on_tick(0)
        assert executor.stats["pushes"] == 1 and not executor.push_pending
    finally:
        executor.close()


def test_handler_a_commit_made_while_a_push_runs_is_pushed_too(workspace):
    """The push job may read HEAD just before the person's commit lands; the loop saw the
    refs move meanwhile, so another look is due (a flaky test found it)."""
    executor = handler_executor(workspace)
    original = executor.committer.push

    def push_then_the_person_commits(*args, **kwargs):
        outcome = original(*args, **kwargs)
        if not workspace.path("mine.txt").exists():
            workspace.write("mine.txt", "mine\n")
            workspace.git("add", "mine.txt")
            workspace.git("commit", "-q", "-m", "mine")
            executor.watch_refs(executor.clock())  # what the loop does while a job runs
        return outcome
    executor.committer.push = push_then_the_person_commits
    try:
        executor.on_tick(0)  # the first look at the refs: a push check
        assert executor.push_pending  # the refs moved while it ran
        executor.on_tick(0)
        assert workspace.remote_head() == workspace.head() and not executor.push_pending
    finally:
        executor.close()


def test_a_backlog_behind_a_running_commit_has_its_objects_written_meanwhile(workspace):
    """While a commit runs, a backlog of at least WRITE_AHEAD_MIN waiting paths has its
    blobs written (one process), so the next commit finds them written; a few waiting
    paths (a person's edit) start nothing, and paths already asked for are not again."""
    import subprocess
    from gitsieve.actors.executor import WRITE_AHEAD_MIN, Job
    executor = Executor(workspace.load())
    running = [f"running/{n}.txt" for n in range(3)]
    waiting = [f"waiting/{n:03d}.txt" for n in range(WRITE_AHEAD_MIN)]
    for path in running + waiting:
        workspace.write(path, f"content of {path}\n")
    executor.job = Job(paths=running)
    for path in running + waiting[:5]:
        executor.held[path] = time.time()
    executor.write_waiting_objects()
    assert executor._writing_ahead is None  # five waiting: not worth a process
    for path in waiting:
        executor.held[path] = time.time()
    executor.write_waiting_objects()
    executor._writing_ahead.join(30)
    assert executor.stats["objects_written_ahead"] == WRITE_AHEAD_MIN
    ids = subprocess.run(["git", "hash-object", "--stdin-paths"], cwd=workspace.root,
                         input="".join(f"{path}\n" for path in waiting + running),
                         capture_output=True, text=True, check=True).stdout.split()
    present = [subprocess.run(["git", "cat-file", "-e", oid], cwd=workspace.root).returncode
               == 0 for oid in ids]
    assert present == [True] * len(waiting) + [False] * len(running)
    executor.write_waiting_objects()
    assert executor.stats["objects_written_ahead"] == WRITE_AHEAD_MIN  # not asked again


def test_objects_are_written_ahead_only_for_regular_files_within_the_size_cap(workspace):
    import os
    import subprocess
    from gitsieve.common.git.committer import Committer
    workspace.config("[filter]\nmax_analyze_bytes = 2048\n")
    committer = Committer(workspace.load())
    workspace.write("small.txt", "small\n")
    workspace.write("big.bin", "x" * 5000)
    os.symlink("small.txt", workspace.path("link"))
    assert committer.write_objects(["small.txt", "big.bin", "link", "gone.txt"]) == 1

    def written(path: str) -> bool:
        oid = subprocess.run(["git", "hash-object", path], cwd=workspace.root,
                             capture_output=True, text=True, check=True).stdout.strip()
        return subprocess.run(["git", "cat-file", "-e", oid], cwd=workspace.root).returncode == 0
    assert written("small.txt") and not written("big.bin")


def test_handler_a_missing_remote_holds_pushes_warned_once_and_commits_go_on(workspace,
                                                                             caplog):
    """No remote: every push retry (2, 4, 6 ... s, then every push_backoff_max) logged two
    warnings, for ever.  Now a push hold, said once; adding the remote pushes at once."""
    import logging
    executor = handler_executor(workspace, "push_backoff_max = 1\n[limits]\n"
                                "cooldown_seconds = 0\n")
    now = [1000.0]
    executor.clock = lambda: now[0]
    workspace.git("remote", "remove", "origin")
    try:
        with caplog.at_level(logging.INFO):
            for index in range(4):
                workspace.write(f"f{index}.txt", f"{index}\n")
                executor.on_batch(Batch(batch_id=index, paths=(f"f{index}.txt",),
                                        observed=(1.0,), created=1.0))
                for _ in range(3):  # each back-off over: a retry each time
                    now[0] += 2
                    executor.on_health(ok_health())
                    executor.on_tick(0)
                assert executor.held == {}, executor.held_reason  # committed locally
            assert executor.stats["commits"] == 4 and executor.push_pending
            assert executor.extra_status()["push_hold"] == Hold.NO_REMOTE
            warned = [record.getMessage() for record in caplog.records
                      if record.levelno >= logging.WARNING]
            assert len(warned) == 1 and all("'origin' is not configured" in text
                                            for text in warned), warned
            assert executor.stats["errors"] == 0  # a hold, not a failure
            workspace.git("remote", "add", "origin", str(workspace.remote))
            executor.on_health(ok_health())
            executor.on_tick(0)  # the git config changed: the push goes at once
            assert not executor.push_pending
        assert workspace.git("rev-parse", "HEAD").strip() == workspace.remote_head()
    finally:
        executor.close()


def test_handler_a_signing_failure_holds_with_its_reason_until_signing_works(workspace,
                                                                           tmp_path):
    from test_committer import ssh_signing
    key = ssh_signing(workspace, tmp_path)
    workspace.git("config", "user.signingkey", str(tmp_path / "no-such-key"))
    executor = handler_executor(workspace, "[limits]\ncooldown_seconds = 0\n")
    try:
        workspace.write("a.txt", "a\n")
        workspace.write("b.txt", "b\n")
        executor.on_batch(Batch(batch_id=1, paths=("a.txt", "b.txt"), observed=(1.0, 1.0),
                                created=1.0))
        executor.on_tick(0)
        assert executor.held == {"a.txt": 1.0, "b.txt": 1.0}
        status = executor.extra_status()
        assert status["path_holds"] == {Hold.SIGNING_FAILED: 2}
        assert status["hold"] == Hold.SIGNING_FAILED and "signing failed" in \
            status["held_reason"]
        assert executor.stats["commits"] == 0
        workspace.git("config", "user.signingkey", key)  # fixed: tried again at once
        executor.on_tick(0)
        assert executor.held == {} and executor.stats["commits"] == 1
        assert subprocess.run(["git", "verify-commit", "HEAD"], cwd=workspace.root,
                              capture_output=True).returncode == 0
        assert workspace.remote_head() == workspace.head()
    finally:
        executor.close()
