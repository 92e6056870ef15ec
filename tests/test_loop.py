"""The loop breaker (common.judge.loop): reactive writers are held, editors never are.

The pure judge is driven by a small discrete-time model of the pipeline around it: writers
change files, the Debounce judge (the real one) releases paths after their quiet period
unless the loop judge probes, a commit moves HEAD a little later, and a reactive writer
rewrites its file shortly after each HEAD move.  The debouncer actor's wiring (held paths
never batched, explain, status, forget, persistence) is tested with its fake sockets."""
from __future__ import annotations

import dataclasses

import random
import time

import pytest

from conftest import FakeSocket
from gitsieve.actors import debouncer as debouncer_module
from gitsieve.actors.debouncer import Debouncer, head_moved_at
from gitsieve.common.judge.debounce import Debounce
from gitsieve.common.judge.loop import LOOPS_FILE, LoopJudge
from gitsieve.common.protocol.messages import Batch, CommitReport, Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    Hold,
    L2Reason,
    L3Reason,
    Mode,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, ProcessStep

DEFAULTS = "[debounce]\nallow = 0.5\ndefault = 1\nmax_wait = 5\n"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


_seq = iter(range(1, 10_000_000))


def change(path: str, observed: float, writer: Writer | None = Writer.UNKNOWN,
           commit: bool = True, action: Action = Action.ANALYZE,
           open_since: float = 0.0,
           l2_reason: L2Reason = L2Reason.NO_AUTONOMOUS_WRITER_SEEN,
           new: bool = False) -> Decision:
    trail = ()
    if writer is not None:
        trail = (ProcessStep(writer, l2_reason, Mode.PSUTIL,
                             pid=4242 if writer == Writer.USER else None),)
    if commit:
        trail += (ContentStep(Content.USER,
                              L3Reason.NEW_FILE if new else L3Reason.CONTENT_CHANGED),)
    return Decision(path=path, kind=ChangeKind.WRITE, seq=next(_seq), epoch=1.0,
                    observed=observed, commit=commit, action=action, trail=trail,
                    open_since=open_since)


@pytest.fixture
def config(workspace):
    workspace.config(DEFAULTS)
    return workspace.load()


def judge_for(config, clock) -> LoopJudge:
    return LoopJudge(config, clock=clock, rng=random.Random(7))


class Pipeline:
    """Writers -> debounce (real judge) -> commits, in steps of ``STEP`` seconds.

    ``latency``: observation -> the debouncer; ``git``: release -> HEAD moved; a reactive
    writer reacts ``reaction`` seconds after HEAD moved."""

    STEP = 0.01

    def __init__(self, config, latency=0.05, git=0.15, cooldown=0.5):
        self.clock = Clock()
        self.loops = judge_for(config, self.clock)
        self.debounce = Debounce(config)
        self.latency, self.git, self.cooldown = latency, git, cooldown
        self.in_flight: list[tuple[float, Decision]] = []  # (arrival, decision)
        self.commit_at: float | None = None  # when the running commit moves HEAD
        self.committing: list[str] = []
        self.last_commit = float("-inf")
        self.commits: dict[str, int] = {}
        self.head_moves: list[float] = []
        self.written = 0
        self.probing_steps = 0  # steps during which a probe held every release back

    def write(self, path: str, writer: Writer = Writer.UNKNOWN,
              l2_reason: L2Reason = L2Reason.NO_AUTONOMOUS_WRITER_SEEN,
              new: bool = False) -> None:
        now = self.clock.now
        self.in_flight.append((now + self.latency,
                               change(path, now, writer, l2_reason=l2_reason, new=new)))
        self.written += 1

    def step(self) -> None:
        self.clock.now = round(self.clock.now + self.STEP, 6)
        now = self.clock.now
        for arrival, decision in [item for item in self.in_flight if item[0] <= now]:
            self.in_flight.remove((arrival, decision))
            self.loops.observe(decision)
            if self.loops.why_decision_held(decision) is not None:
                self.debounce.pending.discard(decision.path)
                continue
            self.debounce.add(decision, now)
        self.loops.tick(now)
        self.probing_steps += bool(self.loops.probe_remaining(now))
        if self.commit_at is not None and now >= self.commit_at:
            for path in self.committing:
                self.commits[path] = self.commits.get(path, 0) + 1
            self.loops.note_commit(self.commit_at)
            self.head_moves.append(self.commit_at)
            self.last_commit, self.commit_at = now, None
        if (self.commit_at is None and not self.loops.probe_remaining(now)
                and now - self.last_commit >= self.cooldown):
            due = [path for path, _ in self.debounce.take_due(now)]
            if due:
                self.committing, self.commit_at = due, now + self.git

    def run(self, seconds: float, writers) -> None:
        """``writers``: callables (pipeline, now) called every step."""
        for _ in range(int(seconds / self.STEP)):
            self.step()
            for writer in writers:
                writer(self, self.clock.now)


