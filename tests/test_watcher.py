"""The watcher as a real process: real inotify, real router, real sockets, real git."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import zmq
from inotify_simple import Event, flags

from conftest import stage_reader, wait_for
from gitsieve.actors.watcher import RECONCILE_SLICE, Watcher
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.pattern import urgent
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision
from gitsieve.common.protocol.states import Action, ChangeKind

MAX_QUEUED_EVENTS = "/proc/sys/fs/inotify/max_queued_events"


class Collector:
    """PULLs every Change the router forwards to layer 1."""

    def __init__(self, cfg):
        self.context = zmq.Context()
        self.sock = stage_reader(self.context, cfg, "l1")
        self.changes: list[Change] = []

    def drain(self) -> list[Change]:
        while self.sock.poll(0):
            self.changes.append(messages.decode(self.sock.recv()))
        return self.changes

    def of(self, path: str, kind: str | None = None, source: str | None = None) -> list[Change]:
        return [c for c in self.drain() if c.path == path
                and (kind is None or c.kind == kind) and (source is None or c.source == source)]

    def has(self, path: str, kind: str = "write", source: str | None = None) -> bool:
        return bool(self.of(path, kind, source))

    def paths(self, kind: str = "write") -> set[str]:
        return {c.path for c in self.drain() if c.kind == kind}

    def wait(self, path: str, kind: str = "write", source: str | None = None,
             timeout: float = 10.0) -> Change:
        return wait_for(lambda: self.of(path, kind, source), timeout,
                        message=f"{kind} of {path!r}")[-1]

    def close(self):
        self.sock.close(0)
        self.context.term()


def status(cfg) -> dict:
    reply = control.request(cfg, "watcher", "status")
    assert reply.ok, reply.error
    return reply.data


def running(cfg) -> bool:
    try:
        return control.request(cfg, "watcher", "status", timeout=0.5).data["state"] == "running"
    except control.Unreachable:
        return False


@pytest.fixture
def start(workspace, actors):
    """``start(config_text)`` -> (cfg, collector) with router and watcher running."""
    collectors = []

    def go(config_text: str = "[watcher]\nreconcile_interval = 0\n"):
        workspace.config(config_text)
        cfg = workspace.load()
        actors("router", workspace.root)
        collector = Collector(cfg)
        collectors.append(collector)
        actors("watcher", workspace.root)
        wait_for(lambda: running(cfg), 15, message="watcher running")
        return cfg, collector

    yield go
    for collector in collectors:
        collector.close()


def sentinel(workspace, collector, name: str = "sentinel.txt"):
    """Write a file and wait for it: everything the watcher saw before has arrived too."""
    workspace.write(name, str(time.time()))
    collector.wait(name)


def test_modify_create_delete_and_order(workspace, start):
    cfg, col = start()
    workspace.write("README.md", "changed\n")
    first = col.wait("README.md")
    assert first.source == "inotify" and not urgent(first)
    workspace.write("new.txt", "hello\n")
    col.wait("new.txt")
    workspace.path("new.txt").unlink()
    gone = col.wait("new.txt", "delete")
    assert gone.seq > col.of("new.txt", "write")[-1].seq
    assert gone.epoch == first.epoch
    assert gone.observed >= first.observed
    assert all(not os.path.isabs(c.path) for c in col.drain())


def test_mkdir_p_and_write_at_once(workspace, start):
    cfg, col = start()
    subprocess.run("mkdir -p a/b/c && echo hi > a/b/f && echo deep > a/b/c/g",
                   shell=True, cwd=workspace.root, check=True)
    col.wait("a/b/f")
    col.wait("a/b/c/g")
    # The new directories are watched: a later edit deep inside is seen.
    workspace.write("a/b/c/g", "again\n")
    wait_for(lambda: len(col.of("a/b/c/g")) >= 2, 10, message="second write of a/b/c/g")


def test_temp_file_renamed_over_target_and_plain_rename(workspace, start):
    cfg, col = start()
    workspace.write("target.txt", "v1\n")
    col.wait("target.txt")
    before = len(col.of("target.txt"))
    workspace.write("target.txt.partial", "v2\n")
    os.rename(workspace.path("target.txt.partial"), workspace.path("target.txt"))
    col.wait("target.txt.partial", "delete")
    wait_for(lambda: len(col.of("target.txt")) > before, 10, message="target rewritten")
    os.rename(workspace.path("target.txt"), workspace.path("renamed.txt"))
    col.wait("target.txt", "delete")
    col.wait("renamed.txt")


def test_names_with_spaces_and_non_ascii(workspace, start):
    cfg, col = start()
    name = "dir with space/naïve файл ✓.txt"
    workspace.write(name, "x\n")
    col.wait(name)


def test_non_utf8_name_is_reported(workspace, start):
    cfg, col = start()
    with open(os.path.join(os.fsencode(workspace.root), b"bad\xff.txt"), "wb") as handle:
        handle.write(b"x")
    col.wait(os.fsdecode(b"bad\xff.txt"))
    assert running(cfg)


def test_sed_in_place(workspace, start):
    cfg, col = start()
    before = len(col.of("README.md"))
    subprocess.run(["sed", "-i", "s/workspace/edited/", "README.md"], cwd=workspace.root,
                   check=True)
    wait_for(lambda: len(col.of("README.md")) > before, 10, message="README.md written")
    assert workspace.path("README.md").read_text() == "edited\n"


def test_cp_r_of_200_files_all_arrive(workspace, start, tmp_path):
    source = tmp_path / "src200"
    for index in range(200):
        (source / f"d{index % 7}").mkdir(parents=True, exist_ok=True)
        (source / f"d{index % 7}" / f"f{index:03d}.txt").write_text(f"{index}\n")
    cfg, col = start()
    subprocess.run(["cp", "-r", str(source), str(workspace.root / "copy")], check=True)
    expected = {f"copy/d{i % 7}/f{i:03d}.txt" for i in range(200)}
    wait_for(lambda: expected <= col.paths(), 20, message="all 200 files")


def test_directory_moved_in_then_edited(workspace, start, tmp_path):
    outside = tmp_path / "incoming"
    (outside / "sub").mkdir(parents=True)
    for index in range(20):
        (outside / ("sub" if index % 2 else "") / f"f{index}.txt").write_text("x\n")
    cfg, col = start()
    shutil.move(str(outside), str(workspace.root / "incoming"))
    expected = {f"incoming/{'sub/' if i % 2 else ''}f{i}.txt" for i in range(20)}
    wait_for(lambda: expected <= col.paths(), 10, message="20 moved-in files")
    before = len(col.of("incoming/sub/f5.txt"))
    workspace.write("incoming/sub/f5.txt", "edited\n")
    wait_for(lambda: len(col.of("incoming/sub/f5.txt")) > before, 10, message="edit seen")


def test_directory_moved_out_reports_tracked_deletes(workspace, start, tmp_path):
    for name in ("old/a.txt", "old/deep/b.txt", "old/deep/c.txt"):
        workspace.write(name, "tracked\n")
    workspace.git("add", "old")
    workspace.git("commit", "-q", "-m", "old dir")
    workspace.write("old/untracked.txt", "u\n")
    cfg, col = start()
    shutil.move(str(workspace.root / "old"), str(tmp_path / "gone"))
    for name in ("old/a.txt", "old/deep/b.txt", "old/deep/c.txt"):
        col.wait(name, "delete")
    assert not col.has("old/untracked.txt", "delete")  # never committed, nothing to delete
    # Its watches are gone: writes in the moved-away tree are not ours any more.
    (tmp_path / "gone" / "deep" / "later.txt").write_text("outside\n")
    sentinel(workspace, col)
    assert not any("later.txt" in c.path for c in col.drain())


def test_directory_renamed_inside(workspace, start):
    for name in ("src/a.txt", "src/inner/b.txt"):
        workspace.write(name, "tracked\n")
    workspace.git("add", "src")
    workspace.git("commit", "-q", "-m", "src dir")
    cfg, col = start()
    os.rename(workspace.path("src"), workspace.path("lib"))
    for name in ("a.txt", "inner/b.txt"):
        col.wait(f"src/{name}", "delete")
        col.wait(f"lib/{name}")
    # The watches moved with the directory and now report the new names.
    before = len(col.of("lib/inner/b.txt"))
    workspace.write("lib/inner/b.txt", "edited\n")
    wait_for(lambda: len(col.of("lib/inner/b.txt")) > before, 10, message="edit under new name")
    assert not col.has("src/inner/b.txt", "write")


def test_a_directory_git_mv_renamed_reports_its_committed_files_deleted(workspace, start):
    """`git mv src lib` updates the index as it renames: asked afterwards, the index no
    longer listed src/'s files, only lib/ was committed, and the old paths stayed on the
    remote until the next reconcile (a minute).  HEAD still lists them."""
    for name in ("src/a.txt", "src/inner/b.txt"):
        workspace.write(name, "tracked\n")
    workspace.git("add", "src")
    workspace.git("commit", "-q", "-m", "src dir")
    cfg, col = start()
    workspace.git("rm", "-r", "-q", "--cached", "src")  # the index first, as git mv may
    os.rename(workspace.path("src"), workspace.path("lib"))
    for name in ("a.txt", "inner/b.txt"):
        col.wait(f"src/{name}", "delete")
        col.wait(f"lib/{name}")


def test_git_activity_is_never_reported(workspace, start):
    cfg, col = start()
    workspace.write("work.txt", "w\n")
    col.wait("work.txt")
    workspace.git("add", "work.txt")
    workspace.git("commit", "-q", "-m", "work")
    workspace.git("gc", "-q")
    sentinel(workspace, col)
    reported = {c.path for c in col.drain()}
    assert not any(".git" in p.split("/") for p in reported), reported


def test_startup_reconcile_reports_changes_made_while_down(workspace, start):
    workspace.write("README.md", "edited while down\n")
    workspace.path(".gitignore").unlink()
    workspace.write("fresh/new.txt", "n\n")
    cfg, col = start()
    assert col.wait("README.md", source="reconcile").kind == "write"
    col.wait(".gitignore", "delete", source="reconcile")
    col.wait("fresh/new.txt", source="reconcile")


def test_periodic_reconcile_sends_only_paths_not_in_flight(workspace, start):
    """A path sent and not yet seen decided is in flight: a periodic reconcile skips it;
    once the debouncer's feed shows its decision on the newest change sent, the next
    reconcile sends it again.  The file is held open so that its creation and its close
    are two changes, as a loaded machine makes them: the first one's decision is stale."""
    cfg, col = start("[watcher]\nreconcile_interval = 0.3\n")
    context = zmq.Context()
    feed = context.socket(zmq.PUB)
    feed.linger = 0
    feed.bind(cfg.endpoints.feed)
    try:
        with open(workspace.path("README.md"), "w") as handle:
            created = col.wait("README.md")
            handle.write("x\n")
        wait_for(lambda: [c for c in col.of("README.md") if c.seq > created.seq], 10,
                 message="the close of README.md")
        wait_for(lambda: status(cfg)["reconcile_in_flight"] >= 2, 10,
                 message="two reconciles skipping the path in flight")
        assert not col.of("README.md", source="reconcile")
        assert status(cfg)["in_flight"] >= 1

        def decide(change):
            feed.send_multipart([b"d", messages.encode(Decision(
                path="README.md", kind=ChangeKind.WRITE, seq=change.seq, epoch=change.epoch,
                observed=change.observed, commit=True, action=Action.ANALYZE))])
        for _ in range(5):  # the creation's decision is stale: still in flight
            decide(created)
            time.sleep(0.2)
        assert not col.of("README.md", source="reconcile")

        def decided_and_resent():
            decide(col.of("README.md")[-1])
            return col.of("README.md", source="reconcile")
        wait_for(decided_and_resent, 10, 0.2, message="sent again once decided")
    finally:
        feed.close(0)
        context.term()


