"""Process layer (L2): handlers with fake sockets, then real router + l2 processes."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import zmq

from conftest import ROOT, FakeSocket, stage_reader, wait_for  # noqa: E402
from gitsieve.actors.process_layer import ProcessLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision

HOLDER_CODE = r"""
import sys
path = sys.argv[2]
handle = open(path, "a")
handle.write("system churn\n")
handle.flush()
print("holding", flush=True)
sys.stdin.read()
"""
L1_STEP = {"layer": "L1", "verdict": "ANALYZE", "reason": "default", "rule": None}


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

    def start(path, tag: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER_CODE, tag, str(path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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


def change(path: str, kind: str = "write", seq: int = 1, trail=(L1_STEP,)) -> Change:
    return Change(path=path, kind=kind, seq=seq, epoch=1000.0, observed=time.time(),
                  trail=trail)


@pytest.fixture
def layer_for():
    """A ProcessLayer set up for a workspace, its outputs replaced by fake sockets."""
    made: list[ProcessLayer] = []

    def make(cfg) -> ProcessLayer:
        layer = ProcessLayer(cfg, instance=1)
        layer.setup()
        layer.to_content, layer.decisions = FakeSocket(), FakeSocket()
        made.append(layer)
        return layer

    yield make
    for layer in made:
        for sock in layer._sockets:
            sock.close(linger=0)
        layer.context.term()


# ----- handlers --------------------------------------------------------------------------
def test_write_by_autonomous_process_becomes_a_drop_decision(workspace, tag, hold, layer_for):
    target = workspace.write(".claude/contexts/status.json", "{}\n")
    holder = hold(target, tag)
    layer = layer_for(configure(workspace, tag))
    layer.on_change(change(".claude/contexts/status.json", seq=7))
    assert layer.to_content.frames == []
    [decision] = layer.decisions.messages()
    assert isinstance(decision, Decision)
    assert (decision.path, decision.seq, decision.commit, decision.action) == (
        ".claude/contexts/status.json", 7, False, "ANALYZE")
    assert decision.trail[0] == L1_STEP
    step = decision.trail[-1]
    assert (step["layer"], step["verdict"], step["technique"], step["pid"]) == (
        "L2", "SYSTEM", "open-files", holder.pid)
    assert tag in step["cmdline"] and step["confidence"] > 0 and step["reason"]
    assert verdicts(layer.extra_status()) == {"verdict_SYSTEM": 1}
    assert holder.pid in layer.extra_status()["autonomous_pids"]


def test_unknown_writer_passes_the_change_on_with_an_unknown_step(workspace, tag, hold,
                                                                  layer_for):
    target = workspace.write("notes.md", "user text\n")
    hold(target, f"editor-{uuid.uuid4().hex[:8]}")  # a writer, but not an autonomous one
    layer = layer_for(configure(workspace, tag))
    layer.on_change(change("notes.md", seq=3))
    assert layer.decisions.frames == []
    [forwarded] = layer.to_content.messages()
    assert isinstance(forwarded, Change)
    assert (forwarded.path, forwarded.seq) == ("notes.md", 3)
    assert forwarded.trail[0] == L1_STEP
    step = forwarded.trail[-1]
    assert (step["layer"], step["verdict"], step["pid"]) == ("L2", "UNKNOWN", None)
    assert verdicts(layer.extra_status()) == {"verdict_UNKNOWN": 1}


def test_deletion_is_unknown_even_when_an_autonomous_process_runs(workspace, tag, hold,
                                                                  layer_for):
    hold(workspace.path("other.txt"), tag)
    layer = layer_for(configure(workspace, tag))
    layer.on_change(change("README.md", kind="delete"))
    [forwarded] = layer.to_content.messages()
    assert forwarded.kind == "delete"
    assert forwarded.trail[-1]["verdict"] == "UNKNOWN"
    assert "deleted" in forwarded.trail[-1]["reason"]


def test_sampler_runs_from_on_tick_while_autonomous_processes_exist(workspace, tag, hold,
                                                                    layer_for):
    layer = layer_for(configure(workspace, tag, ttl=60))
    assert layer.wakeup_in() > 1  # nobody to sample: only the cache refresh is due
    hold(workspace.path("a.json"), tag)
    layer.attributor.cache.refresh()
    assert layer.wakeup_in() <= 0.05
    layer.on_tick(time.monotonic())
    assert layer.extra_status()["samples"] == 1
    assert layer.extra_status()["sampled_paths"] == 1


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


def test_real_l2_drops_autonomous_writes_and_forwards_the_rest(workspace, tag, hold,
                                                               pipeline):
    cfg, into_l2, decisions, to_l3 = pipeline
    target = workspace.write(".claude/contexts/status.json", "{}\n")
    holder = hold(target, tag)
    workspace.write("docs/user.md", "mine\n")

    into_l2.send(messages.encode(change(".claude/contexts/status.json", seq=1)))
    decision = recv(decisions)
    assert isinstance(decision, Decision) and decision.commit is False
    assert decision.trail[-1]["verdict"] == "SYSTEM"
    assert decision.trail[-1]["pid"] == holder.pid

    into_l2.send(messages.encode(change("docs/user.md", seq=2)))
    forwarded = recv(to_l3)
    assert isinstance(forwarded, Change) and forwarded.path == "docs/user.md"
    assert [step["layer"] for step in forwarded.trail] == ["L1", "L2"]
    assert forwarded.trail[-1]["verdict"] == "UNKNOWN"

    into_l2.send(messages.encode(change("README.md", kind="delete", seq=3)))
    assert recv(to_l3).kind == "delete"

    status = control.request(cfg, "l2-01", "status").data
    assert verdicts(status) == {"verdict_SYSTEM": 1, "verdict_UNKNOWN": 2}
    assert holder.pid in status["autonomous_pids"]


def test_real_l2_survives_garbage_frames(workspace, pipeline):
    cfg, into_l2, decisions, to_l3 = pipeline
    into_l2.send(b"\x93not msgpack at all")
    into_l2.send(messages.encode(change("../escape", seq=1)))  # valid msgpack, unsafe path
    into_l2.send(messages.encode(change("README.md", seq=2)))
    assert recv(to_l3).path == "README.md"
    assert control.request(cfg, "router", "status").data["bad_frames"] == 2
    assert control.request(cfg, "l2-01", "status").data["state"] == "running"


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


def user_writes(path, text="mine\n", layer=None) -> int:
    """A user's editor: alive while L2 reads its exec (as the actor's poll loop does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2]);"
         "print('done', flush=True); sys.stdin.read()", str(path), text],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "done"
    if layer is not None:
        layer.attributor.drain()
    proc.communicate("")
    return proc.pid


