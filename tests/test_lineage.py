"""Process lineage (common.judge.attribution.lineage) and writer classification (WriterRules,
ExactAttributor) with real processes: a short-lived child of an autonomous parent is traced
to it after both... the child has exited."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest
import zmq

from conftest import wait_for
from gitsieve.common import config as config_mod
from gitsieve.common.actor.base import Actor
from gitsieve.common.judge.attribution import make_attributor
from gitsieve.common.judge.attribution.base import SELF, SYSTEM, UNKNOWN, USER
from gitsieve.common.judge.attribution.exact import ExactAttributor, WriterRules
from gitsieve.common.judge.attribution.lineage import (
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    LineageTracker,
    ProcInfo,
    read_proc,
)
from gitsieve.common.protocol.states import Mode, Technique

SO_DETACH_FILTER = 27
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector needs root")

# A long-lived parent (its command line carries the tag) that spawns one short-lived
# ``sh -c 'date > FILE'`` child per line on stdin and prints the child's pid.
PARENT = r"""
import subprocess, sys
print("ready", flush=True)
for line in sys.stdin:
    child = subprocess.Popen(["sh", "-c", 'date > "$1"', "sh", line.strip()])
    child.wait()
    print(child.pid, flush=True)
"""


@pytest.fixture
def parent():
    tag = f"claude-autonomous-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", PARENT, tag], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"

    def spawn(path) -> int:
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())
    yield proc, tag, spawn
    proc.stdin.close()
    proc.wait(5)
    proc.stdout.close()


def test_short_lived_child_is_traced_to_its_parent_after_exit(tmp_path, parent):
    proc, tag, spawn = parent
    tracker = LineageTracker()
    try:
        child = spawn(tmp_path / "f")
        wait_for(lambda: tracker.drain() or tracker.processes.get(child, ProcInfo(
            0, 0, "", 0, "", False)).exited, 5, message="child exit event")
        chain = tracker.chain(child)
        assert chain[0].pid == child and chain[0].exited is not None
        assert chain[1].pid == proc.pid and tag in chain[1].cmdline
        assert read_proc(child) is None  # gone from /proc: only the tracker remembers
    finally:
        tracker.close()


def test_exited_processes_are_pruned_after_keep_exited(tmp_path, parent):
    proc, _, spawn = parent
    tracker = LineageTracker(keep_exited=0.0)
    try:
        child = spawn(tmp_path / "f")
        wait_for(lambda: tracker.drain() or child in tracker.processes, 5)
        tracker.prune(time.time() + 1)
        assert child not in tracker.processes and proc.pid in tracker.processes
    finally:
        tracker.close()


def test_snapshot_knows_processes_started_before_it(parent):
    proc, tag, _ = parent
    tracker = LineageTracker(listen=False)
    assert tag in tracker.processes[proc.pid].cmdline
    assert tracker.processes[proc.pid].ppid == os.getpid()


# ----- classification ------------------------------------------------------------------
def info(pid, cmdline, ppid=1, uid=1000, cgroup="0::/user.slice", mark=False):
    return ProcInfo(pid, ppid, cmdline, uid, cgroup, mark)


def test_rules_match_cmdline_uid_cgroup_and_unit_anywhere_in_the_chain():
    rules = WriterRules(["claude-autonomous"], [999], [r"agents\.slice"], ["monitor.service"])
    shell = info(10, "sh -c date")
    assert rules.classify([shell, info(9, "python claude-autonomous run")]).writer == SYSTEM
    found = rules.classify([shell, info(9, "python claude-autonomous run")])
    assert (found.pid, found.ancestor_pid, found.matched_by) == (10, 9,
                                                                 "autonomous_processes")
    assert rules.classify([info(3, "x", uid=999)]).matched_by.startswith("autonomous_uids")
    assert rules.classify([info(3, "x", cgroup="0::/agents.slice/a")]).writer == SYSTEM
    unit = rules.classify([info(3, "x", cgroup="0::/system.slice/monitor.service")])
    assert unit.matched_by == "autonomous_units (monitor.service)"
    assert rules.classify([info(3, "vim notes.md"), info(2, "bash")]).writer == USER


def test_gitsieve_own_git_is_self_by_mark_or_actor_ancestor():
    rules = WriterRules(["claude-autonomous"])
    assert rules.classify([info(5, "git checkout", mark=True)]).writer == SELF
    assert rules.classify([info(5, "git checkout"),
                           info(4, "python -m gitsieve.actors.executor", mark=True)]).writer == SELF
    # A command line that looks like an actor's proves nothing: only the mark does.
    assert rules.classify([info(5, "git checkout"),
                           info(4, "python -m gitsieve.actors.executor")]).writer == USER


def test_exact_attributor_names_user_system_and_self_writers(workspace, parent):
    proc, tag, spawn = parent
    workspace.config(f'[filter]\nautonomous_processes = ["{tag}"]\nattribution = "fanotify"\n')
    cfg = workspace.load()
    attributor = make_attributor(cfg)
    try:
        assert isinstance(attributor, ExactAttributor)
        spawn(workspace.path("agent.txt"))
        # A user's editor (alive while its exec is read) and a command gone before anyone
        # read what it ran: the first is USER, the second unknown (never assumed USER).
        editor = subprocess.Popen(
            [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('mine');"
             "print('done', flush=True); sys.stdin.read()", str(workspace.path("user.txt"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert editor.stdout.readline().strip() == "done"
        attributor.drain()
        editor.communicate("")
        subprocess.run(["sh", "-c", 'echo gone > "$1"', "sh", workspace.path("quick.txt")],
                       check=True)
        workspace.write("README.md", "changed\n")  # by this process: never recorded
        # git run by a process carrying the actor mark in its environment (as the executor's
        # git is): the git child may exit before its exec is read, its parent still tells.
        actor = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; subprocess.run(['git', "
             "'checkout', '--', 'README.md'], check=True, env={'PATH': '/usr/bin:/bin'}); "
             "print('done', flush=True); sys.stdin.read()"], cwd=workspace.root,
            env={**os.environ, "GITSIEVE_ACTOR": "executor"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert actor.stdout.readline().strip() == "done"
        now = time.time()
        self_write = attributor.attribute(workspace.path("README.md"), now)
        actor.communicate("")
        agent = attributor.attribute(workspace.path("agent.txt"), now)
        assert (agent.writer, agent.technique, agent.confidence) == (SYSTEM, Technique.FANOTIFY, 1.0)
        assert agent.ancestor_pid == proc.pid and tag in agent.ancestor_cmdline
        user = attributor.attribute(workspace.path("user.txt"), now)
        assert (user.writer, user.pid) == (USER, editor.pid)
        quick = attributor.attribute(workspace.path("quick.txt"), now)
        assert quick is None or quick.writer == UNKNOWN
        assert self_write.writer == SELF and self_write.ancestor_pid == actor.pid
        assert attributor.attribute(workspace.path("never.txt"), now) is None
    finally:
        attributor.close()


def test_a_writer_forked_after_the_last_lineage_read_is_still_traced(workspace, parent):
    """The race CI hit: the fanotify group is read after the lineage socket, and a child
    forked, wrote and exited in between.  Its fork is queued but unread when its write is
    resolved; it must still be traced to its autonomous parent, never taken for the user."""
    proc, tag, spawn = parent
    workspace.config(f'[filter]\nautonomous_processes = ["{tag}"]\nattribution = "fanotify"\n')
    attributor = make_attributor(workspace.load())
    try:
        attributor.lineage.drain()
        target = workspace.path("late.txt")
        child = spawn(target)  # fork, exec, write, exit: all queued, none read yet
        assert read_proc(child) is None
        # the write is read first, as in the race
        attributor.recorder.record(attributor.watch.drain_writes())
        events = attributor.recorder.writes_to(target, 0.0, time.time())
        assert events, "the child's write was not recorded"
        evidence = events[0].evidence
        # the writer is the child or its own child (sh may fork date), all gone now
        chain = [info.pid for info in attributor.lineage.chain(evidence.pid)]
        assert child in chain and read_proc(evidence.pid) is None
        assert (evidence.writer, evidence.ancestor_pid) == (SYSTEM, proc.pid)
    finally:
        attributor.close()


def test_an_empty_lineage_is_unknown_not_the_user():
    assert WriterRules(["claude-autonomous"]).classify([]).writer == UNKNOWN


def test_psutil_is_used_when_configured_even_as_root(workspace):
    workspace.config('[filter]\nattribution = "psutil"\n')
    attributor = make_attributor(workspace.load())
    assert attributor.mode == Mode.PSUTIL and attributor.fds() == []


# ----- retention: what could still be a writer's ancestor ---------------------------------
# pids above any pid_max: /proc has nothing for them, as for processes already gone
X, Y = 1 << 30, (1 << 30) + 1


def message(what: int, *ints: int) -> bytes:
    """One proc connector datagram as the kernel sends it (nlmsghdr, cn_msg, proc_event)."""
    event = struct.pack("=IIQ", what, 0, 0) + struct.pack(f"={len(ints)}i", *ints).ljust(
        24, b"\0")
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def fork(parent: int, child: int) -> bytes:
    return message(PROC_EVENT_FORK, parent, parent, child, child)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tracker():
    clock = Clock()
    made = LineageTracker(keep_exited=10.0, listen=False, clock=clock)
    made.clock_ref = clock
    return made


def test_an_exited_parent_stays_while_its_child_lives(tracker):
    me = os.getpid()
    my_children = tracker._children.get(tracker.processes[me].serial, 0)  # live ones
    tracker._parse(fork(me, X) + fork(X, Y) + message(PROC_EVENT_EXIT, X, X))
    tracker.prune(tracker.clock_ref.now + 100)
    assert [info.pid for info in tracker.chain(Y)][:3] == [Y, X, me]
    tracker._parse(message(PROC_EVENT_EXIT, Y, Y))
    tracker.clock_ref.now += 5
    tracker.prune()
    assert Y in tracker.processes  # within the grace: its write may still be queued
    tracker.prune(tracker.clock_ref.now + 100)
    assert X not in tracker.processes and Y not in tracker.processes
    assert tracker._children.get(tracker.processes[me].serial, 0) == my_children


def test_a_reused_pid_does_not_become_an_older_childs_parent(tracker):
    me = os.getpid()
    # X runs a program gone before it could be read (exec_lost), forks Y, exits; the
    # kernel gives X's pid to a new child of ours.
    tracker._parse(fork(me, X) + message(PROC_EVENT_EXEC, X, X) + fork(X, Y)
                   + message(PROC_EVENT_EXIT, X, X) + fork(me, X))
    old_parent = tracker.chain(Y)[1]
    assert old_parent.pid == X and old_parent.exec_lost
    assert not tracker.processes[X].exec_lost  # the new X
    assert tracker.processes[X].serial != old_parent.serial
    assert len(tracker.retired) == 1
    tracker._parse(message(PROC_EVENT_EXIT, Y, Y))
    tracker.prune(tracker.clock_ref.now + 100)
    assert tracker.retired == {} and Y not in tracker.processes
    assert X in tracker.processes  # the new X is alive


def test_a_daemonised_child_keeps_its_exited_parent_in_its_lineage():
    tracker = LineageTracker(keep_exited=1.0)
    try:
        # the shell starts a sleeper in the background and exits when told to
        shell = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; read line"],
                                 stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        sleeper = int(shell.stdout.readline())
        tracker.drain()  # while the shell runs: its exec is read from /proc
        shell.stdin.close()
        shell.wait()
        deadline = time.monotonic() + 10
        while tracker.processes[shell.pid].exited is None:
            assert time.monotonic() < deadline, "no exit event for the shell"
            tracker.drain()
            time.sleep(0.05)
        tracker.prune(time.time() + 100)  # far past the grace
        chain = tracker.chain(sleeper)
        assert chain[1].pid == shell.pid and chain[1].exited is not None
        assert chain[1].cmdline.startswith("sh -c sleep 30") and not chain[1].exec_lost
        os.kill(sleeper, 9)
        deadline = time.monotonic() + 10
        while tracker.processes[sleeper].exited is None:
            assert time.monotonic() < deadline, "no exit event for the sleeper"
            tracker.drain()
            time.sleep(0.05)
        tracker.prune(time.time() + 100)
        assert sleeper not in tracker.processes and shell.pid not in tracker.processes
    finally:
        tracker.close()


def test_the_socket_filter_drops_thread_events_before_any_python_runs():
    """The kernel runs the BPF program: our threads' forks and exits never reach the
    tracker's socket, our processes' do (an unfiltered socket sees both)."""
    import threading

    filtered, unfiltered = LineageTracker(), LineageTracker()
    unfiltered.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    seen = {}
    for tracker in (filtered, unfiltered):
        seen[tracker] = []
        tracker._parse = lambda data, found=seen[tracker]: found.append(data) or 0
    try:
        for _ in range(5):
            worker = threading.Thread(target=lambda: None)
            worker.start()
            worker.join()
        child = subprocess.Popen(["true"])
        child.wait()

        def ours(tracker) -> tuple[int, int]:
            threads = processes = 0
            for data in seen[tracker]:
                offset = 0
                while offset < len(data):  # the messages of one batch
                    length, = struct.unpack_from("=I", data, offset)
                    what, = struct.unpack_from("=I", data, offset + 36)
                    if what == PROC_EVENT_FORK:
                        child_pid, child_tgid = struct.unpack_from("=2i", data, offset + 60)
                        threads += child_tgid == os.getpid() and child_pid != child_tgid
                        processes += child_pid == child_tgid == child.pid
                    offset += (length + 3) & ~3
            return threads, processes
        wait_for(lambda: filtered.drain() + unfiltered.drain() >= 0 and ours(unfiltered)[0]
                 >= 5 and ours(filtered)[1] == 1, 10, message="fork events")
        assert ours(filtered) == (0, 1)
    finally:
        filtered.close()
        unfiltered.close()


# ----- batches: what a busy machine costs --------------------------------------------------
def test_an_exec_whose_process_exits_later_in_the_batch_is_not_read_from_proc(tracker):
    """In one batch, /proc is read for an exec only if the process has not exited later in
    the same batch: it is gone (or its pid is already another process's)."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        wait_for(lambda: read_proc(sleeper.pid) and "sleep" in read_proc(sleeper.pid).cmdline,
                 5, message="sleep exec'd")
        me = os.getpid()
        tracker._parse(fork(me, sleeper.pid) + message(PROC_EVENT_EXEC, sleeper.pid, sleeper.pid)
                       + message(PROC_EVENT_EXIT, sleeper.pid, sleeper.pid))
        gone = tracker.processes[sleeper.pid]
        assert gone.exec_lost and gone.exited is not None and "sleep" not in gone.cmdline
        # the same exec with no exit after it: read from /proc
        tracker._parse(fork(me, sleeper.pid) + message(PROC_EVENT_EXEC, sleeper.pid, sleeper.pid))
        live = tracker.processes[sleeper.pid]
        assert live.cmdline == "sleep 30" and not live.exec_lost and live.exited is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_process_starts_elsewhere_wake_the_reader_within_its_budget(workspace):
    """A busy machine's process starts are read in batches: the proc connector wakes the
    exact attributor at most WAKE_BURST + WAKES_PER_SECOND a second times, and every start
    is still in the lineage, traced to its parent."""
    from gitsieve.common.judge.attribution.lineage import WAKE_BURST, WAKES_PER_SECOND
    workspace.config('[filter]\nattribution = "fanotify"\n')
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    attributor = make_attributor(cfg)
    actor = _Reader(cfg)
    wakes = []
    try:
        actor._heartbeat = actor.connect(zmq.PUSH, cfg.endpoints.heartbeat, hwm=10)
        for fd, callback in attributor.fds():
            actor.watch_fd(fd, lambda call=callback: wakes.append(call()) or wakes[-1])
        started = time.monotonic()
        children = []
        for _ in range(60):
            children.append(subprocess.Popen(["true"]))
            actor._round_for(0.02)
        for child in children:
            child.wait()
        wait_for(lambda: actor._round_for(0.1) or all(
            attributor.lineage.processes.get(child.pid) is not None and
            attributor.lineage.processes[child.pid].exited is not None for child in children),
            10, message="every start and exit read")
        elapsed = time.monotonic() - started
        woken_with_events = sum(1 for rest in wakes if rest is not None)
        assert woken_with_events <= WAKE_BURST + WAKES_PER_SECOND * elapsed + 1, (
            woken_with_events, elapsed)
        for child in children:
            assert attributor.lineage.chain(child.pid)[1].pid == os.getpid()
    finally:
        attributor.close()
        actor.close()


class _Reader(Actor):
    """The base's poll loop, in rounds of at most 10 ms."""

    name = "reader"

    def wakeup_in(self) -> float:
        return 0.01

    def _round_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._round()


def test_the_reader_rests_after_a_batch_once_its_burst_is_spent_but_never_with_a_full_one(
        tracker):
    from gitsieve.common.judge.attribution.lineage import FULL_BATCH, WAKE_BURST
    now = time.monotonic()
    assert tracker.rest_after(0, now) is None  # nothing read: polled again at once
    rests = [tracker.rest_after(3, now) for _ in range(int(WAKE_BURST))]
    assert rests[0] == 0.0 and rests[-1] > 0.0
    assert tracker.rest_after(FULL_BATCH, now) == 0.0  # its buffer must not fill
