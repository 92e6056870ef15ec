"""Debouncer: the Debounce judge's timing (no socket), the actor's batching with a fake
batch socket and clock, and a real-process test."""
from __future__ import annotations

import dataclasses
import time

import pytest
import zmq

from conftest import FakeSocket, wait_for
from gitsieve.actors.debouncer import (EXPLAIN_DROPPED_PATHS, MAX_BATCH_PATHS, Debouncer,
                                        ExplainRecords)
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.debounce import Debounce, Intake
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Batch, Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    Hold,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep
from gitsieve.common.tools import ctl

CONFIG = """\
[debounce]
allow = 2
default = 30
max_wait = 10
rules = [ { pattern = "\\\\.claude/autonomous/.*", seconds = 300 },
          { pattern = ".*\\\\.py", seconds = 5 } ]
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


ORIGIN = 1000.0  # the fake clocks' start


@pytest.fixture
def deb(workspace):
    """The debouncer actor without its sockets: a fake clock, a fake batch socket."""
    workspace.config(CONFIG)
    debouncer = Debouncer(workspace.load())
    debouncer.clock = Clock()
    debouncer.batches_out = FakeSocket()
    yield debouncer
    debouncer.close()


@pytest.fixture
def judge(workspace):
    """The Debounce judge; the tests pass its (monotonic) times in."""
    workspace.config(CONFIG)
    return Debounce(workspace.load())


_seq = iter(range(1, 1_000_000))


def decision(path, commit=True, action=Action.ANALYZE, seq=None, epoch=1.0, observed=50.0):
    return Decision(path=path, kind=ChangeKind.WRITE, seq=next(_seq) if seq is None else seq,
                    epoch=epoch, observed=observed, commit=commit, action=action)


def advance(deb, seconds):
    deb.clock.now += seconds
    deb.on_tick(deb.clock.now)


def at(deb, offset):
    """Tick at ``offset`` seconds after the fake clock's origin (no float drift)."""
    deb.clock.now = ORIGIN + offset
    deb.on_tick(deb.clock.now)


def due_at(judge, offset) -> list[str]:
    """The paths the judge releases ``offset`` seconds after the origin."""
    return [path for path, _ in judge.take_due(ORIGIN + offset)]


def test_quiet_period_per_class(judge):
    judge.add(decision("docs/a.md", action=Action.ALLOW), ORIGIN)    # allow: 2 s
    judge.add(decision("tool.py"), ORIGIN)                           # rule: 5 s
    judge.add(decision("notes.txt"), ORIGIN)                         # default: 30 s
    judge.add(decision(".claude/autonomous/x.json"), ORIGIN)         # rule: 300 s, max_wait 10
    assert judge.next_due(ORIGIN) == pytest.approx(2.0)
    assert due_at(judge, 1.9) == []
    assert due_at(judge, 2.0) == ["docs/a.md"]
    assert due_at(judge, 4.9) == []
    assert due_at(judge, 5.0) == ["tool.py"]
    # Default 30 s, not cut short by max_wait (10 s): max_wait only bounds continuous writes.
    assert due_at(judge, 29.9) == []
    assert due_at(judge, 30.0) == ["notes.txt"]
    assert due_at(judge, 299.9) == []
    assert due_at(judge, 300.0) == [".claude/autonomous/x.json"]
    assert not judge.pending and judge.next_due(ORIGIN + 300.0) is None


def test_max_wait_under_continuous_writes(judge):
    # A .py file (quiet 5 s) rewritten every 3 s never goes quiet; max_wait is 10 s.
    for offset in (0.0, 3.0, 6.0):
        judge.add(decision("busy.py"), ORIGIN + offset)
        assert due_at(judge, offset + 3.0) == []
    # 9 s in, still writing
    judge.add(decision("busy.py"), ORIGIN + 9.0)
    assert due_at(judge, 10.0) == ["busy.py"]


def test_stale_decision_dropped(judge):
    assert judge.add(decision("a.txt", commit=False, seq=10, epoch=2.0), ORIGIN)
    assert not judge.add(decision("a.txt", commit=True, seq=9, epoch=2.0), ORIGIN)   # older seq
    assert not judge.add(decision("a.txt", commit=True, seq=99, epoch=1.0), ORIGIN)  # older run
    assert judge.stale == 2
    assert len(judge.pending) == 0
    assert judge.add(decision("a.txt", commit=True, seq=1, epoch=3.0), ORIGIN)  # newer run
    assert len(judge.pending) == 1