@exact_only
def test_exact_short_lived_child_of_an_agent_is_system(workspace, tag, agent, layer_for):
    proc, child_writes = agent
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    assert layer.mode == "fanotify"
    child_writes(workspace.path("status.txt"))
    layer.on_change(change("status.txt", seq=4))
    [decision] = layer.decisions.messages()
    step = decision.trail[-1]
    assert (decision.commit, step["verdict"], step["technique"], step["confidence"]) == (
        False, "SYSTEM", "fanotify", 1.0)
    assert step["ancestor_pid"] == proc.pid and tag in step["ancestor_cmdline"]
    assert step["pid"] != proc.pid  # the writer was the child, gone by now
    # The watcher's second report of the same writes repeats the verdict.
    layer.on_change(change("status.txt", seq=5))
    assert layer.decisions.messages()[-1].trail[-1]["repeated"] is True


@exact_only
def test_exact_user_writer_goes_to_l3_marked_user(workspace, tag, agent, layer_for):
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    pid = user_writes(workspace.path("notes.md"), layer=layer)
    layer.on_change(change("notes.md", seq=2))
    assert layer.decisions.frames == []
    [forwarded] = layer.to_content.messages()
    step = forwarded.trail[-1]
    assert (step["verdict"], step["pid"], step["technique"]) == ("USER", pid, "fanotify")