def periodic(path: str, period: float, start: float = 0.0):
    state = {"next": None}

    def write(pipe: Pipeline, now: float) -> None:
        if state["next"] is None:
            state["next"] = now + start
        if now >= state["next"]:
            state["next"] += period
            pipe.write(path)
    return write


def reactive(path: str, delay: float,
             l2_reason: L2Reason = L2Reason.NO_AUTONOMOUS_WRITER_SEEN):
    """Rewrites ``path`` ``delay`` seconds after every HEAD move (once per move seen)."""
    state = {"seen": 0, "due": []}

    def write(pipe: Pipeline, now: float) -> None:
        while state["seen"] < len(pipe.head_moves):
            state["due"].append(pipe.head_moves[state["seen"]] + delay)
            state["seen"] += 1
        if state["due"] and now >= state["due"][0]:
            state["due"].pop(0)
            pipe.write(path, l2_reason=l2_reason)
    return write


def reactive_new_files(directory: str, delay: float, files: int = 1):
    """Writes ``files`` new files in ``directory`` ``delay`` seconds after every HEAD move."""
    state = {"seen": 0, "due": [], "made": 0}

    def write(pipe: Pipeline, now: float) -> None:
        while state["seen"] < len(pipe.head_moves):
            state["due"].append(pipe.head_moves[state["seen"]] + delay)
            state["seen"] += 1
        if state["due"] and now >= state["due"][0]:
            state["due"].pop(0)
            for _ in range(files):
                state["made"] += 1
                pipe.write(f"{directory}/r-{state['made']}.md", new=True)
    return write


def new_files_every(directory: str, period: float, start: float = 0.0):
    state = {"next": None, "made": 0}

    def write(pipe: Pipeline, now: float) -> None:
        if state["next"] is None:
            state["next"] = now + start
        if now >= state["next"]:
            state["next"] += period
            state["made"] += 1
            pipe.write(f"{directory}/n-{state['made']}.md", new=True)
    return write


def once(path: str, at: float):
    state = {"done": False}

    def write(pipe: Pipeline, now: float) -> None:
        if not state["done"] and now >= 1000.0 + at:
            state["done"] = True
            pipe.write(path)
    return write


@pytest.mark.parametrize("delay", [0.02, 0.3, 0.8])
def test_a_file_rewritten_after_every_commit_is_held_after_a_few_commits(config, delay):
    pipe = Pipeline(config)
    pipe.run(30, [once("user.md", 0.5), reactive("status.md", delay)])
    assert "status.md" in pipe.loops.held
    assert pipe.commits.get("status.md", 0) <= 3
    assert pipe.loops.why_held("status.md").hold == Hold.FEEDBACK_LOOP
    assert "user.md" not in pipe.loops.held and pipe.commits["user.md"] == 1
    assert pipe.loops.probe_remaining() == 0  # no probe once it is held


@pytest.mark.parametrize("files", [1, 3])
def test_an_agent_answering_each_commit_with_new_files_has_their_directory_held(config, files):
    """No path changes twice, so no path was ever held: 58 commits in 90 s of an agent
    writing reactions/r-N.md after each commit, unprivileged (fails before)."""
    pipe = Pipeline(config)
    pipe.run(60, [periodic("notes.md", 4.0), reactive_new_files("reactions", 0.3, files)])
    assert "reactions/*" in pipe.loops.held
    reaction_commits = sum(1 for path in pipe.commits if path.startswith("reactions/"))
    assert reaction_commits <= 4 * files
    assert pipe.loops.why_held("reactions/*").hold == Hold.FEEDBACK_LOOP
    assert "notes.md" not in pipe.loops.held and pipe.commits["notes.md"] >= 12