def test_priority_marks_allow_paths(workspace, start):
    workspace.patterns("ALLOW:docs/.*\\.md:User docs\nBLOCK:logs/.*\n")
    cfg, col = start()
    workspace.write("docs/guide.md", "g\n")
    workspace.write("logs/x.md", "l\n")
    assert urgent(col.wait("docs/guide.md"))
    assert not urgent(col.wait("logs/x.md"))


def test_a_file_rewritten_in_a_storm_costs_reports_per_quarter_second(workspace, start):
    """The same with real inotify: 200 rewrites in about half a second were 200 to 400
    reports; a person's edit meanwhile is reported as ever."""
    cfg, col = start()
    every = min(0.25, cfg.debounce_allow / 2, cfg.debounce_default / 2)  # the pacer's
    path = workspace.path("agent-state.json")
    started = time.monotonic()
    for number in range(200):
        with open(path, "w") as out:
            out.write(f"{{\"n\": {number}}}\n")
        time.sleep(0.002)
        if number == 100:
            workspace.write("mine.txt", "a person's edit\n")
    last_write = time.monotonic()
    col.wait("mine.txt")
    final = wait_for(lambda: [c for c in col.of("agent-state.json")
                              if c.written >= last_write - 0.05 and not c.open_since],
                     10, message="the storm's last write reported")
    reports = col.of("agent-state.json")
    assert len(reports) <= 2 * ((last_write - started) / every + 2), len(reports)
    assert final and status(cfg)["writes_held"] > 0