def test_commit_false_does_not_cancel_or_delay_pending(judge):
    judge.add(decision("shared.json", commit=True, observed=40.0), ORIGIN)
    assert due_at(judge, 20.0) == []
    judge.add(decision("shared.json", commit=False, observed=45.0), ORIGIN + 20.0)  # system
    assert len(judge.pending) == 1
    assert due_at(judge, 29.9) == []
    # 30 s after the commit=True one, not after the commit=False one
    [(path, state)] = judge.take_due(ORIGIN + 30.1)
    assert path == "shared.json" and state.observed == 40.0


def test_coalescing_into_one_batch(deb):
    # A burst arriving within one poll round, one path rewritten before it is due.
    for index in range(5):
        deb.on_decision(decision(f"f{index}.txt", action=Action.ALLOW,
                                 observed=10.0 + index))
    advance(deb, 1.0)
    deb.on_decision(decision("f0.txt", action=Action.ALLOW, observed=5.0))  # rewritten
    deb.on_decision(decision("f1.txt", action=Action.ALLOW, observed=20.0))
    advance(deb, 1.0)
    batches = deb.batches_out.messages()
    assert [b.paths for b in batches] == [("f2.txt", "f3.txt", "f4.txt")]
    advance(deb, 1.0)
    batches = deb.batches_out.messages()
    assert batches[1].paths == ("f0.txt", "f1.txt")
    assert batches[1].observed == (5.0, 11.0)  # the earliest observation of each path
    assert [b.batch_id for b in batches] == [1, 2]


def test_large_sets_split_and_backlog_held_without_executor(deb):
    deb.batches_out.refuse = True
    count = MAX_BATCH_PATHS * 2 + 3
    for index in range(count):
        deb.on_decision(decision(f"many/{index:05d}", action=Action.ALLOW))
    advance(deb, 2.0)
    assert deb.batches_out.frames == [] and len(deb.backlog) == 3
    assert deb.wakeup_in() > 0
    deb.batches_out.refuse = False
    advance(deb, 0.05)
    batches = deb.batches_out.messages()
    assert [len(b.paths) for b in batches] == [MAX_BATCH_PATHS, MAX_BATCH_PATHS, 3]
    assert [b.batch_id for b in batches] == [1, 2, 3]
    assert sum((b.paths for b in batches), ()) == tuple(f"many/{i:05d}" for i in range(count))


def test_pending_control_listing(deb):
    deb.on_decision(decision("a.py"))
    deb.on_decision(decision("b.md", action=Action.ALLOW))
    advance(deb, 1.0)
    listing = deb.pending_paths()
    assert listing["total"] == 2
    assert listing["pending"] == [{"path": "b.md", "due_in": 1.0, "action": "ALLOW"},
                                  {"path": "a.py", "due_in": 4.0, "action": "ANALYZE"}]
    assert deb.extra_status()["pending"] == 2


def test_real_process_batches_after_quiet_period(workspace, actors):
    workspace.config("[debounce]\nallow = 0.2\ndefault = 0.5\n")
    config = workspace.load()
    config_mod.prepare_runtime_dir(config)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    pull = context.socket(zmq.PULL)
    for sock in (push, pull):
        sock.linger = 0
    try:
        # Start with no executor connected: the debouncer holds the batch until one is.
        actors("debouncer", workspace.root)
        wait_for(lambda: _status(config), timeout=15, message="debouncer control socket")
        push.connect(config.endpoints.decisions)
        push.send(messages.encode(decision("x.md", action=Action.ALLOW, observed=1.5)))
        push.send(messages.encode(decision("y.txt", observed=1.0)))
        push.send(messages.encode(decision("x.md", commit=False, seq=1, epoch=0.5)))
        push.send(b"garbage")
        wait_for(lambda: _status(config).get("stale") == 1, timeout=10,
                 message="stale decision counted")
        wait_for(lambda: _status(config).get("backlog_batches", 0) >= 1, timeout=10,
                 message="batch held without an executor")
        pull.connect(config.endpoints.batches)
        received: list[Batch] = []

        def got_both():
            while pull.poll(50):
                received.append(messages.decode(pull.recv()))
            return {p for b in received for p in b.paths} == {"x.md", "y.txt"}

        wait_for(got_both, timeout=10, message="batches")
        assert all(isinstance(b, Batch) for b in received)
        assert received[0].paths == ("x.md",) and received[0].observed == (1.5,)
        status = _status(config)
        assert status["pending"] == 0 and status["bad_frames"] == 1
        assert status["backlog_batches"] == 0
    finally:
        push.close()
        pull.close()
        context.term()