@pytest.mark.parametrize("period", [0.01, 0.05, 0.2])
def test_a_stream_of_new_files_is_not_a_reaction_nor_probed(config, period):
    """An agent's burst of new files runs right up to each commit: never held, and no
    probe holds the person's edits back."""
    pipe = Pipeline(config)
    pipe.run(40, [periodic("notes.md", 3.0), new_files_every("storm", period)])
    assert not pipe.loops.held
    assert pipe.probing_steps * pipe.STEP < 5.0
    assert pipe.commits["notes.md"] >= 12


@pytest.mark.parametrize("period", [1.0, 2.5, 4.0, 6.0])
def test_a_person_making_new_files_on_their_own_schedule_is_never_held(config, period):
    pipe = Pipeline(config)
    pipe.run(90, [new_files_every("journal", period), periodic("notes.md", 3.3)])
    assert not pipe.loops.held
    assert sum(1 for path in pipe.commits if path.startswith("journal/")) >= 90 / period - 4


def test_a_new_file_no_commit_explains_releases_its_directory(config):
    clock = Clock()
    loops = judge_for(config, clock)
    loops.held["reactions/*"] = {"held_at": clock.now, "reactions": 3}
    loops.note_commit(clock.now)
    reaction = change("reactions/r-9.md", clock.now + 0.2, new=True)
    assert loops.observe(reaction) is None
    assert loops.why_decision_held(reaction).hold == Hold.FEEDBACK_LOOP
    # a changed (not new) file in it is judged as a path of its own
    assert loops.why_decision_held(change("reactions/old.md", clock.now + 0.3)) is None
    clock.now += 20
    mine = change("reactions/mine.md", clock.now, new=True)
    assert loops.observe(mine) == "released"
    assert loops.why_decision_held(mine) is None and not loops.held


def test_reactions_to_other_paths_commits_are_held_too(config):
    """Commits of a person's steady edits elsewhere make the agent react each time."""
    pipe = Pipeline(config)
    pipe.run(40, [periodic("notes.md", 4.0), reactive("status.md", 0.2)])
    assert "status.md" in pipe.loops.held
    assert pipe.commits.get("status.md", 0) <= 3
    assert "notes.md" not in pipe.loops.held and pipe.commits["notes.md"] >= 8


@pytest.mark.parametrize("period", [0.3, 0.7, 1.0, 1.003, 1.02, 1.3, 1.7, 2.0, 2.5, 3.0,
                                    4.0, 5.0, 6.0, 8.0])
def test_an_editor_saving_on_its_own_schedule_is_never_held(config, period):
    pipe = Pipeline(config)
    pipe.run(120, [periodic("draft.md", period)])
    assert "draft.md" not in pipe.loops.held
    assert pipe.commits["draft.md"] >= 10


def test_a_probe_outlasts_the_paths_own_period(config):
    """The unprivileged gauntlet: a person saves README.md every 4.5 s while an agent's
    files are committed all the time, so each save comes right after some commit.  The
    probe (4-5 s) ended before the next save; the backlog it held back was committed at
    once, and the save right after that commit held README.md as a loop.  A probe now
    lasts at least 1.5 of the path's own intervals: the save falls inside it and clears
    the path."""
    clock = Clock()
    loops = judge_for(config, clock)

    def commit_at(moment: float) -> None:
        clock.now = moment
        loops.note_commit(moment)

    def save_at(moment: float) -> str | None:
        clock.now = moment
        loops.tick(moment)
        return loops.observe(change("README.md", moment))

    commit_at(999.5)
    save_at(1000.0)
    commit_at(1004.0)
    save_at(1004.5)  # the second reaction: a probe starts
    assert loops.probe_remaining(1004.5) > 0
    moment = 1004.5
    while loops.probe_remaining(moment) > 0 and moment < 1009.0:
        moment = round(moment + 0.01, 6)
        clock.now = moment
        loops.tick(moment)
    if moment < 1009.0:  # the probe ended first: the debouncer commits its backlog
        commit_at(moment + 0.05)
    assert save_at(1009.0) is None
    assert "README.md" not in loops.held and "README.md" not in loops.suspects