def test_file_appended_without_close_is_reported(workspace, start):
    cfg, col = start("[watcher]\nreconcile_interval = 0\nmodify_interval = 0.2\n")
    with open(workspace.path("growing.log"), "w") as handle:
        col.wait("growing.log")  # CREATE
        deadline = time.monotonic() + 10
        while len(col.of("growing.log")) < 3 and time.monotonic() < deadline:
            handle.write("line\n")
            handle.flush()
            time.sleep(0.05)
        assert len(col.of("growing.log")) >= 3  # reported while never closed
    assert status(cfg)["queue"] == 0


def test_queue_overflow_rescans_and_reports_everything(workspace, start):
    with open(MAX_QUEUED_EVENTS) as handle:
        original = handle.read().strip()
    try:
        with open(MAX_QUEUED_EVENTS, "w") as handle:
            handle.write("16")
        cfg, col = start()  # its inotify instance gets the tiny queue
    finally:
        with open(MAX_QUEUED_EVENTS, "w") as handle:
            handle.write(original)
    expected = set()
    for round_ in range(5):
        for index in range(300):
            name = f"flood{round_}/d{index % 10}/f{index}.txt"
            workspace.write(name, "x\n")
            expected.add(name)
        try:
            wait_for(lambda: status(cfg)["overflows"] >= 1, 3, message="an overflow")
            break
        except AssertionError:
            continue  # the watcher kept up this time; flood again
    info = status(cfg)
    assert info["overflows"] >= 1 and info["rescans"] >= 1
    wait_for(lambda: expected <= col.paths(), 20, message="every flooded file")
    # After the rescan, the watches still work.
    workspace.write("flood0/d3/after.txt", "a\n")
    col.wait("flood0/d3/after.txt")


