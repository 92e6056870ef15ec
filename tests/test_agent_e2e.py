"""The gauntlet, unprivileged: an ordinary user runs ``gitsieve run`` and, under
``gitsieve agent``, the churn simulator (``scripts/agent_sim.py run --shell-tools``: Python
writers, ``sh -c 'date > f'``, ``mv`` and ``rm`` children, committed files removed and
renamed away) for at least 20 s, while the same user edits the workspace.  The simulator's
command line matches no ``autonomous_processes`` pattern: only the journal tells.

Asserted: no path the agent wrote, moved or removed is committed (except the one agent file
the user then edited, committed with the user's content); every user edit reaches the
remote; no commit while only the agent runs (a quiet tail of at least 5 s); gitsieve stops
cleanly.  Twice: with gitsieve started first, and with gitsieve started only after the
agent had been running, one L2 worker killed with SIGKILL halfway through the edits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, USER_PYTHON, UserWorkspace, wait_for
from gitsieve.common.actor import control
from gitsieve.common.tools.runner import actor_ids

AGENT_SIM = ROOT / "scripts" / "agent_sim.py"
TIMEOUT = 30.0
AGENT_SECONDS = 20.0
QUIET_TAIL = 5.0
SEEDS = [f"work/seed-{index}.json" for index in range(4)]
CONFIG = """
[filter]
autonomous_processes = []
[debounce]
allow = 0.2
default = 0.3
rules = []
max_wait = 3
[limits]
cooldown_seconds = 0
max_commits_per_hour = 100000
max_commits_per_day = 100000
[health]
interval = 0.5
[watcher]
reconcile_interval = 5
"""


class Session:
    """One user's gitsieve run, agent and edits on a workspace they own."""

    def __init__(self, ws: UserWorkspace, base: Path):
        self.ws, self.user, self.base = ws, ws.user, base
        self.agent_log = base / "agent.jsonl"
        self.gitsieve_log = base / "gitsieve.log"
        self.gitsieve: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.agent_started = 0.0
        self.config = None

    # ----- processes -------------------------------------------------------------------
    def start_gitsieve(self) -> None:
        log = open(self.gitsieve_log, "ab")
        self.gitsieve = self.user.popen(*self._gitsieve_argv("run"), stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        self.config = self.ws.load()
        expected = set(actor_ids(self.config))
        wait_for(lambda: expected <= self.running(), TIMEOUT, 0.2, "every actor running")

    def _gitsieve_argv(self, *args: str) -> list[str]:
        return [USER_PYTHON, "-m", "gitsieve.common.tools.cli", *args,
                "--workspace", str(self.ws.root)] if args[0] == "run" else [
                USER_PYTHON, "-m", "gitsieve.common.tools.cli", *args]

    def running(self) -> set[str]:
        if self.gitsieve.poll() is not None:
            raise AssertionError(f"gitsieve exited {self.gitsieve.returncode}:\n"
                                 + self.gitsieve_log.read_text(errors="replace")[-3000:])
        found = set()
        for actor_id in control.known_actors(self.config):
            try:
                if control.request(self.config, actor_id, "status",
                                   timeout=0.5).data.get("state") == "running":
                    found.add(actor_id)
            except control.Unreachable:
                continue
        return found

    def status(self, actor_id: str) -> dict:
        return control.request(self.config, actor_id, "status", timeout=2.0).data

    def pid_of(self, actor_id: str) -> int | None:
        try:
            return self.status(actor_id).get("pid")
        except control.Unreachable:
            return None  # restarting

    def start_agent(self) -> None:
        sim = [USER_PYTHON, str(AGENT_SIM), "run", "--name", "agent-under-test",
               "--workspace", str(self.ws.root), "--duration", "120", "--interval", "0.3",
               "--dir", "work", "--child-file", "work/stamp.txt", "--shell-tools",
               "--log", str(self.agent_log)]
        for seed in SEEDS[:2]:
            sim += ["--remove", seed]
        for seed in SEEDS[2:]:
            sim += ["--move", seed]
        self.agent = self.user.popen(
            *self._gitsieve_argv("agent", "--workspace", str(self.ws.root), "--", *sim),
            stdout=subprocess.DEVNULL, stderr=open(self.base / "agent.err", "wb"))
        self.agent_started = time.monotonic()
        wait_for(lambda: len(self.agent_entries()) >= 6, TIMEOUT, message="the agent's rounds")

    def agent_entries(self) -> list[dict]:
        if not self.agent_log.exists():
            return []
        return [json.loads(line) for line in self.agent_log.read_text().splitlines()]

    def stop(self) -> None:
        """SIGTERM to the user's process under runuser (runuser itself would report the
        signal, not its child's status), SIGKILL to the group if it does not end."""
        for proc in (self.agent, self.gitsieve):
            if proc is None or proc.poll() is not None:
                continue
            try:
                targets = psutil.Process(proc.pid).children() or [psutil.Process(proc.pid)]
                for target in targets:
                    target.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                continue  # ended meanwhile
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # ----- the user's side ------------------------------------------------------------
    def remote(self, path: str) -> str | None:
        result = self.user.run("git", "-C", str(self.ws.remote), "show", f"main:{path}")
        return result.stdout if result.returncode == 0 else None

    def synced(self, path: str, content: str | None) -> None:
        wait_for(lambda: self.remote(path) == content, TIMEOUT, 0.1,
                 f"{path!r} on the remote with the user's content")

    def edit(self, path: str, text: str) -> None:
        self.ws.write(path, text)
        self.synced(path, text)


def prepare(ws: UserWorkspace) -> str:
    ws.config(CONFIG)
    for index in range(3):
        ws.write(f"notes/user-{index}.md", f"note {index}\n")
    for seed in SEEDS:
        ws.write(seed, json.dumps({"seed": seed}) + "\n")
    subprocess.run(["chown", "-R", f"{ws.user.uid}:{ws.user.gid}", str(ws.root)], check=True)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "setup")
    ws.git("push", "-q", "origin", "main")
    return ws.git("rev-parse", "HEAD").strip()


