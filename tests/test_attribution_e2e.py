"""Attribution end to end, in both privilege modes: ``gitsieve run`` beside
``scripts/agent_sim.py run`` (its command line matches the config), which creates new JSON
files with real content in an ANALYZE area, rewrites the timestamp line of a file that also
holds user content, has short-lived children (``sh -c 'date > f'``) rewrite another file,
and reacts to every commit by stamping again.  Meanwhile the user edits the same areas.

Guaranteed in both modes (asserted): the user's edits reach the remote; the file both sides
write is committed exactly once, for the user's change, never for the later timestamp-only
rewrites; the children's timestamp file is never committed.
Exact mode only (asserted there): none of the agent's new JSON files is committed.  In
psutil mode a new file with real content, written and closed within milliseconds by an
autonomous process, is indistinguishable from a user's: it may be committed (not asserted).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, Gitsieve, create_workspace, git, wait_for

AGENT_SIM = ROOT / "scripts" / "agent_sim.py"
SHARED = ".claude/contexts/shared.md"
STAMPED = ".claude/contexts/stamp.txt"
TIMEOUT = 30.0


def remote_file(ws, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"main:{path}"], cwd=ws.remote,
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def commits_touching(ws, since: str, path: str) -> list[str]:
    out = git(ws.remote, "log", "--format=%H", f"{since}..main", "--", path)
    return out.split()


def remote_paths_since(ws, since: str) -> set[str]:
    out = git(ws.remote, "log", "--format=", "--name-only", f"{since}..main")
    return {line for line in out.splitlines() if line}


def edit_beside_the_agent(path) -> None:
    """Add the person's line to a file the agent stamps (read, substitute, write): an agent
    that read it just before this write and wrote just after loses the line, as it would a
    person's. The person sees that and types it again; so does this."""
    for _ in range(20):
        text = path.read_text()
        if "user line" not in text:
            path.write_text(text.replace("Shared notes\n", "Shared notes\nuser line\n"))
        time.sleep(0.5)  # longer than one stamping: a lost update has shown by now
        if "user line" in path.read_text():
            return
    raise AssertionError("the agent overwrote the person's line 20 times")


@pytest.mark.parametrize("mode", ["fanotify", "psutil"])
def test_agent_churn_is_never_committed_and_user_edits_are(tmp_path, mode):
    if mode == "fanotify" and os.geteuid() != 0:
        pytest.skip("exact attribution needs root")
    ws = create_workspace(tmp_path)
    tag = f"claude-autonomous-sim-{uuid.uuid4().hex[:8]}"
    ws.patterns("ANALYZE:\\.claude/contexts/.*:context files\n")
    ws.config(f"""
        [filter]
        autonomous_processes = ["{tag}"]
        attribution = "{mode}"
        process_cache_ttl = 0.5
        learning = false
        [debounce]
        allow = 0.3
        default = 0.6
        rules = []
        max_wait = 3
        [limits]
        max_commits_per_hour = 100000
        max_commits_per_day = 100000
        cooldown_seconds = 0
        [health]
        interval = 0.5
        [watcher]
        reconcile_interval = 0
    """)
    ws.write(SHARED, "Shared notes\n\nupdated: 2024-01-01T00:00:00.000000+00:00\n")
    ws.write(STAMPED, "updated: 2024-01-01T00:00:00.000000000\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "setup")
    ws.git("push", "-q", "origin", "main")
    setup = ws.head()
    gitsieve = Gitsieve(ws, tmp_path / "gitsieve.log")
    agent_log = tmp_path / "agent.jsonl"
    agent = None
    try:
        gitsieve.wait_running()
        agent = subprocess.Popen(
            [sys.executable, str(AGENT_SIM), "run", "--name", tag, "--workspace",
             str(ws.root), "--duration", "60", "--interval", "0.4", "--shared", SHARED,
             "--child-file", STAMPED, "--log", str(agent_log)])
        wait_for(lambda: agent_log.exists() and agent_log.read_text().count('"new"') >= 3,
                 TIMEOUT, message="the agent's first rounds")
        # The user's edits in the agent's areas.
        ws.write(".claude/contexts/user-plan.json",
                 json.dumps({"plan": ["write tests", "ship"], "owner": "me"}) + "\n")
        edit_beside_the_agent(ws.path(SHARED))
        wait_for(lambda: remote_file(ws, ".claude/contexts/user-plan.json"), TIMEOUT,
                 message="the user's new file on the remote")
        wait_for(lambda: "user line" in (remote_file(ws, SHARED) or ""), TIMEOUT,
                 message="the user's edit of the shared file on the remote")
        user_commit = git(ws.remote, "rev-parse", "main").strip()

        landed = time.time()

        def stamped_after_commit() -> bool:
            lines = [json.loads(line) for line in agent_log.read_text().splitlines()]
            stamps = [e for e in lines if e["kind"] == "stamp" and e["at"] > landed + 1]
            return len(stamps) >= 3 and sum(e["kind"] == "new" for e in lines) >= 12
        # The agent goes on: timestamp-only rewrites of the committed shared file, its
        # children's stamps, new files; and it reacts to every commit.
        wait_for(stamped_after_commit, TIMEOUT, message="agent rewrites after the commit")
        agent.terminate()
        agent.wait(10)
        # Let whatever the pipeline holds settle: nothing pending in the debouncer.
        from gitsieve.common.actor import control
        cfg = ws.load()
        wait_for(lambda: control.request(cfg, "debouncer", "status").data["pending"] == 0,
                 TIMEOUT, message="debouncer idle")
        written = [json.loads(line) for line in agent_log.read_text().splitlines()]
        committed = remote_paths_since(ws, setup)
        assert STAMPED not in committed, "a child's timestamp rewrite was committed"
        shared_commits = commits_touching(ws, setup, SHARED)
        assert len(shared_commits) == 1, (
            f"{SHARED} committed {len(shared_commits)} times:\n"
            + git(ws.remote, "log", "-p", f"{setup}..main", "--", SHARED))
        assert "user line" in remote_file(ws, SHARED)
        assert any(entry["kind"] in ("stamp", "react") for entry in written)
        if mode == "fanotify":
            agent_files = {entry["path"] for entry in written if entry["kind"] == "new"}
            assert agent_files and not (agent_files & committed), (
                f"agent files committed: {sorted(agent_files & committed)}")
            assert committed <= {SHARED, ".claude/contexts/user-plan.json"}
        assert user_commit in git(ws.remote, "rev-list", "main")
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        code, _ = gitsieve.stop()
    assert code == 0, gitsieve.log()[-3000:]