@pytest.fixture
def bare_watcher(workspace, tmp_path):
    """The watcher without its sockets: inotify reads are fed by the test, Changes land in
    a FakeSocket."""
    from conftest import FakeSocket
    from gitsieve.common.actor.runs import RunCounter
    watcher = Watcher(workspace.load())
    watcher.runs = RunCounter(tmp_path / "run")
    watcher.epoch = float(watcher.runs.run)
    watcher.out = FakeSocket()
    watcher.wd_to_path.update({1: "", 2: "sub"})
    watcher.path_to_wd.update({"": 1, "sub": 2})
    fed: list = []
    watcher.inotify.read = lambda timeout=0: fed.pop(0) if fed else []

    def read(*events) -> list[Change]:
        before = len(watcher.out.frames)
        fed.append(list(events))
        watcher._read_events()
        watcher._flush()  # as the end of the poll round does
        return watcher.out.messages()[before:]
    yield watcher, read
    watcher.shutdown()
    watcher.close()


def test_after_an_overflow_inotify_is_read_between_slices_of_the_reconcile(bare_watcher,
                                                                          workspace):
    """An overflow's reconcile of a storm's paths was made in one go: 80,000 paths held
    the watcher 0.7-1.1 s, the kernel queue overflowed again meanwhile, and a person's edit
    waited behind it (fails before slicing: the overflow's read sends every path).  Its
    smallest areas go first; an overflow meanwhile makes another once it ends."""
    watcher, read = bare_watcher
    many = 2 * RECONCILE_SLICE + 500
    for number in range(many):
        workspace.write(f"agent/d{number // 500}/f{number}.txt", "x")
    workspace.write("sub/mine.txt", "a person's edit, lost in the overflow")
    assert read(Event(-1, flags.Q_OVERFLOW, 0, "")) == []  # the reconcile waits its turns
    assert watcher.stats["overflows"] == 1 and watcher.reconciling is not None
    assert watcher.wakeup_in() == 0.0

    def tick() -> list[Change]:
        before = len(watcher.out.frames)
        watcher.on_tick(time.monotonic())
        watcher._flush()
        return watcher.out.messages()[before:]
    first = tick()
    assert len(first) == RECONCILE_SLICE and {c.source for c in first} == {"reconcile"}
    assert first[0].path == "sub/mine.txt"  # its area holds one path; the agent's, 4,500
    # read between two slices: a later edit goes before the rest of the reconcile
    workspace.write("sub/later.txt", "another edit")
    later, = read(Event(2, flags.CLOSE_WRITE, 0, "later.txt"))
    assert later.path == "sub/later.txt" and later.source == "inotify"
    # another overflow, and a file lost in it: the reconcile under way goes on (nothing
    # sent twice), then another finds that file
    workspace.write("notes.txt", "lost in the second overflow")
    assert read(Event(-1, flags.Q_OVERFLOW, 0, "")) == [] and watcher.reconcile_again
    second = tick()
    assert len(second) == RECONCILE_SLICE and not {c.path for c in first} & {
        c.path for c in second}
    sent = first + second
    while watcher.stats["reconciles"] == 0:
        sent += tick()
    assert watcher.reconciling is not None and not watcher.reconcile_again  # the second, under way
    sent += tick()
    assert sent[-1].path == "notes.txt"  # the rest is in flight: passed over
    assert watcher.reconciling is None and watcher.wakeup_in() != 0.0
    reconciled = [c.path for c in sent if c.source == "reconcile"]
    assert len(reconciled) == many + 2 and set(reconciled) == {"sub/mine.txt", "notes.txt"} | {
        f"agent/d{number // 500}/f{number}.txt" for number in range(many)}
    assert watcher.stats["reconciles"] == 2


