"""An ordinary user's gitsieve with exact attribution from ``gitsieve helper`` (issue 8).

The helper runs as root on a temporary socket; the user's ``gitsieve run`` (the system
python, gitsieve installed for that user, default quiet periods and limits) finds it through
``[filter] helper_socket``.  Beside the user's edits, a simulated agent run by the same user
(``scripts/agent_sim.py run``) creates new JSON files with real content, rewrites a
file's timestamp on every round and again on every HEAD change, and has short-lived children
rewrite another.  Asserted: the L2 workers say they attribute through the helper; every user
edit reaches the remote; no agent file is committed; once only the agent runs, no commit is
made; a helper restart is survived (L2 reconnects; a write in the gap is judged UNKNOWN, and
still synced by its content because it is the user's real edit).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest
from test_helper import Helper

from conftest import USER_PYTHON, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the helper runs as root")

CHURN_SECONDS = 20.0
QUIET_TAIL = 8.0
SLOW_EDIT = 10.0  # seconds after the churn: an edit slower than this is reported
REACTIVE = ".claude/contexts/head-status.md"   # rewritten on every HEAD change
STAMPED = ".claude/contexts/stamp.txt"         # rewritten by short-lived children
TIMEOUT = 60.0


def remote_git(ws, *args: str) -> subprocess.CompletedProcess:
    """git on the bare remote, as its owner (git refuses root in another user's repo)."""
    return ws.user.run("git", "-C", str(ws.remote), *args)


def remote_file(ws, path: str) -> str | None:
    result = remote_git(ws, "show", f"main:{path}")
    return result.stdout if result.returncode == 0 else None


def remote_head(ws) -> str:
    return remote_git(ws, "rev-parse", "main").stdout.strip()


def committed_since(ws, since: str) -> list[str]:
    out = remote_git(ws, "log", "--format=", "--name-only", f"{since}..main").stdout
    return [line for line in out.splitlines() if line]


def as_user(user, *args: str) -> subprocess.CompletedProcess:
    """``gitsieve ARGS`` run as ``user``."""
    return subprocess.run(user.gitsieve(*args), capture_output=True, text=True, timeout=60)


def status_of(user, ws) -> dict:
    done = as_user(user, "status", "--workspace", str(ws.root), "--json")
    return json.loads(done.stdout) if done.returncode == 0 else {}


def l2_workers(user, ws) -> list[dict]:
    return [actor for actor in status_of(user, ws).get("actors", [])
            if actor["name"].startswith("l2")]


@pytest.fixture
def helper_socket():
    run_dir = Path(tempfile.mkdtemp(prefix="gitsieve-helper-", dir="/tmp"))
    run_dir.chmod(0o755)
    yield run_dir / "helper.sock"
    subprocess.run(["rm", "-rf", str(run_dir)])


@pytest.fixture
def helpers(helper_socket):
    """Helpers started on ``helper_socket`` (the first one now), all stopped afterwards."""
    started = [Helper(helper_socket)]
    yield started
    for helper in started:
        helper.stop()


def test_churn_beside_user_edits_with_the_helper(ordinary_user, user_workspace, helper_socket,
                                                 helpers, tmp_path):
    user, ws = ordinary_user, user_workspace
    tag = f"claude-autonomous-e2e-{uuid.uuid4().hex[:8]}"
    ws.write(".gitsieve.toml", f'[filter]\nautonomous_processes = ["{tag}"]\n'
                               f'helper_socket = "{helper_socket}"\n'
                               '[workers]\nl2 = 2\n')  # scaled: each worker its own client
    ws.write(".claude/sync-filter/system-patterns.conf",
             "ANALYZE:\\.claude/contexts/.*:context files\n")
    ws.write(REACTIVE, "# Head status\n\nupdated: 2024-01-01T00:00:00.000000+00:00\n")
    ws.write(STAMPED, "updated: 2024-01-01T00:00:00.000000000\n")
    ws.write("notes/plan.md", "plan\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "setup")
    ws.git("push", "-q", "origin", "main")
    setup = remote_head(ws)
    log_path = tmp_path / "gitsieve.log"
    agent_log = ws.root.parent / "agent.jsonl"
    gitsieve = agent = None
    with open(log_path, "wb") as log:
        gitsieve = subprocess.Popen(user.gitsieve("run", "--workspace", str(ws.root)),
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        def running() -> list[dict]:
            assert gitsieve.poll() is None, log_path.read_text()
            workers = [w for w in l2_workers(user, ws) if w.get("state") == "running"]
            return workers if len(workers) == 2 else None  # [workers] l2 = 2
        workers = wait_for(running, TIMEOUT, 0.5, "both L2 workers running")
        assert {w["attribution"] for w in workers} == {"helper"}
        assert all(w["helper_connected"] for w in workers)
        text = as_user(user, "status", "--workspace", str(ws.root)).stdout
        assert "l2-01 helper (connected), l2-02 helper (connected)" in text
        assert log_path.read_text().count("attribution by gitsieve helper") == len(workers)

        agent_sim = user.site / "share" / "gitsieve" / "scripts" / "agent_sim.py"
        agent = user.popen(USER_PYTHON, str(agent_sim), "run", "--name", tag, "--workspace", str(ws.root),
                           # It outlives every wait below; the finally block stops it.
                           "--duration", "900",
                           "--interval", "0.4", "--shared", REACTIVE, "--child-file",
                           STAMPED, "--log", str(agent_log))
        # The user's edits while the agent churns: new notes with real content, and edits
        # of a committed file, one every two seconds for CHURN_SECONDS.
        edits: dict[str, str] = {}
        started = time.monotonic()
        number = 0
        while time.monotonic() - started < CHURN_SECONDS:
            number += 1
            path = f"notes/note-{number:02d}.md" if number % 2 else "notes/plan.md"
            edits[path] = f"plan\nstep {number}: {uuid.uuid4().hex}\n"
            ws.write(path, edits[path])
            time.sleep(2.0)
        for path, text in edits.items():
            waited = time.monotonic()
            wait_for(lambda: remote_file(ws, path) == text, TIMEOUT,
                     message=f"the user's {path} on the remote")
            waited = time.monotonic() - waited
            if waited > SLOW_EDIT:  # synced, but slowly: say where it waited
                explained = as_user(user, "explain", path, "--workspace", str(ws.root)).stdout
                warnings.warn(f"{path} took {waited:.1f}s more to reach the remote:\n"
                              f"{explained}")
        # Only the agent now: it goes on writing, and reacts to the last commits.
        settled = remote_head(ws)
        time.sleep(QUIET_TAIL)
        assert agent.poll() is None, "the agent stopped early: the tail tested nothing"
        assert remote_head(ws) == settled, (
            "commits while only the agent ran: "
            f"{committed_since(ws, settled)}\n{log_path.read_text()[-3000:]}")
        written = [json.loads(line) for line in agent_log.read_text().splitlines()]
        agent_files = {entry["path"] for entry in written if entry["kind"] == "new"}
        committed = set(committed_since(ws, setup))
        assert len(agent_files) >= 40
        leaked = sorted(agent_files & committed)
        if leaked:  # what each layer said, and the log, for the next time it happens
            explained = as_user(user, "explain", leaked[0], "--workspace", str(ws.root)).stdout
            raise AssertionError(f"agent files committed: {leaked}\n{explained}\n"
                                 f"{log_path.read_text()[-5000:]}")
        assert not {REACTIVE, STAMPED} & committed
        assert any(entry["kind"] == "react" for entry in written)
        assert committed <= set(edits)

        # A helper restart: L2 reconnects; a write in the gap is UNKNOWN, and still synced.
        assert helpers[0].stop() == 0
        wait_for(lambda: all(not w.get("helper_connected") for w in l2_workers(user, ws)),
                 TIMEOUT, 0.2, "the L2 workers noticing the helper is gone")
        ws.write("notes/during-gap.md", "written while the helper was away\n")
        helpers.append(Helper(helper_socket))
        wait_for(lambda: all(w.get("helper_connected") and w.get("helper_reconnects") == 1
                             for w in l2_workers(user, ws)), TIMEOUT, 0.5,
                 "the L2 workers reconnecting")
        wait_for(lambda: remote_file(ws, "notes/during-gap.md"), TIMEOUT,
                 message="the gap write on the remote")
        explained = json.loads(as_user(user, "explain", "--workspace", str(ws.root), "--json",
                                        "notes/during-gap.md").stdout)
        [l2] = [step for step in explained["decision"]["trail"] if step["layer"] == "L2"]
        assert (l2["verdict"], l2["reason"]) == ("UNKNOWN", "writer-unknown")
        assert "helper was not connected" in l2["matched_by"]
    finally:
        for proc in (agent, gitsieve):
            if proc is not None and proc.poll() is None:
                stop_under_runuser(proc)
    assert gitsieve.returncode == 0, log_path.read_text()[-3000:]


def stop_under_runuser(proc: subprocess.Popen) -> None:
    """SIGTERM to the program runuser runs (runuser passes on its exit status), then wait;
    the whole session is killed if it does not stop."""
    import psutil
    for child in psutil.Process(proc.pid).children():
        child.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