def _status(config) -> dict:
    try:
        reply = control.request(config, "debouncer", "status", timeout=0.5)
    except control.Unreachable:
        return {}
    return reply.data if reply.ok else {}


def test_decision_timing_uses_arrival_not_message_clock(deb):
    # observed far in the past must not make the path due early.
    deb.on_decision(decision("old.md", action=Action.ALLOW, observed=time.time() - 10_000))
    advance(deb, 1.0)
    assert deb.batches_out.frames == []
    advance(deb, 1.0)
    assert len(deb.batches_out.frames) == 1


L1_ANALYZE = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)
L1_ALLOW = PatternStep(Action.ALLOW, L1Reason.RULE, "ALLOW:notes/.*")
L2_UNKNOWN = ProcessStep(Writer.UNKNOWN, L2Reason.NO_WRITER_SEEN, Mode.FANOTIFY)
L2_USER = ProcessStep(Writer.USER, L2Reason.IDENTIFIED, Mode.FANOTIFY)
L3_USER = ContentStep(Content.USER, L3Reason.CONTENT_CHANGED)


def with_trail(base: Decision, *steps) -> Decision:
    return Decision(path=base.path, kind=base.kind, seq=base.seq, epoch=base.epoch,
                    observed=base.observed, commit=base.commit, action=base.action,
                    trail=steps)


@pytest.mark.parametrize("steps, recheck", [
    # only the content layer vouched for it, the writer unknown: re-check at commit time
    ((L1_ANALYZE, L2_UNKNOWN, L3_USER), True),
    # the writer was positively identified as the user: never second-guessed
    ((L1_ANALYZE, L2_USER, L3_USER), False),
    # an ALLOW rule decided
    ((L1_ALLOW,), False),
])
def test_batches_flag_paths_decided_by_content_alone(deb, steps, recheck):
    deb.on_decision(with_trail(decision("notes/a.json"), *steps))
    advance(deb, 100)
    deb.on_tick(0)
    [batch] = deb.batches_out.messages()
    assert batch.recheck == (("notes/a.json",) if recheck else ())


def test_one_user_decision_among_pending_ones_clears_the_recheck(deb):
    content_only = (L1_ANALYZE, L2_UNKNOWN, L3_USER)
    deb.on_decision(with_trail(decision("a.json"), *content_only))
    deb.on_decision(with_trail(decision("a.json"), L1_ALLOW))
    deb.on_decision(with_trail(decision("a.json"), *content_only))
    advance(deb, 100)
    deb.on_tick(0)
    [batch] = deb.batches_out.messages()
    assert batch.paths == ("a.json",) and batch.recheck == ()


# ----- half-written files, moves, bounds --------------------------------------------------
def written_decision(path, written, open_since=0.0, partners=(), commit=True,
                     kind=ChangeKind.WRITE, action=Action.ANALYZE, seq=None):
    return Decision(path=path, kind=kind, seq=next(_seq) if seq is None else seq, epoch=1.0,
                    observed=50.0, commit=commit, action=action, written=written,
                    open_since=open_since, partners=partners)


OPEN_CONFIG = "[debounce]\ndefault = 1\nallow = 1\nmax_wait = 2\nopen_max = 20\nrules = []\n"


@pytest.fixture
def open_judge(workspace):
    workspace.config(OPEN_CONFIG)
    return Debounce(workspace.load())


def test_quiet_runs_from_the_last_real_write_not_the_report(open_judge):
    # Reported 0.9 s after its last write (a throttled report): due 0.1 s later.
    open_judge.add(written_decision("f.txt", written=ORIGIN), ORIGIN + 0.9)
    assert due_at(open_judge, 0.95) == []
    assert due_at(open_judge, 1.0) == ["f.txt"]
    # A write time from the future (a bad clock, a forged frame) counts as the arrival.
    open_judge.add(written_decision("g.txt", written=ORIGIN + 500), ORIGIN + 10)
    assert due_at(open_judge, 10.9) == [] and due_at(open_judge, 11.0) == ["g.txt"]