def test_a_read_is_folded_per_path_with_its_writing_facts(bare_watcher, workspace):
    watcher, read = bare_watcher
    workspace.write("a", "x")
    workspace.write("c", "x")
    changes = read(
        Event(1, flags.CREATE, 0, "a"), Event(1, flags.MODIFY, 0, "a"),
        Event(1, flags.MODIFY, 0, "a"), Event(1, flags.CLOSE_WRITE, 0, "a"),
        Event(1, flags.MODIFY, 0, "b"),                      # b is never closed in this read
        Event(2, flags.MODIFY, 0, "a"),                      # same name, other directory
        Event(1, flags.CREATE, 0, "c"), Event(1, flags.DELETE, 0, "c"),
        Event(1, flags.CREATE, 0, "c"), Event(1, flags.CLOSE_WRITE, 0, "c"))
    by_path = {c.path: c for c in changes}
    assert [c.path for c in changes] == ["a", "b", "sub/a", "c"]  # one report per path
    assert by_path["a"].kind == "write" and by_path["a"].open_since == 0.0
    assert by_path["a"].written > 0
    assert by_path["b"].open_since > 0 and by_path["b"].written >= by_path["b"].open_since
    assert by_path["c"].kind == "write" and by_path["c"].open_since == 0.0
    assert watcher.stats["events_folded"] == 6
    # b is still open: its later MODIFYs are throttled, its close is told at once.
    assert read(Event(1, flags.MODIFY, 0, "b")) == []
    [closed] = read(Event(1, flags.CLOSE_WRITE, 0, "b"))
    assert closed.open_since == 0.0 and closed.written >= by_path["b"].written


