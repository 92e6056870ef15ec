"""A reconcile long after an autonomous process wrote a file must not commit it.

The periodic reconcile (and the ones after an actor restart, and `actorctl flush`) sends
every dirty path again.  Judged again seconds later, an agent's untracked file has no write
left in the exact techniques' lookback (nor in the sampler's sight), so L2 said UNKNOWN and
L3 committed it as a new file: after any commit, within one reconcile interval.  The
watcher now keeps the version a SYSTEM verdict judged and does not send it again while it
is unchanged.  Both attribution modes, as root; a real ``gitsieve run``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from conftest import FAST_CONFIG, Gitsieve, create_workspace, git, wait_for
from gitsieve.common.actor import control

AGENT = textwrap.dedent("""
    import os, sys, time, setproctitle
    setproctitle.setproctitle(sys.argv[1])
    for name in sys.argv[3:]:
        with open(os.path.join(sys.argv[2], name), "w") as out:
            out.write('{"analysis": "%s", "findings": [1, 2, 3]}\\n' % name)
            out.flush()
            time.sleep(1.5)  # held open: the unprivileged sampler sees it too
""")


def watcher_status(ws) -> dict:
    return control.request(ws.load(), "watcher", "status", timeout=5).data


def committed(ws) -> set[str]:
    out = git(ws.remote, "log", "--format=", "--name-only", "main")
    return {line for line in out.splitlines() if line}


def agent_workspace(tmp_path, mode: str, extra: str = ""):
    """A pushed workspace whose config names a fresh agent tag and the attribution mode;
    (workspace, tag)."""
    ws = create_workspace(tmp_path)
    tag = f"claude-autonomous-{uuid.uuid4().hex[:8]}"
    ws.config(FAST_CONFIG + f"""
[filter]
autonomous_processes = ["{tag}"]
attribution = "{mode}"
process_cache_ttl = 0.5
""" + extra)
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-q", "-m", "config")
    git(ws.root, "push", "-q", "origin", "main")
    return ws, tag


@pytest.mark.parametrize("mode", ["fanotify", "psutil"])
def test_a_reconcile_after_a_commit_leaves_the_agents_files_alone(tmp_path, mode):
    if mode == "fanotify" and os.geteuid() != 0:
        pytest.skip("exact attribution needs root")
    ws, tag = agent_workspace(tmp_path, mode, "[watcher]\nreconcile_interval = 1\n")
    gitsieve = Gitsieve(ws, tmp_path / "gitsieve.log")
    try:
        gitsieve.wait_running()
        (ws.root / "out").mkdir()
        files = [f"agent-{number}.json" for number in range(2)]
        subprocess.run([sys.executable, "-c", AGENT, tag, str(ws.root / "out"), *files],
                       check=True, timeout=30)
        time.sleep(3)  # judged: SYSTEM, and out of every lookback
        (ws.root / "notes.md").write_text("the person's note\n")  # HEAD moves
        wait_for(lambda: "notes.md" in committed(ws), 30, 0.2, "the person's note pushed")
        reconciles = watcher_status(ws)["reconciles"]
        wait_for(lambda: watcher_status(ws)["reconciles"] >= reconciles + 3, 30, 0.2,
                 "three reconciles after the commit")
        time.sleep(1.5)  # what they sent is decided and, wrongly, committed by now
        leaked = sorted({f"out/{name}" for name in files} & committed(ws))
        assert not leaked, f"agent files committed at a reconcile: {leaked}\n{gitsieve.log()}"
        assert watcher_status(ws)["reconcile_settled"] > 0
    finally:
        code, _ = gitsieve.stop()
    assert code == 0


def test_a_restart_leaves_the_agents_untracked_files_alone(tmp_path):
    """The settled versions outlive the run: after gitsieve restarts, its first reconcile
    sends every dirty path, and an agent's untracked file, judged SYSTEM in the earlier run
    and unchanged since, must not be committed as a new file (before, the memory was lost
    with the run).  Unprivileged attribution, the mode with the least to go on."""
    ws, tag = agent_workspace(tmp_path, "psutil")
    files = [f"agent-{number}.json" for number in range(2)]
    first = Gitsieve(ws, tmp_path / "first.log")
    try:
        first.wait_running()
        (ws.root / "out").mkdir()
        subprocess.run([sys.executable, "-c", AGENT, tag, str(ws.root / "out"), *files],
                       check=True, timeout=30)
        wait_for(lambda: watcher_status(ws)["settled"] >= len(files), 30, 0.2,
                 "the agent's files judged and settled")
    finally:
        code, _ = first.stop()
    assert code == 0
    second = Gitsieve(ws, tmp_path / "second.log")
    try:
        second.wait_running()
        (ws.root / "notes.md").write_text("the person's note\n")
        wait_for(lambda: "notes.md" in committed(ws), 30, 0.2, "the person's note pushed")
        time.sleep(1.5)  # the start's reconcile: what it sent is decided by now
        leaked = sorted({f"out/{name}" for name in files} & committed(ws))
        assert not leaked, f"agent files committed after a restart: {leaked}\n{second.log()}"
        assert watcher_status(ws)["reconcile_settled"] >= len(files)
    finally:
        code, _ = second.stop()
    assert code == 0