def test_a_file_open_for_writing_waits_for_its_close_past_max_wait(open_judge):
    open_judge.add(written_decision("big.bin", ORIGIN, open_since=ORIGIN), ORIGIN)
    for second in range(1, 10):  # written every second, never closed: max_wait is 2 s
        open_judge.add(written_decision("big.bin", ORIGIN + second, open_since=ORIGIN),
                       ORIGIN + second)
        assert due_at(open_judge, second + 0.5) == []
    assert open_judge.hold("big.bin", ORIGIN + 9).hold == Hold.OPEN_FOR_WRITING
    # Closed: max_wait (from the first pending decision) is long over; released at once.
    open_judge.add(written_decision("big.bin", ORIGIN + 9.2), ORIGIN + 9.3)
    assert open_judge.hold("big.bin", ORIGIN + 9.3) is None
    assert due_at(open_judge, 9.3) == ["big.bin"]


def test_a_system_write_keeps_a_pending_user_change_from_going_half_written(open_judge):
    open_judge.add(written_decision("shared.txt", ORIGIN), ORIGIN)
    open_judge.add(written_decision("shared.txt", ORIGIN + 0.5, open_since=ORIGIN + 0.5,
                                    commit=False), ORIGIN + 0.5)
    assert due_at(open_judge, 5.0) == []
    open_judge.add(written_decision("shared.txt", ORIGIN + 6, commit=False), ORIGIN + 6)
    assert due_at(open_judge, 6.0) == ["shared.txt"]


def test_a_file_open_past_open_max_is_committed_after_its_quiet_period_and_says_so(deb):
    deb.debounce.config = _config_with(deb, "open_max = 20")
    deb.on_decision(written_decision("app.log", ORIGIN, open_since=ORIGIN))
    at(deb, 19.9)
    assert deb.batches_out.frames == []
    record = deb.explain_paths(["app.log"])["paths"]["app.log"]
    assert record["hold"] == Hold.OPEN_FOR_WRITING and "open_max" in record["held_reason"]
    at(deb, 29.9)  # past open_max: now its quiet period (30 s here) counts
    assert deb.batches_out.frames == []
    assert deb.explain_paths(["app.log"])["paths"]["app.log"]["hold"] is None
    at(deb, 30.0)
    [batch] = deb.batches_out.messages()
    assert batch.paths == ("app.log",)
    record = deb.explain_paths(["app.log"])["paths"]["app.log"]
    assert "open_max" in record["note"] and record["hold"] is None


def _config_with(deb, line: str):
    import textwrap
    root = deb.config.workspace
    (root / ".gitsieve.toml").write_text(textwrap.dedent(CONFIG).replace(
        "max_wait = 10\n", f"max_wait = 10\n{line}\n"))
    deb.config = config_mod.load(root)
    return deb.config


def test_the_sides_of_a_move_are_released_together(open_judge):
    # The deletion is decided first; its partner's decision comes 0.8 s later.
    open_judge.add(written_decision("src/main.c", ORIGIN, kind=ChangeKind.DELETE,
                                    partners=("source/main.c",)), ORIGIN)
    assert due_at(open_judge, 1.5) == []  # waits for the other side (up to PARTNER_WAIT)
    open_judge.add(written_decision("source/main.c", ORIGIN, partners=("src/main.c",)),
                   ORIGIN + 1.6)
    assert due_at(open_judge, 1.6) == ["source/main.c", "src/main.c"]


def test_a_side_still_being_written_holds_its_partner(open_judge):
    open_judge.add(written_decision("a", ORIGIN, kind=ChangeKind.DELETE, partners=("b",)),
                   ORIGIN)
    open_judge.add(written_decision("b", ORIGIN, open_since=ORIGIN, partners=("a",)), ORIGIN)
    assert due_at(open_judge, 5.0) == []
    open_judge.add(written_decision("b", ORIGIN + 5), ORIGIN + 5)
    assert due_at(open_judge, 6.0) == ["a", "b"]