def test_a_path_rewritten_many_times_a_second_is_reported_at_the_trailing_edge(bare_watcher,
                                                                               workspace):
    """Every open and close of a file an agent rewrote was reported: a storm's work grew
    with its writes, not its paths (fails before ReportPacer)."""
    watcher, read = bare_watcher
    workspace.write("hot", "x")
    workspace.write("mine", "x")
    every = watcher.pacer.every
    assert every > 0
    opened, = read(Event(1, flags.MODIFY, 0, "hot"))
    closed, = read(Event(1, flags.CLOSE_WRITE, 0, "hot"))  # ends a told open: at once
    assert opened.open_since > 0 and closed.open_since == 0.0
    started = time.monotonic()
    rewrites = []
    for _ in range(20):  # each rewrite's open and close in reads of their own
        rewrites += read(Event(1, flags.MODIFY, 0, "hot"))
        rewrites += read(Event(1, flags.CLOSE_WRITE, 0, "hot"))
    elapsed = time.monotonic() - started
    assert len(rewrites) <= int(elapsed / every) + 1, rewrites
    # Another path is told at once meanwhile.
    assert [c.path for c in read(Event(1, flags.MODIFY, 0, "mine"),
                                  Event(1, flags.CLOSE_WRITE, 0, "mine"))] == ["mine"]
    # The held report comes at the trailing edge: one, closed, with the last write's time.
    before = len(watcher.out.frames)
    watcher.on_tick(time.monotonic() + every)
    trailing = watcher.out.messages()[before:]
    assert [(c.path, c.kind, c.open_since) for c in trailing] == [("hot", "write", 0.0)]
    assert trailing[0].written >= started
    assert watcher.stats["writes_held"] >= 20


def test_both_sides_of_a_move_name_each_other_within_a_read_and_across_two(bare_watcher):
    watcher, read = bare_watcher
    changes = read(Event(1, flags.MOVED_FROM, 7, "old"), Event(2, flags.MOVED_TO, 7, "new"))
    assert [(c.path, c.kind, c.partners) for c in changes] == [
        ("old", "delete", ("sub/new",)), ("sub/new", "write", ("old",))]
    # The pair split over two reads: the second read names both sides again.
    [gone] = read(Event(1, flags.MOVED_FROM, 8, "x"))
    assert gone.partners == ()
    changes = read(Event(2, flags.MOVED_TO, 8, "y"))
    assert {(c.path, c.kind, c.partners) for c in changes} == {
        ("x", "delete", ("sub/y",)), ("sub/y", "write", ("x",))}
    # A change of a moved path soon after still names its partner (told at the trailing
    # edge: the move reported the path a moment ago).
    assert read(Event(2, flags.CLOSE_WRITE, 0, "y")) == []
    before = len(watcher.out.frames)
    watcher.on_tick(time.monotonic() + watcher.pacer.every)
    [again] = watcher.out.messages()[before:]
    assert again.partners == ("x",)


