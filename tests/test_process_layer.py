"""Process layer (L2): the ProcessJudge (no socket) with real writer processes, then real
router + l2 processes."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import zmq

from conftest import ROOT, Unbundled, stage_reader, wait_for  # noqa: E402
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision, Route
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    L1Reason,
    L2Reason,
    Mode,
    ProcessAction,
    Technique,
    Writer,
)
from gitsieve.common.protocol.trail import PatternStep, ProcessStep

HOLDER_CODE = r"""
import sys
path = sys.argv[2]
handle = open(path, "a")
handle.write("system churn\n")
handle.flush()
print("holding", flush=True)
sys.stdin.read()
"""
L1_STEP = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)


def verdicts(status: dict) -> dict:
    return {key: count for key, count in status.items() if key.startswith("verdict_")}


@pytest.fixture
def tag():
    return f"claude-autonomous-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hold():
    """``hold(path, tag)``: a real process whose command line carries ``tag`` keeps
    ``path`` open for writing until the test ends."""
    started = []

    def start(path, tag: str, cwd=None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER_CODE, tag, str(path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=cwd)
        started.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def configure(workspace, tag: str, ttl: float = 0.2, attribution: str = "psutil"):
    """These tests cover the unprivileged techniques (forced even as root);
    tests/test_attribution_e2e.py and the exact tests below cover fanotify."""
    workspace.config(f"""
        [filter]
        autonomous_processes = ["{tag}"]
        process_cache_ttl = {ttl}
        attribution = "{attribution}"
        """)
    return workspace.load()


def change(path: str, kind: ChangeKind = ChangeKind.WRITE, seq: int = 1,
           trail=(L1_STEP,)) -> Change:
    return Change(path=path, kind=kind, seq=seq, epoch=1000.0, observed=time.time(),
                  trail=trail)


@pytest.fixture
def judge_for():
    """A ProcessJudge for a workspace's config (no socket), closed at teardown."""
    made: list[ProcessJudge] = []

    def make(cfg) -> ProcessJudge:
        judge = ProcessJudge(cfg)
        made.append(judge)
        return judge

    yield make
    for judge in made:
        judge.close()


# ----- the judge ---------------------------------------------------------------------------
def test_write_by_autonomous_process_becomes_a_drop_decision(workspace, tag, hold, judge_for):
    target = workspace.write(".claude/contexts/status.json", "{}\n")
    holder = hold(target, tag)
    judge = judge_for(configure(workspace, tag))
    step = judge.judge(change(".claude/contexts/status.json", seq=7))
    assert isinstance(step, ProcessStep)
    assert judge.drops(step)  # a Decision(commit=False), not a change for L3
    assert (step.verdict, step.reason, step.mode, step.technique, step.pid) == (
        Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.PSUTIL, Technique.OPEN_FILES, holder.pid)
    assert tag in step.cmdline and step.confidence > 0
    assert not step.learned and not step.repeated
    assert holder.pid in judge.status()["autonomous_pids"]


def test_unknown_writer_passes_the_change_on_with_an_unknown_step(workspace, tag, hold,
                                                                  judge_for):
    target = workspace.write("notes.md", "user text\n")
    hold(target, f"editor-{uuid.uuid4().hex[:8]}")  # a writer, but not an autonomous one
    judge = judge_for(configure(workspace, tag))
    step = judge.judge(change("notes.md", seq=3))
    assert not judge.drops(step)  # passed on to L3
    # no autonomous process runs at all: the loop breaker has no writer to suspect
    assert (step.verdict, step.reason, step.pid) == (
        Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_PROCESS, None)
    hold(workspace.write("other.txt", "agent text\n"), tag)
    step = judge.judge(change("notes.md", seq=4))
    assert not judge.drops(step)
    assert (step.verdict, step.reason, step.pid) == (
        Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_WRITER_SEEN, None)


def test_an_autonomous_process_working_elsewhere_is_not_suspected_of_reacting(
        workspace, tag, hold, judge_for, tmp_path_factory):
    """One running in another directory (another workspace's agent) made a person's saves
    right after each commit look like a reactive agent's, and held them (fails before).
    One whose working directory is in the workspace is suspected, named there or not."""
    elsewhere = tmp_path_factory.mktemp("another-workspace")
    hold(elsewhere / "state.json", tag, cwd=elsewhere)
    judge = judge_for(configure(workspace, tag))
    workspace.write("notes.md", "user text\n")
    step = judge.judge(change("notes.md", seq=1))
    assert (step.verdict, step.reason) == (Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_PROCESS)
    hold(elsewhere / "other.json", tag, cwd=workspace.root)
    step = judge.judge(change("notes.md", seq=2))
    assert (step.verdict, step.reason) == (Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_WRITER_SEEN)