def test_a_partner_never_decided_or_not_to_commit_does_not_hold_the_other_side(open_judge):
    open_judge.add(written_decision("gone", ORIGIN, kind=ChangeKind.DELETE,
                                    partners=("lost",)), ORIGIN)
    assert due_at(open_judge, 1.0) == []
    assert due_at(open_judge, 2.0) == ["gone"]  # PARTNER_WAIT after the link
    open_judge.add(written_decision("x", ORIGIN + 10, kind=ChangeKind.DELETE,
                                    partners=("x.bak",)), ORIGIN + 10)
    open_judge.add(written_decision("x.bak", ORIGIN + 10, commit=False, partners=("x",),
                                    action=Action.BLOCK), ORIGIN + 10.1)
    assert due_at(open_judge, 11.0) == ["x"]


def test_decisions_beyond_what_the_watcher_issued_are_dropped(workspace):
    workspace.config(OPEN_CONFIG)
    judge = Debounce(workspace.load(), issued=lambda: (3, 10_000))
    forged = Decision(path="a.txt", kind=ChangeKind.WRITE, seq=1, epoch=4e9, observed=1.0,
                      commit=False, action=Action.ANALYZE)
    assert judge.intake(forged, ORIGIN) == Intake.NOT_ISSUED
    real = Decision(path="a.txt", kind=ChangeKind.WRITE, seq=5, epoch=3.0, observed=1.0,
                    commit=True, action=Action.ANALYZE)
    assert judge.intake(real, ORIGIN) == Intake.TAKEN
    assert due_at(judge, 1.0) == ["a.txt"]
    # An ordering state from beyond the bound (a run counter that started over) orders
    # nothing: the next run's decisions are taken.
    judge.paths["a.txt"].newest = (9.0, 1)
    assert judge.intake(real, ORIGIN + 2) == Intake.TAKEN


def test_the_pending_set_at_its_cap_releases_early_never_drops(workspace, monkeypatch):
    from gitsieve.common.judge import debounce as debounce_mod
    monkeypatch.setattr(debounce_mod, "MAX_PENDING", 3)
    workspace.config(OPEN_CONFIG)
    judge = Debounce(workspace.load())
    for name in ("a", "b", "c"):
        judge.add(written_decision(name, ORIGIN), ORIGIN)
    judge.add(written_decision("open", ORIGIN, open_since=ORIGIN), ORIGIN)
    judge.add(written_decision("d", ORIGIN), ORIGIN)  # the cap: a, b, c go at once
    assert due_at(judge, 0.0) == ["a", "b", "c"]
    assert judge.early_releases == 3
    assert due_at(judge, 1.0) == ["d"]


def test_the_feed_publishes_each_decision_as_it_came_to_the_layers_that_keep_it(
        workspace, actors):
    """A real debouncer: every decision reaches a subscriber to everything (the watcher,
    ``actorctl tail``) byte for byte; an L2 worker's topics carry only verdicts whose
    writes it remembers, an L3 worker's only user versions it remembers."""
    from gitsieve.common.judge import feed as feed_topics
    config = workspace.load()
    config_mod.prepare_runtime_dir(config)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    listeners = {name: context.socket(zmq.SUB) for name in ("all", "l2", "l3")}
    topics = {"all": feed_topics.EVERYTHING, "l2": feed_topics.PROCESS_TOPICS,
              "l3": feed_topics.CONTENT_TOPICS}
    accounted = ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.FANOTIFY,
                            writes_until=time.time())
    unknown = ProcessStep(Writer.UNKNOWN, L2Reason.NO_WRITER_SEEN, Mode.FANOTIFY)
    user = ContentStep(Content.USER, L3Reason.NEW_FILE, masked="m" * 40, exact="e" * 40)
    sent = {"system.json": with_trail(decision("system.json", commit=False), accounted),
            "new.md": with_trail(decision("new.md"), unknown, user),
            "both.md": with_trail(decision("both.md"), accounted, user),
            "plain.md": with_trail(decision("plain.md", commit=False), unknown)}
    frames = {path: messages.encode(each) for path, each in sent.items()}
    try:
        actors("debouncer", workspace.root)
        wait_for(lambda: _status(config), timeout=15, message="debouncer control socket")
        for name, sock in listeners.items():
            sock.linger = 0
            for topic in topics[name]:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            sock.connect(config.endpoints.feed)
        push.linger = 0
        push.connect(config.endpoints.decisions)
        time.sleep(0.3)  # the subscriptions reach the publisher
        for frame in frames.values():
            push.send(frame)
        heard = {name: {} for name in listeners}

        def all_heard() -> bool:
            for name, sock in listeners.items():
                while sock.poll(20):
                    topic, frame = sock.recv_multipart()
                    heard[name][messages.decode(frame).path] = frame
            return len(heard["all"]) == len(frames)
        wait_for(all_heard, timeout=10, message="every decision on the feed")
        assert heard["all"] == frames  # as they came, not re-encoded
        assert set(heard["l2"]) == {"system.json", "both.md"}
        assert set(heard["l3"]) == {"new.md", "both.md"}
    finally:
        push.close()
        for sock in listeners.values():
            sock.close()
        context.term()