@exact_only
def test_exact_agent_rewrite_after_the_users_change_was_judged_is_system(
        workspace, tag, agent, layer_for):
    """A file both write: the user's change is USER; the agent's later rewrite of the same
    file is SYSTEM, not "mixed with the user's earlier write"."""
    _, child_writes = agent
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    user_writes(workspace.path("shared.md"), layer=layer)
    layer.on_change(change("shared.md", seq=1))
    assert layer.to_content.messages()[-1].trail[-1]["verdict"] == "USER"
    child_writes(workspace.path("shared.md"))
    layer.on_change(change("shared.md", seq=2))
    assert layer.decisions.messages()[-1].trail[-1]["verdict"] == "SYSTEM"


@exact_only
def test_exact_unseen_writer_is_unknown_not_system(workspace, tag, layer_for):
    workspace.write("before.txt", "written before L2 started\n")
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    layer.on_change(change("before.txt"))
    assert layer.to_content.messages()[-1].trail[-1]["verdict"] == "UNKNOWN"


@exact_only
def test_exact_deletion_by_an_agent_child_is_dropped_and_the_users_is_passed_on(
        workspace, tag, layer_for):
    """FID-mode events: an autonomous process's ``rm`` (a short-lived child) is SYSTEM;
    the user's deletion goes to L3 marked USER."""
    workspace.write("ctx/agent.json", "{}\n")
    workspace.write("ctx/mine.md", "mine\n")
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['rm', sys.argv[2]]);"
         "print('done', flush=True); sys.stdin.read()", tag,
         str(workspace.path("ctx/agent.json"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "done"
    layer.on_change(change("ctx/agent.json", kind="delete", seq=1))
    parent.communicate("")
    [dropped] = layer.decisions.messages()
    step = dropped.trail[-1]
    assert (dropped.kind, dropped.commit, step["verdict"], step["ancestor_pid"]) == (
        "delete", False, "SYSTEM", parent.pid)
    assert step["reason"].startswith("deleted: removed by autonomous")
    remover = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.remove(sys.argv[1]);"
         "print('done', flush=True); sys.stdin.read()", str(workspace.path("ctx/mine.md"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert remover.stdout.readline().strip() == "done"
    layer.attributor.drain()
    remover.communicate("")
    layer.on_change(change("ctx/mine.md", kind="delete", seq=2))
    [forwarded] = layer.to_content.messages()
    assert (forwarded.kind, forwarded.trail[-1]["verdict"], forwarded.trail[-1]["pid"]) == (
        "delete", "USER", remover.pid)


def learned_change(path: str, seq: int = 1) -> Change:
    step = {**L1_STEP, "learned": True}
    return change(path, seq=seq, trail=(step,))


@exact_only
def test_learned_path_is_dropped_unless_the_user_wrote_it(workspace, tag, agent, layer_for):
    _, child_writes = agent
    layer = layer_for(configure(workspace, tag, attribution="fanotify"))
    child_writes(workspace.path("learned.json"))
    layer.on_change(learned_change("learned.json"))
    dropped = layer.decisions.messages()[-1]
    assert dropped.commit is False and dropped.trail[-1]["reason"].startswith("learned:")
    layer.on_change(learned_change("never-written.json"))  # unknown writer: dropped too
    assert layer.decisions.messages()[-1].trail[-1]["verdict"] == "UNKNOWN"
    user_writes(workspace.path("learned.json"), layer=layer)
    layer.on_change(learned_change("learned.json", seq=3))
    assert layer.to_content.messages()[-1].trail[-1]["verdict"] == "USER"
    assert layer.extra_status()["learned_drops"] == 2


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