def test_the_run_counter_orders_runs_whatever_the_clock(workspace, tmp_path):
    from gitsieve.common.actor.runs import SEQ_BLOCK, IssuedBound, RunCounter
    first = RunCounter(tmp_path / "run")
    second = RunCounter(tmp_path / "run")
    assert (first.run, second.run) == (1, 2)
    bound = IssuedBound(tmp_path / "run")
    assert bound.current() == (2, SEQ_BLOCK)
    second.issue(SEQ_BLOCK + 1)
    assert bound.current() == (2, 2 * SEQ_BLOCK + 1)


def test_changes_the_router_lost_or_dropped_make_the_watcher_reconcile(bare_watcher):
    from gitsieve.common.protocol.messages import HealthStatus
    watcher, _ = bare_watcher

    def health(lost: int, dropped: int) -> HealthStatus:
        return HealthStatus(ok=True, reasons=(), free_mb=1e6, operation="", checked=1.0,
                            actors={"router": {"pid": 7, "alive": True,
                                               "changes_lost": lost + dropped}})
    watcher.on_health(health(0, 0))
    watcher.in_flight["a.txt"] = (1, time.monotonic())
    watcher.on_health(health(0, 0))
    assert watcher.restart_reconcile_at is None and watcher.in_flight
    watcher.on_health(health(1, 2))
    assert watcher.restart_reconcile_at is not None and not watcher.in_flight
    assert "router lost 3 change(s)" in watcher.restarts_seen


def test_a_move_inotify_could_not_pair_is_paired_by_the_index_blob(bare_watcher, workspace):
    """A tracked file moved out of sight (its MOVED_TO never came) and the same content
    appearing elsewhere: the index blob of the removed path pairs them."""
    watcher, read = bare_watcher
    (workspace.root / "sub").mkdir()
    os.rename(workspace.root / "README.md", workspace.root / "sub" / "README.md")
    read(Event(1, flags.MOVED_FROM, 9, "README.md"))
    read(Event(2, flags.CREATE, 0, "README.md"), Event(2, flags.CLOSE_WRITE, 0, "README.md"))
    watcher.next_match = 0.0
    watcher._match_moves(time.monotonic(), time.time())
    assert watcher.stats["moves_matched"] == 1
    assert watcher.stats.get("errors", 0) == 0 and not watcher.last_error


def test_a_file_moved_twice_the_second_time_out_of_sight_stays_one_move(bare_watcher,
                                                                        workspace):
    """``mv swap swap-old && mkdir swap && mv swap-old swap/content``: inotify pairs the
    first move; the second one's MOVED_TO came from a directory watched too late.  The
    removed name was never in the index, so no blob paired it, and the deletion of the
    tracked name was committed alone, the new file in a second commit.  The removed name
    now takes the index blob of the name it was moved from, and the new file is that
    name's partner."""
    watcher, read = bare_watcher
    os.rename(workspace.root / "README.md", workspace.root / "swap-old")
    (workspace.root / "sub").mkdir()
    os.rename(workspace.root / "swap-old", workspace.root / "sub" / "content")
    first = read(Event(1, flags.MOVED_FROM, 5, "README.md"), Event(1, flags.MOVED_TO, 5,
                                                                    "swap-old"),
                 Event(1, flags.MOVED_FROM, 9, "swap-old"))
    assert {c.path for c in first} == {"README.md", "swap-old"}
    read(Event(2, flags.CREATE, 0, "content"), Event(2, flags.CLOSE_WRITE, 0, "content"))
    watcher.next_match = 0.0
    watcher._match_moves(time.monotonic(), time.time())  # if the read did not match already
    assert watcher.stats["moves_matched"] == 1
    latest = {c.path: c for c in watcher.out.messages()}  # each path's newest change
    assert "README.md" in latest["sub/content"].partners, latest["sub/content"]
    assert "sub/content" in latest["README.md"].partners, latest["README.md"]