@pytest.mark.parametrize("period", [1.0, 1.5, 2.0])
def test_two_files_saved_alternately_are_never_held(config, period):
    """Each file's save falls right after the other's commit: only the probe tells."""
    pipe = Pipeline(config)
    pipe.run(120, [periodic("a.md", period), periodic("b.md", period, start=period / 2)])
    assert not pipe.loops.held


def test_an_editor_beside_a_reactive_agent_is_never_held(config):
    pipe = Pipeline(config)
    pipe.run(90, [periodic("draft.md", 1.0), periodic("other.md", 2.2),
                  reactive("status.md", 0.1)])
    assert set(pipe.loops.held) <= {"status.md"}
    assert pipe.commits["draft.md"] >= 10


def test_the_persons_writes_are_never_held_and_release_a_hold(config):
    clock = Clock()
    loops = judge_for(config, clock)
    for round_ in range(10):  # the person's own reactions to commits: never counted
        loops.note_commit(clock.now)
        assert loops.observe(change("mine.md", clock.now + 0.1, Writer.USER)) is None
        clock.now += 5
    assert not loops.held and not loops.suspects
    loops.held["agent.md"] = {"reactions": 3}
    assert loops.observe(change("agent.md", clock.now, Writer.USER)) == "released"
    assert "agent.md" not in loops.held


def test_a_change_no_commit_explains_releases_a_hold(config):
    """Unprivileged attribution never names the person: a person's file held after three
    quick saves stayed held whatever they did, until `gitsieve learned --forget` (fails
    before).  A change right after a commit keeps the hold; one long after releases it."""
    clock = Clock()
    loops = judge_for(config, clock)
    loops.held["notes.md"] = {"reactions": 3}
    loops.note_commit(clock.now)
    assert loops.observe(change("notes.md", clock.now + 0.2)) is None  # a reaction
    assert loops.observe(change("notes.md", clock.now + 0.3, commit=False)) is None
    assert "notes.md" in loops.held
    clock.now += 20
    assert loops.observe(change("notes.md", clock.now)) == "released"
    assert "notes.md" not in loops.held


def test_a_reconcile_reporting_the_held_version_again_keeps_the_hold(config):
    """The watcher's periodic reconcile sends a held, still dirty path every minute,
    observed then: that released the hold as "changed at a time no commit explains", and a
    reactive agent got three commits more a minute (fails before).  A write since the hold
    still releases it."""
    clock = Clock()
    monotonic = Clock()
    monotonic.now = 5000.0  # another clock, another origin: only the differences matter
    loops = LoopJudge(config, clock=clock, rng=random.Random(7), monotonic=monotonic)
    reacted_at = monotonic.now
    clock.now += 0.2
    loops.held["status.md"] = {"held_at": clock.now, "reactions": 3}
    for _ in range(3):  # three reconciles, a minute apart
        clock.now += 60
        monotonic.now += 60
        resent = dataclasses.replace(change("status.md", clock.now), written=reacted_at)
        assert loops.observe(resent) is None
        assert "status.md" in loops.held
    clock.now += 20
    monotonic.now += 20
    edited = dataclasses.replace(change("status.md", clock.now), written=monotonic.now)
    assert loops.observe(edited) == "released"


def test_a_reactive_agent_released_by_a_stray_change_is_held_again(config):
    pipe = Pipeline(config)
    agent = reactive("status.md", 0.3)
    pipe.run(30, [once("status.md", 0.5), agent])
    assert "status.md" in pipe.loops.held
    committed = pipe.commits.get("status.md", 0)
    pipe.run(40, [once("status.md", 35.0), agent])  # a stray write releases it, once
    assert "status.md" in pipe.loops.held
    assert 0 < pipe.commits.get("status.md", 0) - committed <= 4


def test_gitsieves_own_writes_and_blocked_paths_are_not_counted(config):
    clock = Clock()
    loops = judge_for(config, clock)
    for _ in range(10):
        loops.note_commit(clock.now)
        loops.observe(change("moved-by-rebase.md", clock.now + 0.1, Writer.SELF))
        loops.observe(change(".claude/autonomous/s.json", clock.now + 0.1, None,
                             commit=False, action=Action.BLOCK))
        clock.now += 3
        loops.tick()
    assert not loops.suspects and not loops.held