def test_deletion_is_unknown_even_when_an_autonomous_process_runs(workspace, tag, hold,
                                                                  judge_for):
    hold(workspace.path("other.txt"), tag)
    judge = judge_for(configure(workspace, tag))
    step = judge.judge(change("README.md", kind=ChangeKind.DELETE))
    assert not judge.drops(step)
    assert (step.verdict, step.reason) == (Writer.UNKNOWN, L2Reason.REMOVER_UNOBSERVABLE)


def test_sampler_runs_from_on_tick_while_autonomous_processes_exist(workspace, tag, hold,
                                                                    judge_for):
    judge = judge_for(configure(workspace, tag, ttl=60))
    judge.tick(time.monotonic())  # the first tick takes the processes' snapshot
    # nobody to sample: only the cache refresh is due
    assert judge.wakeup_in(time.monotonic()) > 1
    hold(workspace.path("a.json"), tag)
    judge.attributor.cache.refresh()
    assert judge.wakeup_in(time.monotonic()) <= 0.05
    judge.tick(time.monotonic())
    assert judge.status()["samples"] == 1
    assert judge.status()["sampled_paths"] == 1


# ----- real processes --------------------------------------------------------------------
def recv(sock: zmq.Socket, timeout: float = 10.0):
    assert sock.poll(int(timeout * 1000)), "no message within the timeout"
    return messages.decode(sock.recv())


@pytest.fixture
def pipeline(workspace, tag, actors):
    """router + one l2 worker; the test feeds stage_in(l2) and reads decisions and l3."""
    cfg = configure(workspace, tag)
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    decisions = context.socket(zmq.PULL)
    decisions.linger = 0
    decisions.bind(cfg.endpoints.decisions)
    decisions = Unbundled(decisions)
    to_l3 = stage_reader(context, cfg, "l3")
    into_l2 = context.socket(zmq.PUSH)
    into_l2.linger = 0
    into_l2.connect(cfg.endpoints.stage_in("l2"))
    actors("router", workspace.root)
    actors("process_layer", workspace.root, instance=1)

    def running() -> bool:
        try:
            return control.request(cfg, "l2-01", "status", timeout=0.5).data["state"] \
                == "running"
        except control.Unreachable:
            return False
    wait_for(running, 20, message="l2-01 running")
    yield cfg, into_l2, decisions, to_l3
    for sock in (decisions, to_l3, into_l2):
        sock.close(linger=0)
    context.term()


def send_change(sock: zmq.Socket, item: Change, priority: bool = False) -> None:
    """Into a stage queue as producers do: [route, body]."""
    sock.send_multipart(messages.stage_frames(item, priority))


def test_real_l2_drops_autonomous_writes_and_forwards_the_rest(workspace, tag, hold,
                                                               pipeline):
    cfg, into_l2, decisions, to_l3 = pipeline
    target = workspace.write(".claude/contexts/status.json", "{}\n")
    holder = hold(target, tag)
    workspace.write("docs/user.md", "mine\n")

    send_change(into_l2, change(".claude/contexts/status.json", seq=1))
    decision = recv(decisions)
    assert isinstance(decision, Decision) and decision.commit is False
    assert (decision.path, decision.seq, decision.kind, decision.action) == (
        ".claude/contexts/status.json", 1, ChangeKind.WRITE, Action.ANALYZE)
    assert decision.trail[0] == L1_STEP
    step = decision.trail[-1]
    assert isinstance(step, ProcessStep)
    assert (step.verdict, step.technique, step.pid) == (
        Writer.SYSTEM, Technique.OPEN_FILES, holder.pid)
    assert tag in step.cmdline and step.confidence > 0

    send_change(into_l2, change("docs/user.md", seq=2))
    forwarded = recv(to_l3)
    assert isinstance(forwarded, Change)
    assert (forwarded.path, forwarded.seq) == ("docs/user.md", 2)
    assert [step.LAYER for step in forwarded.trail] == ["L1", "L2"]
    assert forwarded.trail[0] == L1_STEP
    assert (forwarded.trail[-1].verdict, forwarded.trail[-1].pid) == (Writer.UNKNOWN, None)

    send_change(into_l2, change("README.md", kind=ChangeKind.DELETE, seq=3))
    deleted = recv(to_l3)
    assert deleted.kind == ChangeKind.DELETE
    assert deleted.trail[-1].verdict == Writer.UNKNOWN

    status = control.request(cfg, "l2-01", "status").data
    assert verdicts(status) == {"verdict_SYSTEM": 1, "verdict_UNKNOWN": 2}
    assert holder.pid in status["autonomous_pids"]