def test_a_version_settled_a_second_before_a_kill_is_still_settled_after_it(
        bare_watcher, workspace):
    watcher, _ = bare_watcher
    config_mod.prepare_runtime_dir(watcher.config)  # as its setup does
    for name in ("one.json", "two.json"):
        workspace.write(name, "{}\n")
    now = time.monotonic()
    watcher._settle("one.json")
    watcher.on_tick(now)
    watcher._settle("two.json")
    watcher.on_tick(now + 1.5)
    # killed: no shutdown, so nothing more is saved
    successor = Watcher(workspace.load())
    try:
        successor.settled.load(successor.excluded)  # as its setup does
        assert successor.is_settled("one.json") and successor.is_settled("two.json")
    finally:
        successor.close()


def test_a_file_changed_long_before_the_reconcile_is_not_made_to_wait_a_quiet_period(
        workspace, start):
    """A path a reconcile finds carries its last change (the inode's ctime) as its last
    write, so the debouncer releases a file quiet for long at once (a dirty start), and
    one changed just now after its quiet period."""
    workspace.write("old.txt", "changed well before the start\n")
    wrote_old = time.monotonic()
    time.sleep(1.0)
    workspace.write("fresh.txt", "changed right before the start\n")
    wrote_fresh = time.monotonic()
    cfg, col = start()
    old = col.wait("old.txt", source="reconcile")
    fresh = col.wait("fresh.txt", source="reconcile")
    # both clocks, the ctime's and the monotonic one, within the kernel's coarse tick
    assert abs(old.written - wrote_old) < 0.5, (old.written, wrote_old)
    assert abs(fresh.written - wrote_fresh) < 0.5, (fresh.written, wrote_fresh)


def test_the_files_of_a_directory_whose_mode_changed_are_told_again(workspace, start):
    """A directory made unreadable right after a write in it, then readable again: its
    file waited for the next reconcile (about a minute) to be judged and committed; the
    directory's own IN_ATTRIB now tells its files again (fails before)."""
    workspace.write("secret/h.txt", "hidden\n")
    cfg, col = start()
    col.wait("secret/h.txt")
    sentinel(workspace, col)
    before = len(col.of("secret/h.txt"))
    os.chmod(workspace.path("secret"), 0o700)
    wait_for(lambda: len(col.of("secret/h.txt")) > before, 10,
             message="secret/h.txt told again after its directory's chmod")


def test_a_directory_chmod_tells_its_files_again_but_not_settled_versions(bare_watcher,
                                                                          workspace):
    """An agent's untracked file judged the system's is settled: told again by a touch or
    chmod of its directory, it would be judged out of the attribution's sight, UNKNOWN, and
    committed as a new file."""
    watcher, read = bare_watcher
    workspace.write("sub/agent.json", "{}\n")
    workspace.write("sub/notes.md", "mine\n")
    watcher._settle("sub/agent.json")
    told = read(Event(1, flags.ATTRIB | flags.ISDIR, 0, "sub"))
    assert [change.path for change in told] == ["sub/notes.md"]


def test_files_a_changed_gitignore_no_longer_ignores_are_sent(workspace, start):
    """Un-ignoring changes no file: without a reconcile on the .gitignore's change, the
    files it let go would wait for the periodic one (a minute), or forever with none."""
    workspace.write(".gitignore", "*.log\nbuild/\n")
    workspace.git("add", ".gitignore")
    workspace.git("commit", "-qm", "ignore logs and build")
    workspace.write("app.log", "kept out until now\n")
    workspace.write("build/out.txt", "still ignored\n")
    cfg, col = start()
    sentinel(workspace, col)
    assert not col.of("app.log")
    workspace.write(".gitignore", "build/\n")
    assert col.wait("app.log", source="reconcile").partners == (".gitignore",)
    sentinel(workspace, col, "second-sentinel.txt")
    assert not col.of("build/out.txt")
    assert status(cfg)["excludes_reconciles"] == 1