def test_the_next_due_path_is_found_as_a_scan_of_every_pending_path_would(workspace):
    """The due paths come from a heap of due moments, not a scan of the whole backlog
    (with 10,000 pending paths the scan ran on every poll round).  Random writes, open
    files, moves, flushes and paths taken away, checked step by step against the scan."""
    import random
    workspace.config(OPEN_CONFIG)
    judge = Debounce(workspace.load())
    rng = random.Random(20261130)
    names = [f"p{number}" for number in range(40)]
    now, released = ORIGIN, 0
    for step in range(4000):
        now += rng.choice((0.0, 0.01, 0.1, 0.3, 0.7, 1.5, 3.0))
        roll = rng.random()
        if roll < 0.6:
            path = rng.choice(names)
            partners = (rng.choice(names),) if rng.random() < 0.1 else ()
            open_since = now - rng.uniform(0, 25) if rng.random() < 0.1 else 0.0
            judge.add(written_decision(path, now - rng.uniform(0, 2), open_since=open_since,
                                       partners=partners, commit=rng.random() < 0.8), now)
        elif roll < 0.62:
            judge.make_all_due(now)
        elif roll < 0.64 and judge.pending:
            judge.pending.discard(rng.choice(sorted(judge.pending)))  # held by the actor
        scanned = [judge.due_at(path) for path in judge.pending]
        expected_next = max(0.0, min(scanned) - now) if scanned else None
        assert judge.next_due(now) == expected_next, step
        expected = set()
        for path in judge.pending:
            if judge.due_at(path) <= now:
                expected.update(m for m in judge.component(path) if m in judge.pending)
        taken = judge.take_due(now)
        assert [path for path, _ in taken] == sorted(expected), step
        released += len(taken)
    assert released > 500  # the walk released plenty, through every kind of step


def test_a_poll_round_over_a_large_backlog_looks_at_a_few_paths_not_all(workspace):
    """A dirty start leaves 10,000 paths pending at once; each poll round asked every one
    of them for its due moment, twice (fails before: 20,000 per round)."""
    workspace.config(OPEN_CONFIG)
    judge = Debounce(workspace.load())
    for number in range(10_000):
        judge.add(written_decision(f"data/f{number:05d}", ORIGIN), ORIGIN)
    asked = []
    due_at = judge.due_at
    judge.due_at = lambda path: asked.append(path) or due_at(path)
    for tick in range(20):  # rounds while nothing is due yet
        judge.next_due(ORIGIN + tick * 0.01)
        assert judge.take_due(ORIGIN + tick * 0.01) == []
    assert len(asked) <= 200
    assert len(judge.take_due(ORIGIN + 5)) == 10_000 and judge.next_due(ORIGIN + 5) is None


def test_a_persons_decision_stays_explainable_after_an_agents_storm_of_dropped_paths(deb):
    """Explain records of dropped changes (an agent's churn) have a store of their own: a
    storm of them no longer pushes a person's change out of `explain` (one store of 10,000
    did, and the bench could no longer say where a person's edit had waited)."""
    deb.on_decision(decision("notes/mine.txt"))
    for number in range(EXPLAIN_DROPPED_PATHS + 500):
        deb.on_decision(decision(f"agent/run-{number:05d}.json", commit=False))
    newest = f"agent/run-{EXPLAIN_DROPPED_PATHS + 499:05d}.json"
    found = deb.explain_paths(["notes/mine.txt", "agent/run-00000.json", newest])["paths"]
    assert found["notes/mine.txt"]["commit"] is True
    assert found["agent/run-00000.json"]["forgotten"]  # the oldest one's details
    assert found[newest]["commit"] is False
    assert len(deb.trails) == 1 + EXPLAIN_DROPPED_PATHS