def user_edits(session: Session, halfway=None) -> set[str]:
    """The person's edits, each waited for on the remote; the paths they changed."""
    session.edit("notes/user-0.md", "note 0, edited while the agent works\n")
    session.edit("notes/new-a.md", "a new note\n")
    # a file the agent wrote a while ago: the user's version is the user's
    agent_file = next(entry["path"] for entry in session.agent_entries()
                      if entry["kind"] == "new")
    session.edit(agent_file, '{"edited": "by the user"}\n')
    if halfway is not None:
        halfway()
    session.ws.user.run("rm", str(session.ws.root / "notes/user-1.md")).check_returncode()
    session.synced("notes/user-1.md", None)
    session.ws.user.run("mv", str(session.ws.root / "notes/user-2.md"),
                        str(session.ws.root / "notes/renamed.md")).check_returncode()
    session.synced("notes/renamed.md", "note 2\n")
    session.synced("notes/user-2.md", None)
    session.edit("notes/new-b.md", "another note\n")
    return {"notes/user-0.md", "notes/new-a.md", agent_file, "notes/user-1.md",
            "notes/user-2.md", "notes/renamed.md", "notes/new-b.md"}


def committed_since(session: Session, since: str) -> set[str]:
    out = session.user.run("git", "-C", str(session.ws.remote), "log", "--format=",
                           "--name-only", "--no-renames", f"{since}..main").stdout
    return {line for line in out.splitlines() if line}


def quiet_tail(session: Session) -> tuple[str, int, float]:
    """Let only the agent run: at least QUIET_TAIL s, and the agent at least AGENT_SECONDS
    in all.  The remote head before, the agent's changes meanwhile, and the seconds."""
    head = session.ws.remote_head()
    before = len(session.agent_entries())
    tail = max(QUIET_TAIL, AGENT_SECONDS - (time.monotonic() - session.agent_started))
    time.sleep(tail)
    return head, len(session.agent_entries()) - before, tail