def test_real_l2_survives_garbage_frames(workspace, pipeline):
    """The router reads only the route frame: a message that is not [route, body] is its
    bad frame; a body that is no valid Change reaches the worker, which counts and drops it."""
    cfg, into_l2, decisions, to_l3 = pipeline
    into_l2.send(b"\x93not msgpack at all")  # one frame: no route
    into_l2.send_multipart([b"\x02", b"x"])  # a route frame that is none
    into_l2.send_multipart([Route(False, b"x").encode(), b"\x93not msgpack at all"])
    send_change(into_l2, change("../escape", seq=1))  # valid msgpack, unsafe path
    send_change(into_l2, change("README.md", seq=2))
    assert recv(to_l3).path == "README.md"
    assert control.request(cfg, "router", "status").data["bad_frames"] == 2
    status = control.request(cfg, "l2-01", "status").data
    assert status["bad_frames"] == 2 and status["state"] == "running"


# ----- exact attribution (fanotify + lineage; root) --------------------------------------
import os  # noqa: E402
import shutil  # noqa: E402

exact_only = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
SHORT_LIVED_PARENT = r"""
import subprocess, sys
print("ready", flush=True)
for line in sys.stdin:
    subprocess.run(["sh", "-c", 'date > "$1"', "sh", line.strip()], check=True)
    print("done", flush=True)
"""