def test_a_commit_left_unanswered_ends_the_count(config):
    clock = Clock()
    loops = judge_for(config, clock)
    loops.note_commit(clock.now)
    loops.observe(change("s.md", clock.now + 0.2))
    assert loops.tracks["s.md"].reactions == 1
    clock.now += 2
    loops.note_commit(clock.now)  # no reaction to this one...
    loops.observe(change("s.md", clock.now + 5))  # ...this change comes too late for it
    assert loops.tracks["s.md"].reactions == 0 and "s.md" not in loops.suspects
    loops.note_commit(clock.now + 10)
    loops.observe(change("s.md", clock.now + 10.1))
    assert loops.tracks["s.md"].reactions == 1
    loops.note_commit(clock.now + 11)
    clock.now += 60  # a suspect that went quiet is forgotten
    loops.tick()
    assert loops.tracks["s.md"].reactions == 0 and "s.md" not in loops.suspects


def test_a_write_seen_open_then_closed_across_a_commit_is_one_reaction(config):
    """A loaded watcher reports an agent's new file once open and once closed.  A commit
    landing between the two used to count the close as a second reaction, and with
    thousands of such files a probe stopped every release, a person's edits included."""
    clock = Clock()
    loops = judge_for(config, clock)
    loops.note_commit(clock.now)
    for number in range(2000):
        loops.observe(change(f"out/{number}.json", clock.now + 0.1, open_since=clock.now))
    loops.note_commit(clock.now + 0.5)
    for number in range(2000):
        loops.observe(change(f"out/{number}.json", clock.now + 0.6))
    assert {loops.tracks[f"out/{n}.json"].reactions for n in range(2000)} == {1}
    assert not loops.probing and loops.probe_remaining() == 0.0
    # a rewrite after the next commit is a reaction again, and starts the probe
    loops.note_commit(clock.now + 1.0)
    loops.observe(change("out/7.json", clock.now + 1.1))
    assert loops.tracks["out/7.json"].reactions == 2 and loops.probing == {"out/7.json"}


def test_saves_right_after_each_commit_with_no_autonomous_process_running_are_never_held(
        config):
    """Unprivileged, a person or a test that saves again as soon as the last save is
    committed reads exactly like a reactive agent (the test above), and was held at its
    fourth save.  With no autonomous process running, L2 says so: no writer to suspect."""
    pipe = Pipeline(config)
    pipe.run(30, [once("user.md", 0.5),
                  reactive("src/a.txt", 0.3, L2Reason.NO_AUTONOMOUS_PROCESS)])
    assert not pipe.loops.held and pipe.commits["src/a.txt"] > 10
    assert pipe.loops.probe_remaining() == 0


def test_a_reaction_that_reaches_the_debouncer_late_still_counts(config):
    """Judged by when the watcher saw it, not by when a loaded pipeline delivered it."""
    clock = Clock()
    loops = judge_for(config, clock)
    loops.note_commit(clock.now)
    loops.observe(change("s.md", clock.now + 0.2))
    loops.note_commit(clock.now + 1)
    clock.now += 6  # the reaction to the second commit is still in the pipeline
    loops.tick()
    loops.observe(change("s.md", clock.now - 4.7))
    assert loops.tracks["s.md"].reactions == 2


def test_holds_survive_a_restart_and_forget_releases(config):
    clock = Clock()
    pipe = Pipeline(config)
    pipe.run(30, [once("user.md", 0.5), reactive("status.md", 0.1)])
    assert "status.md" in pipe.loops.held
    assert (config.learned_file.parent / LOOPS_FILE).exists()
    again = judge_for(config, clock)
    assert again.why_held("status.md").hold == Hold.FEEDBACK_LOOP
    assert again.release("status.md") == "released"
    assert judge_for(config, clock).why_held("status.md") is None


def test_after_zero_turns_the_breaker_off(workspace):
    workspace.config(DEFAULTS + "[loop]\nafter = 0\n")
    pipe = Pipeline(workspace.load())
    pipe.run(20, [once("user.md", 0.5), reactive("status.md", 0.1)])
    assert not pipe.loops.held and pipe.commits["status.md"] > 3


# ----- the debouncer actor's wiring -----------------------------------------------------
@pytest.fixture
def deb(config):
    debouncer = Debouncer(config)
    debouncer.clock = Clock()
    debouncer.batches_out = FakeSocket()
    yield debouncer
    debouncer.close()