def test_a_paths_explain_record_is_its_latest_decision_whichever_store_holds_it(deb):
    deb.on_decision(decision("shared.txt", commit=False))
    deb.on_decision(decision("shared.txt"))
    assert deb.explain_paths(["shared.txt"])["paths"]["shared.txt"]["commit"] is True
    deb.on_decision(decision("shared.txt", commit=False))
    assert deb.explain_paths(["shared.txt"])["paths"]["shared.txt"]["commit"] is False
    assert len(deb.trails) == 1


def test_an_explain_record_keeps_the_decision_as_it_came_not_decoded(deb):
    """An agent's storm of new files keeps EXPLAIN_DROPPED_PATHS records; each kept its
    decision's trail decoded (about 2,000 bytes of objects, the frame about 500).  The
    record keeps the frame, and explain decodes it again, trail and all."""
    import gc
    import weakref
    step = ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.FANOTIFY, pid=4242,
                       cmdline="claude-autonomous --storm", matched_by="claude-.*")
    frame = messages.encode(dataclasses.replace(decision("agent/out.json", commit=False),
                                                trail=(step,)))
    received = messages.decode(frame)
    deb.handling_frame = frame  # as the Actor base sets it for the handler
    deb.on_decision(received)
    deb.handling_frame = b""
    decoded_step = weakref.ref(received.trail[0])
    del received
    gc.collect()
    assert decoded_step() is None, "the record still holds the decoded trail"
    found = deb.explain_paths(["agent/out.json"])["paths"]["agent/out.json"]
    assert found["commit"] is False and found["trail"][0]["cmdline"] == "claude-autonomous --storm"
    assert found["trail"][0]["pid"] == 4242


def test_a_forgotten_drop_is_explained_with_every_key_of_a_remembered_one(deb):
    """`explain`, `flush` and the bench read every key of a record, forgotten or not."""
    for number in range(EXPLAIN_DROPPED_PATHS + 1):
        deb.on_decision(decision(f"agent/run-{number:05d}.json", commit=False))
    newest = f"agent/run-{EXPLAIN_DROPPED_PATHS:05d}.json"
    found = deb.explain_paths(["agent/run-00000.json", newest])["paths"]
    assert found["agent/run-00000.json"]["forgotten"] and "forgotten" not in found[newest]
    assert set(found["agent/run-00000.json"]) == set(found[newest]) | {"forgotten"}
    assert found[newest]["partners"] == [] and found[newest]["hold"] is None


def test_a_path_dropped_before_the_remembered_ones_still_counts_as_decided(deb):
    """Past EXPLAIN_DROPPED_PATHS dropped paths, the oldest one's record is forgotten, and
    `actorctl flush` listed that dirty path as "not decided yet (still in the pipeline)":
    a workspace with more untracked agent files than that never flushed.  Its order is
    still known, so it is reported dropped by decision."""
    first = decision("agent/run-00000.json", commit=False)
    deb.on_decision(first)
    for number in range(1, EXPLAIN_DROPPED_PATHS + 1):
        deb.on_decision(decision(f"agent/run-{number:05d}.json", commit=False))
    record = deb.explain_paths(["agent/run-00000.json"])["paths"]["agent/run-00000.json"]
    assert record["forgotten"] and record["commit"] is False and not record["pending"]
    assert (record["epoch"], record["seq"]) == (first.epoch, first.seq)
    reason = ctl.Explain().render({"path": "agent/run-00000.json", "decision": record,
                                   "differs_from_head": True, "executor": None})
    assert "not committed by decision" in reason
    # A newer decision to commit it: nothing dropped is left to report.
    deb.on_decision(decision("agent/run-00001.json"))
    deb.trails = ExplainRecords()  # as if that record were forgotten too
    assert deb.explain_paths(["agent/run-00001.json"])["paths"]["agent/run-00001.json"] is None