@pytest.fixture
def agent(tag):
    """A long-lived autonomous process spawning a short-lived ``sh -c 'date > f'`` child."""
    proc = subprocess.Popen([sys.executable, "-c", SHORT_LIVED_PARENT, tag],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"

    def child_writes(path) -> None:
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
    yield proc, child_writes
    proc.stdin.close()
    proc.wait(5)
    proc.stdout.close()


def user_writes(path, text="mine\n", judge=None) -> int:
    """A user's editor: alive while L2 reads its exec (as the actor's poll loop does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2]);"
         "print('done', flush=True); sys.stdin.read()", str(path), text],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "done"
    if judge is not None:
        judge.attributor.drain()
    proc.communicate("")
    return proc.pid


@exact_only
def test_exact_short_lived_child_of_an_agent_is_system(workspace, tag, agent, judge_for):
    proc, child_writes = agent
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    assert judge.mode == Mode.FANOTIFY
    child_writes(workspace.path("status.txt"))
    step = judge.judge(change("status.txt", seq=4))
    assert judge.drops(step)
    assert (step.verdict, step.technique, step.confidence) == (
        Writer.SYSTEM, Technique.FANOTIFY, 1.0)
    assert step.ancestor_pid == proc.pid and tag in step.ancestor_cmdline
    assert step.pid != proc.pid  # the writer was the child, gone by now
    # The watcher's second report of the same writes repeats the verdict.
    again = judge.judge(change("status.txt", seq=5))
    assert judge.drops(again) and again.verdict == Writer.SYSTEM
    assert again.repeated is True


@exact_only
def test_exact_user_writer_goes_to_l3_marked_user(workspace, tag, agent, judge_for):
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    pid = user_writes(workspace.path("notes.md"), judge=judge)
    step = judge.judge(change("notes.md", seq=2))
    assert not judge.drops(step)
    assert (step.verdict, step.pid, step.technique) == (Writer.USER, pid, Technique.FANOTIFY)


@exact_only
def test_exact_agent_rewrite_after_the_users_change_was_judged_is_system(
        workspace, tag, agent, judge_for):
    """A file both write: the user's change is USER; the agent's later rewrite of the same
    file is SYSTEM, not "mixed with the user's earlier write"."""
    _, child_writes = agent
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    user_writes(workspace.path("shared.md"), judge=judge)
    first = judge.judge(change("shared.md", seq=1))
    assert not judge.drops(first) and first.verdict == Writer.USER
    child_writes(workspace.path("shared.md"))
    second = judge.judge(change("shared.md", seq=2))
    assert judge.drops(second) and second.verdict == Writer.SYSTEM


@exact_only
def test_exact_unseen_writer_is_unknown_not_system(workspace, tag, judge_for):
    workspace.write("before.txt", "written before L2 started\n")
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    step = judge.judge(change("before.txt"))
    assert not judge.drops(step)
    assert (step.verdict, step.reason) == (Writer.UNKNOWN, L2Reason.NO_WRITER_SEEN)


@exact_only
def test_exact_deletion_by_an_agent_child_is_dropped_and_the_users_is_passed_on(
        workspace, tag, judge_for):
    """FID-mode events: an autonomous process's ``rm`` (a short-lived child) is SYSTEM;
    the user's deletion goes to L3 marked USER."""
    workspace.write("ctx/agent.json", "{}\n")
    workspace.write("ctx/mine.md", "mine\n")
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['rm', sys.argv[2]]);"
         "print('done', flush=True); sys.stdin.read()", tag,
         str(workspace.path("ctx/agent.json"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "done"
    dropped = judge.judge(change("ctx/agent.json", kind=ChangeKind.DELETE, seq=1))
    parent.communicate("")
    assert judge.drops(dropped)
    assert (dropped.verdict, dropped.reason, dropped.did, dropped.ancestor_pid) == (
        Writer.SYSTEM, L2Reason.IDENTIFIED, ProcessAction.REMOVED, parent.pid)
    remover = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.remove(sys.argv[1]);"
         "print('done', flush=True); sys.stdin.read()", str(workspace.path("ctx/mine.md"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert remover.stdout.readline().strip() == "done"
    judge.attributor.drain()
    remover.communicate("")
    forwarded = judge.judge(change("ctx/mine.md", kind=ChangeKind.DELETE, seq=2))
    assert not judge.drops(forwarded)
    assert (forwarded.verdict, forwarded.did, forwarded.pid) == (
        Writer.USER, ProcessAction.REMOVED, remover.pid)


def learned_change(path: str, seq: int = 1) -> Change:
    step = PatternStep(Action.ANALYZE, L1Reason.DEFAULT, learned=True)
    return change(path, seq=seq, trail=(step,))


@exact_only
def test_learned_path_is_dropped_unless_the_user_wrote_it(workspace, tag, agent, judge_for):
    _, child_writes = agent
    judge = judge_for(configure(workspace, tag, attribution="fanotify"))
    child_writes(workspace.path("learned.json"))
    dropped = judge.judge(learned_change("learned.json"))
    assert judge.drops(dropped) and dropped.learned and dropped.verdict == Writer.SYSTEM
    unknown = judge.judge(learned_change("never-written.json"))  # unknown writer: dropped too
    assert judge.drops(unknown) and unknown.learned and unknown.verdict == Writer.UNKNOWN
    user_writes(workspace.path("learned.json"), judge=judge)
    user = judge.judge(learned_change("learned.json", seq=3))
    assert not judge.drops(user) and not user.learned and user.verdict == Writer.USER
    assert judge.status()["learned_drops"] == 2


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to drop CAP_SYS_ADMIN")
def test_auto_falls_back_to_psutil_with_one_log_line_without_privilege(workspace, tag):
    """A real L2 process without CAP_SYS_ADMIN, attribution = "auto"."""
    cfg = configure(workspace, tag, attribution="auto")
    config_mod.prepare_runtime_dir(cfg)
    proc = subprocess.Popen(
        ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin",
         sys.executable, "-m", "gitsieve.actors.process_layer", "--workspace", str(workspace.root),
         "--instance", "1"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        def status():
            try:
                return control.request(cfg, "l2-01", "status", timeout=0.5).data
            except control.Unreachable:
                return None
        data = wait_for(status, 20, message="l2-01 answering")
        assert data["attribution"] == "psutil"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    fallback = [line for line in err.splitlines() if "exact attribution unavailable" in line]
    assert len(fallback) == 1 and "not permitted" in fallback[0]