def test_debouncer_never_batches_a_held_path_shows_it_and_forget_releases_it(deb, config):
    deb.loops.held["status.md"] = {"reactions": 3}
    deb.loops.note_commit(49.9)  # its change reacts to a commit: the hold stands
    deb.on_decision(change("status.md", 50.0))
    deb.on_decision(change("user.md", 50.0, Writer.USER))
    deb.clock.now += 60
    deb.on_tick(deb.clock.now)
    batched = [p for m in deb.batches_out.messages() if isinstance(m, Batch) for p in m.paths]
    assert batched == ["user.md"]
    record = deb.explain_paths(["status.md"])["paths"]["status.md"]
    assert record["hold"] == Hold.FEEDBACK_LOOP and "feedback loop" in record["held_reason"]
    status = deb.status()
    assert status["held_paths"][0]["path"] == "status.md" and status["loops"]["held"] == 1
    assert deb.learned_listing()["loops"][0]["path"] == "status.md"
    assert deb.forget_learned("status.md") == {"forgotten": True}
    assert deb.explain_paths(["status.md"])["paths"]["status.md"]["hold"] is None
    deb.clock.now += 60
    deb.on_tick(deb.clock.now)
    batched = [p for m in deb.batches_out.messages() if isinstance(m, Batch) for p in m.paths]
    assert batched == ["user.md", "status.md"]  # its latest change, debounced again


def test_debouncer_releases_nothing_while_probing(deb):
    deb.loops.after = 2
    moved = 100.0
    deb.loops.note_commit(moved)
    deb.on_decision(change("status.md", moved + 0.1))  # one short: a probe starts
    assert deb.loops.probe_remaining() > 0
    deb.on_decision(change("user.md", moved + 0.2, Writer.USER))
    deb.clock.now += 2
    deb.on_tick(deb.clock.now)
    assert not deb.batches_out.frames
    assert deb.wakeup_in() > 0


def test_head_moves_are_seen_before_the_changes_that_react_to_them(deb, workspace):
    """The CommitReport comes after the push; an agent's reaction can arrive first.  Only
    gitsieve's own moves of HEAD count (its reflog message), not the person's commits."""
    workspace.write("mine.txt", "mine\n")
    workspace.git("add", "mine.txt")
    workspace.git("commit", "-q", "-m", "the person's commit")
    deb.on_decision(change("other.md", time.time()))
    assert not deb.loops.commits
    workspace.write("x.txt", "x\n")
    workspace.git("add", "x.txt")
    tree = workspace.git("write-tree").strip()
    new = workspace.git("commit-tree", tree, "-p", "HEAD", "-m", "sync").strip()
    workspace.git("update-ref", "-m", "gitsieve: sync", "HEAD", new)
    moved = (workspace.root / ".git/logs/HEAD").stat().st_mtime
    assert head_moved_at(workspace.root / ".git") == (moved, True)
    deb.on_decision(change("status.md", moved + 0.2))  # no report yet
    assert list(deb.loops.commits) == [moved] and deb.loops.tracks["status.md"].reactions == 1
    deb.on_commit_report(CommitReport(batch_ids=(1,), paths=("x.txt",), commit="ab" * 20,
                                      pushed=True, error="", finished=moved + 2.0))
    assert list(deb.loops.commits) == [moved]  # the same move, noted once


def test_a_backlog_of_decisions_shares_one_look_at_the_reflog(deb, workspace, monkeypatch):
    """Before, every decision stat'ed HEAD's reflog (an eighth of the debouncer's time in a
    dirty start).  A look made after a decision's observation serves it."""
    looks = []
    signature = debouncer_module.file_signature
    monkeypatch.setattr(debouncer_module, "file_signature",
                        lambda path: looks.append(path) or signature(path))
    observed = time.time()
    time.sleep(0.1)  # past FILE_TIME_LAG
    for n in range(100):
        deb.on_decision(change(f"f{n}.md", observed))
    assert len(looks) == 1
    deb.on_decision(change("later.md", time.time()))
    assert len(looks) == 2
    deb.reflog.looked = time.time() + 3600  # the clock stepped back an hour since
    deb.on_decision(change("old.md", observed))
    assert len(looks) == 3
