"""L2 over the agent journal (common.judge.attribution.journal): the claims a journal
supports, pure over records; then real commands run under ``gitsieve agent`` judged by the
real ProcessJudge (psutil base), and the combination with a base that names writers."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import USER_PYTHON
from gitsieve.common.agent.journal import CTIME_SLACK, WRITE_WINDOW, Op, Record
from gitsieve.common.judge.attribution.base import Attribution
from gitsieve.common.judge.attribution import journal as journal_module
from gitsieve.common.judge.attribution.journal import AgentJournal, JournalOverlay
from gitsieve.common.judge.learning import Learner
from gitsieve.common.judge.pattern import observe
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    L2Reason,
    Mode,
    ProcessAction,
    Technique,
    Writer,
)
from gitsieve.common.protocol.trail import ProcessStep, reason_text
from gitsieve.common.tools import ctl


def record(op: Op, path: str, wall: float, seq: int, pid: int = 7,
           digest: str | None = None) -> Record:
    return Record(op, path, pid, wall, wall, 99, seq, digest)


@pytest.fixture
def journal(tmp_path):
    """An AgentJournal fed by hand; ``held`` is the (pid, path) pairs open for writing."""
    held: set[tuple[int, str]] = set()
    made = AgentJournal(tmp_path / "journal", tmp_path,
                        holds_open=lambda pid, path: (pid, path) in held)
    made.held = held
    return made


NO_BLOB = lambda: None  # noqa: E731


def test_a_version_is_the_agents_while_its_ctime_is_in_the_records_window(journal):
    journal.touches.add([record(Op.CREATE, "a", 100.0, 1)])
    assert journal.claim_version("a", 100.001, NO_BLOB).record.op is Op.CREATE
    assert journal.claim_version("a", 100.0 - CTIME_SLACK / 2, NO_BLOB) is not None
    # changed later: someone else's version; earlier: the agent opened it, wrote nothing
    assert journal.claim_version("a", 100.0 + WRITE_WINDOW + 0.01, NO_BLOB) is None
    assert journal.claim_version("a", 90.0, NO_BLOB) is None


def test_a_closed_record_extends_the_window_and_a_held_file_is_always_the_agents(journal):
    journal.touches.add([record(Op.CREATE, "log", 100.0, 1), record(Op.HELD, "log", 100.05, 2),
                         record(Op.CLOSED, "log", 130.0, 3)])
    assert journal.claim_version("log", 129.9, NO_BLOB).action is ProcessAction.CREATED
    assert journal.claim_version("log", 131.0, NO_BLOB) is None
    journal.touches.add([record(Op.OPEN_WRITE, "log", 200.0, 4),
                         record(Op.HELD, "log", 200.05, 5, pid=8)])
    assert journal.claim_version("log", 5000.0, NO_BLOB) is None  # its writer is gone...
    journal.held.add((8, "log"))  # ...but its process still has it open for writing
    claim = journal.claim_version("log", 5000.0, NO_BLOB)
    assert claim.action is ProcessAction.HELD_OPEN and claim.record.pid == 8


def test_a_version_read_before_the_agents_next_write_open_was_recorded_stays_its(journal):
    # L2 read the version the 100.0 open wrote; the agent's next open (101.0) was recorded
    # before L2 read the journal (a file rewritten every 0.3-1 s, a loaded machine)
    journal.touches.add([record(Op.OPEN_WRITE, "stamp", 100.0, 1),
                         record(Op.OPEN_WRITE, "stamp", 101.0, 2)])
    assert journal.claim_version("stamp", 100.01, NO_BLOB).record.seq == 1
    assert journal.claim_version("stamp", 101.01, NO_BLOB).record.seq == 2
    assert journal.claim_version("stamp", 100.6, NO_BLOB) is None  # between: not the agent's
    journal.touches.add([record(Op.UNLINK, "stamp", 102.0, 3)])
    assert journal.claim_version("stamp", 100.01, NO_BLOB) is None  # removed since


def test_the_overlay_reads_the_version_before_the_journal(tmp_path):
    """The agent writes its next version while L2 reads the journal: the version L2 saw
    was the agent's, and is judged so (read the other way round, the new version would
    be judged against a journal that lacks its record)."""
    target = tmp_path / "stamp.txt"
    target.write_text("v1\n")
    journal = AgentJournal(tmp_path / "journal", tmp_path, holds_open=lambda *_: False)
    pending = [record(Op.OPEN_WRITE, "stamp.txt", os.lstat(target).st_ctime, 1)]

    def refresh() -> None:  # the journal as read now, then the agent's next write
        journal.touches.add(pending)
        pending.clear()
        time.sleep(WRITE_WINDOW + 0.1)
        pending.append(record(Op.OPEN_WRITE, "stamp.txt", time.time(), 2))
        target.write_text("v2\n")

    journal.refresh = refresh
    overlay = JournalOverlay(None, NoWriter(), journal)
    found = overlay.attribute(target, time.time())
    assert found is not None and found.writer == Writer.SYSTEM
    assert found.pid == 7 and found.technique is Technique.AGENT_JOURNAL
    overlay.close()


def test_a_directory_the_agent_moved_carries_its_files(journal):
    journal.touches.add([record(Op.RENAME_TO, "build", 100.0, 1)])
    assert journal.claim_version("build/deep/x.o", 50.0, NO_BLOB).action is (
        ProcessAction.MOVED_INTO_PLACE)
    assert journal.claim_version("build/deep/x.o", 101.0, NO_BLOB) is None


def test_a_mark_claims_exactly_the_marked_version(journal):
    journal.touches.add([record(Op.MARK, "notes.md", 100.0, 1, digest="ab" * 20)])
    assert journal.claim_version("notes.md", 500.0, lambda: "ab" * 20).technique is (
        Technique.AGENT_MARK)
    assert journal.claim_version("notes.md", 500.0, lambda: "cd" * 20) is None


def test_an_absence_is_the_agents_when_its_removal_came_last(journal):
    journal.touches.add([record(Op.CREATE, "a", 100.0, 1), record(Op.UNLINK, "a", 101.0, 2),
                         record(Op.UNLINK, "b", 100.0, 3), record(Op.CREATE, "b", 101.0, 4),
                         record(Op.RENAME_FROM, "old", 100.0, 5),
                         record(Op.MARK, "gone", 100.0, 6)])
    assert journal.claim_absence("a").action is ProcessAction.REMOVED
    assert journal.claim_absence("b") is None  # created again by the agent since
    assert journal.claim_absence("old/x").action is ProcessAction.MOVED_AWAY
    assert journal.claim_absence("gone").technique is Technique.AGENT_MARK
    assert journal.claim_absence("never") is None


# ----- real commands under `gitsieve agent`, judged by the real ProcessJudge -------------
def agent(workspace, *cmd: str) -> None:
    subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "agent", "--workspace",
                    str(workspace.root), "--", *cmd], cwd=workspace.root, check=True,
                   timeout=60)


def judge(judge_: ProcessJudge, workspace, path: str, kind=ChangeKind.WRITE) -> ProcessStep:
    change = observe(path, kind, 1, 1.0, time.time(), RuleCache(workspace.load().patterns_file))
    return judge_.judge(change)


@pytest.fixture
def l2(workspace):
    workspace.config('[filter]\nattribution = "psutil"\nautonomous_processes = []\n')
    made = ProcessJudge(workspace.load())
    yield made
    made.close()


SLOW_REDIRECT = "import time; time.sleep(0.6); print('result')"  # buffered: written at exit


def test_what_the_agent_wrote_is_system_and_your_later_edits_are_not(workspace, l2):
    workspace.write("committed.txt", "v1\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "committed")
    agent(workspace, "sh", "-c",
          f"date > a.txt; echo x > b.txt; mkdir d; echo y > d/c; mv d e; rm committed.txt; "
          f"{sys.executable} -c \"{SLOW_REDIRECT}\" > slow.txt")
    for path in ("a.txt", "b.txt", "e/c", "slow.txt"):
        step = judge(l2, workspace, path)
        assert (step.verdict, step.technique) == (Writer.SYSTEM, Technique.AGENT_JOURNAL), path
    removed = judge(l2, workspace, "committed.txt", ChangeKind.DELETE)
    assert (removed.verdict, removed.did) == (Writer.SYSTEM, ProcessAction.REMOVED)
    assert reason_text(removed).startswith("deleted: removed by autonomous process")
    time.sleep(WRITE_WINDOW + 0.1)
    workspace.write("b.txt", "mine\n")  # your edit of a file the agent wrote
    assert judge(l2, workspace, "b.txt").verdict == Writer.UNKNOWN  # on to L3
    # a fresh judge (a restarted worker, gitsieve started later) reads the same journal
    fresh = ProcessJudge(workspace.load())
    try:
        assert [judge(fresh, workspace, path).verdict for path in ("a.txt", "b.txt")] == [
            Writer.SYSTEM, Writer.UNKNOWN]
    finally:
        fresh.close()


def test_marked_versions_are_system_until_someone_changes_them(workspace, l2):
    workspace.write("notes.md", "agent's\n")
    workspace.write("other.md", "mine\n")
    subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "mark", "--system",
                    "notes.md", "gone.md"], cwd=workspace.root, check=True)
    step = judge(l2, workspace, "notes.md")
    assert (step.verdict, step.technique, step.did) == (Writer.SYSTEM, Technique.AGENT_MARK,
                                                        ProcessAction.MARKED)
    assert judge(l2, workspace, "gone.md", ChangeKind.DELETE).verdict == Writer.SYSTEM
    assert judge(l2, workspace, "other.md").verdict == Writer.UNKNOWN
    workspace.write("notes.md", "then mine\n")
    assert judge(l2, workspace, "notes.md").verdict == Writer.UNKNOWN


class NoWriter:
    """A base attributor that knows no writer (psutil without a sighting)."""

    mode = Mode.PSUTIL

    def attribute(self, abs_path, observed, since=0.0):
        return None

    attribute_removal = attribute

    def close(self) -> None:
        """Nothing held."""


class NamedWriter:
    """A base attributor that names one user process as the writer of everything."""

    mode = Mode.FANOTIFY

    def __init__(self, pid: int):
        self.pid = pid

    def attribute(self, abs_path, observed, since=0.0):
        return Attribution(Writer.USER, Technique.FANOTIFY, self.pid, "writer", 1.0,
                           writes_until=observed)

    attribute_removal = attribute

    def close(self) -> None:
        """Nothing held."""


def test_a_user_writer_named_by_the_base_makes_the_agents_version_unknown(workspace):
    config = workspace.load()
    agent(workspace, "sh", "-c", "echo agent > both.txt; echo $$ > agent.pid")
    agent_pid = int(workspace.path("agent.pid").read_text())
    base_says_user = JournalOverlay(config, NamedWriter(os.getpid()))
    found = base_says_user.attribute(workspace.path("both.txt"), time.time())
    step = found.evidence(ProcessStep(found.writer, L2Reason.IDENTIFIED, Mode.FANOTIFY))
    assert (step.verdict, step.reason) == (Writer.UNKNOWN, L2Reason.AGENT_AND_USER)
    assert "the agent (gitsieve agent) and by a user process" in reason_text(step)
    # the base named the agent's own process (exact modes see its writes as a user's)
    base_says_agent = JournalOverlay(config, NamedWriter(agent_pid))
    assert base_says_agent.attribute(workspace.path("both.txt"), time.time()).writer == (
        Writer.SYSTEM)
    for overlay in (base_says_user, base_says_agent):
        overlay.close()


def test_journal_verdicts_never_teach_a_path(workspace):
    workspace.config("[filter]\nlearn_after = 1\n")
    learner = Learner(workspace.load())
    step = ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.PSUTIL,
                       technique=Technique.AGENT_JOURNAL, pid=7, confidence=1.0)
    decision = Decision(path="a.json", kind=ChangeKind.WRITE, seq=1, epoch=1.0,
                        observed=time.time(), commit=False, action=Action.ANALYZE,
                        trail=(step,))
    assert learner.observe(decision) is None
    assert not Path(workspace.load().learned_file).exists()


def test_an_autonomous_process_in_the_workspace_outside_the_wrapper_is_named(
        workspace, tmp_path, monkeypatch, caplog):
    """psutil mode cannot tell an unwrapped agent's quick writes from the person's: each
    such process in the workspace is warned about once and shown in status; one under
    `gitsieve agent`, or working elsewhere, is not."""
    tag = f"gitsieve-unwrapped-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    workspace.config(f'[filter]\nattribution = "psutil"\nautonomous_processes = ["{tag}"]\n')
    monkeypatch.setattr(journal_module, "UNWRAPPED_SETTLE", 1.0)  # the wrapper's journal
    made = ProcessJudge(workspace.load())
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(60)", tag]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    procs = [subprocess.Popen(sleeper, cwd=workspace.root),
             subprocess.Popen(sleeper, cwd=elsewhere),
             subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "agent",
                               "--workspace", str(workspace.root), "--", *sleeper],
                              cwd=workspace.root)]
    unwrapped, away = procs[0].pid, procs[1].pid
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            made.tick(time.monotonic())
            wrapped = [pid for pid in made.attributor.cache.processes
                       if pid not in (unwrapped, away)]
            if unwrapped in made.attributor.unwrapped and wrapped and \
                    all(pid in made.attributor._looked_at for pid in (*wrapped, away)):
                break
            time.sleep(0.1)
        status = made.status()["unwrapped_autonomous"]
        assert [entry["pid"] for entry in status] == [unwrapped], status
        assert wrapped, "the wrapped process was never seen"
        warnings = [r.getMessage() for r in caplog.records if "outside `gitsieve agent`" in
                    r.getMessage()]
        assert len(warnings) == 1 and str(unwrapped) in warnings[0]
        made.tick(time.monotonic())
        assert len([r for r in caplog.records if "outside `gitsieve agent`" in
                    r.getMessage()]) == 1, "warned once"
        rendered = ctl.Status().render({
            "workspace": str(workspace.root), "health": None,
            "actors": [{"name": "l2-01", "state": "running", "pid": 1, "uptime": 1.0,
                        "messages_in": 0, "messages_out": 0, "errors": 0, "last_error": "",
                        "attribution": "psutil", "unwrapped_autonomous": status}]})
        assert f"(pid {unwrapped})" in rendered and "gitsieve agent -- CMD" in rendered
        procs[0].kill()
        procs[0].wait()
        deadline = time.monotonic() + 10
        while unwrapped in made.attributor.unwrapped and time.monotonic() < deadline:
            made.attributor.cache.refresh()
            made.tick(time.monotonic())
        assert made.status()["unwrapped_autonomous"] == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        made.close()


def test_a_wrapper_slow_to_write_its_journal_is_not_named_as_unwrapped(workspace,
                                                                        monkeypatch, caplog):
    """On a loaded machine `gitsieve agent` may take longer than the settling time to
    write its journal; its own command line names the agent, but it writes nothing and is
    never warned about. (Its child, once running, is judged by the journal as before.)"""
    tag = f"gitsieve-slow-wrapper-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    workspace.config(f'[filter]\nattribution = "psutil"\nautonomous_processes = ["{tag}"]\n')
    monkeypatch.setattr(journal_module, "UNWRAPPED_SETTLE", 0.5)
    made = ProcessJudge(workspace.load())
    # a wrapper still importing: its command line, no journal yet
    wrapper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "gitsieve.common.tools.cli", "agent", "--", "run", tag],
                               cwd=workspace.root)
    try:
        deadline = time.monotonic() + 20
        while wrapper.pid not in made.attributor._looked_at and time.monotonic() < deadline:
            made.attributor.cache.refresh()
            made.tick(time.monotonic())
            time.sleep(0.1)
        assert wrapper.pid in made.attributor._looked_at, "never looked at"
        assert made.status()["unwrapped_autonomous"] == []
        assert not [r for r in caplog.records if "outside `gitsieve agent`" in r.getMessage()]
    finally:
        wrapper.kill()
        wrapper.wait()
        made.close()


def test_the_wrapper_is_told_by_its_command_line():
    from gitsieve.common.judge.attribution.journal import runs_the_wrapper
    assert runs_the_wrapper(["/usr/local/bin/gitsieve", "agent", "--", "claude"])
    assert runs_the_wrapper(["python3", "-m", "gitsieve.common.tools.cli", "agent", "x"])
    assert not runs_the_wrapper(["python3", "agent.py", "gitsieve"])
    assert not runs_the_wrapper(["my-gitsieve", "agent"])
    assert not runs_the_wrapper(["agent"])
    assert not runs_the_wrapper([])


# Run as an ordinary user: root reads through any mode.
_BELOW_AN_UNREADABLE_DIRECTORY = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from gitsieve.common.judge.attribution.journal import AgentJournal, JournalOverlay

    class NoWriter:
        mode = "psutil"
        def attribute(self, abs_path, observed, since=0.0):
            return None
        attribute_removal = attribute
        def close(self):
            pass

    base = Path(sys.argv[1])
    (base / "secret").mkdir()
    (base / "secret" / "h.txt").write_text("hidden")
    os.chmod(base / "secret", 0)
    journal = AgentJournal(base / "journal", base, holds_open=lambda *_: False)
    overlay = JournalOverlay(None, NoWriter(), journal)
    try:
        print(overlay.attribute(base / "secret" / "h.txt", time.time()))
    finally:
        os.chmod(base / "secret", 0o755)
""")


def test_a_file_below_an_unreadable_directory_keeps_the_base_answer(ordinary_user):
    """A directory made unreadable (chmod 000) right after a write in it: L2's lstat
    raised PermissionError, the change was lost with a traceback, and the file reached the
    remote only at the next reconcile (fails before)."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-unreadable-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        os.chown(base, ordinary_user.uid, ordinary_user.gid)
        done = ordinary_user.run(USER_PYTHON, "-c", _BELOW_AN_UNREADABLE_DIRECTORY, str(base))
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"  # the base's answer: no writer known