def check(session: Session, setup: str, edited: set[str], head_before_tail: str,
          tail_changes: int, tail_seconds: float) -> None:
    entries = session.agent_entries()
    agent_paths = {entry["path"] for entry in entries if entry["path"]}
    committed = committed_since(session, setup)
    leaked = sorted(committed & agent_paths - edited)
    tail_commits = session.user.run("git", "-C", str(session.ws.remote), "rev-list",
                                    "--count", f"{head_before_tail}..main").stdout.strip()
    commits = session.user.run("git", "-C", str(session.ws.remote), "rev-list", "--count",
                               f"{setup}..main").stdout.strip()
    print(f"gauntlet: {len(entries)} agent changes on {len(agent_paths)} paths; agent paths "
          f"committed: {len(leaked)}; user edits synced: {len(edited & committed)}/"
          f"{len(edited)}; commits: {commits}; commits in the quiet tail "
          f"({tail_seconds:.1f} s, {tail_changes} agent changes): {tail_commits}")
    assert tail_changes > 10, "the agent was idle during the quiet tail"
    assert session.ws.remote_head() == head_before_tail, (
        "a commit while only the agent ran:\n" + session.user.run(
            "git", "-C", str(session.ws.remote), "log", "--stat",
            f"{head_before_tail}..main").stdout)
    if leaked:  # what each layer said, and the agent's own log of those paths
        explained = control.request(session.config, "debouncer", "explain",
                                    {"paths": leaked}, timeout=2.0).data
        own = [entry for entry in entries if entry["path"] in leaked]
        log = session.gitsieve_log.read_text(errors="replace")
        raise AssertionError(f"agent paths committed: {leaked}\nexplain: {explained}\n"
                             f"agent log: {own[-20:]}\ngitsieve log: {log[-6000:]}")
    assert edited <= committed
    removed = {entry["path"] for entry in entries if entry["kind"] in ("rm", "mv-away")}
    assert set(SEEDS) <= removed, "the agent did not get to the committed files"
    for seed in SEEDS:  # the agent's removals and renames of committed files stay local
        assert session.remote(seed) == json.dumps({"seed": seed}) + "\n"
    claims = sum(session.status(f"l2-{index:02d}")["agent_journal"].get("agent-journal", 0)
                 for index in range(1, session.config.l2_workers + 1))
    assert claims > 0, "L2 never used the journal"


@pytest.mark.timeout(240)
def test_an_agent_under_gitsieve_agent_beside_user_edits(user_workspace):
    ws = user_workspace
    setup = prepare(ws)
    session = Session(ws, ws.root.parent)
    try:
        session.start_gitsieve()
        session.start_agent()
        edited = user_edits(session)
        check(session, setup, edited, *quiet_tail(session))
    finally:
        session.stop()
    assert session.gitsieve.returncode == 0, session.gitsieve_log.read_text()[-3000:]


@pytest.mark.timeout(240)
def test_gitsieve_started_after_the_agent_and_an_l2_worker_killed(user_workspace):
    ws = user_workspace
    setup = prepare(ws)
    session = Session(ws, ws.root.parent)

    def kill_an_l2_worker() -> None:
        victim = session.status("l2-01")["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: session.pid_of("l2-01") not in (None, victim), TIMEOUT, 0.2,
                 "the L2 worker restarted")

    try:
        session.start_agent()
        time.sleep(3.0)  # the agent writes, moves and removes before gitsieve runs
        assert any(entry["kind"] == "rm" for entry in session.agent_entries())
        session.start_gitsieve()
        edited = user_edits(session, halfway=kill_an_l2_worker)
        check(session, setup, edited, *quiet_tail(session))
    finally:
        session.stop()
    assert session.gitsieve.returncode == 0, session.gitsieve_log.read_text()[-3000:]


MARK_CONFIG = """
[filter]
attribution = "psutil"
[debounce]
allow = 2
default = 2
rules = []
[limits]
cooldown_seconds = 0
[health]
interval = 0.5
"""


@pytest.mark.timeout(120)
def test_a_hook_marking_a_version_after_it_was_judged_keeps_it_off_the_remote(
        user_workspace):
    """The README's post-write hook runs `gitsieve mark --system` after the agent's write,
    by when L2 had judged the change (about 40 ms after it): the mark was never read for
    it, and the agent's file was committed and pushed as the person's (fails before).
    Now the running watcher sends marked paths again and the debouncer withdraws them."""
    ws = user_workspace
    ws.config(MARK_CONFIG)
    subprocess.run(["chown", f"{ws.user.uid}:{ws.user.gid}", str(ws.path(".gitsieve.toml"))],
                   check=True)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    session = Session(ws, ws.root.parent)
    try:
        session.start_gitsieve()
        ws.write("report.md", "the agent's report\n")
        wait_for(lambda: session.status("debouncer")["pending"] == 1, TIMEOUT, 0.05,
                 "the change judged, its commit pending")
        marked = ws.user.run(*session._gitsieve_argv("mark", "--workspace", str(ws.root),
                                                      "--system", str(ws.path("report.md"))))
        assert marked.returncode == 0, marked.stderr
        wait_for(lambda: session.status("debouncer")["pending"] == 0, 5.0, 0.05,
                 "the pending commit withdrawn")
        session.edit("notes.md", "the person's note\n")  # due after report.md would have been
        assert session.remote("report.md") is None
        assert session.status("debouncer")["decisions_skip"] >= 1
    finally:
        session.stop()
    assert session.gitsieve.returncode == 0, session.gitsieve_log.read_text()[-3000:]
