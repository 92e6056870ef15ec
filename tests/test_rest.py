"""Light at rest: every long-lived git ends after a rest (and the next request starts
another), freed heap goes back to the kernel, and the work each forked actor would otherwise do again at start (compiling the
configured regexes, looking libc up with ldconfig) is done once, before the fork."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref

import psutil
import pytest
import zmq

from gitsieve.actors.content_layer import ContentLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor.base import Actor
from gitsieve.common.actor.heap import HeapTrim
from gitsieve.actors.pattern_layer import PatternLayer
from gitsieve.common.git.catfile import HeadVersions
from gitsieve.common.git.gateway import LONG_LIVED_IDLE, Git
from gitsieve.common.git.ignore import IgnoreChecker
from gitsieve.common.judge.guard.gate import BlobReader
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, ControlRequest, Heartbeat
from gitsieve.common.protocol.states import ChangeKind


def committed(workspace) -> str:
    """A commit of notes.md and .gitignore; the blob id of notes.md."""
    workspace.write("notes.md", "hello\n")
    workspace.write(".gitignore", "*.log\n")
    workspace.git("add", "notes.md", ".gitignore")
    workspace.git("commit", "-q", "-m", "notes")
    return workspace.git("rev-parse", "HEAD:notes.md").strip()


def ask_head(workspace, holder: HeadVersions) -> None:
    holder.drop()  # read again, not from the cache
    assert holder.get("notes.md").data == b"hello\n"


def ask_ignore(workspace, holder: IgnoreChecker) -> None:
    assert holder.ignored(["x.log", "notes.md"]) == {"x.log"}


def ask_blob(workspace, holder: BlobReader) -> None:
    oid = workspace.git("rev-parse", "HEAD:notes.md").strip()
    assert [(found, b"".join(pieces)) for found, pieces in holder.blobs([oid])] == [
        (oid, b"hello\n")]


HOLDERS = {
    "cat-file of HEAD (L3, executor)": (
        lambda ws: HeadVersions(Git(ws.root), ws.path(".git"), 1 << 20),
        lambda holder: holder.reader, ask_head),
    "check-ignore (L1)": (
        lambda ws: IgnoreChecker(Git(ws.root), ws.path(".git")),
        lambda holder: holder, ask_ignore),
    "blob reader (guard)": (
        lambda ws: BlobReader(Git(ws.root)), lambda holder: holder, ask_blob),
}


@pytest.mark.parametrize("kind", sorted(HOLDERS))
def test_a_long_lived_git_ends_after_a_rest_and_the_next_request_starts_another(
        workspace, kind):
    make, kept_of, ask = HOLDERS[kind]
    committed(workspace)
    holder = make(workspace)
    kept = kept_of(holder)
    try:
        ask(workspace, holder)
        first = kept.child.pid
        ask(workspace, holder)
        assert kept.child.pid == first  # one process serves a burst
        kept.close_if_idle(time.monotonic() + 1)  # asked a moment ago: kept
        assert kept.child is not None and psutil.pid_exists(first)
        kept.close_if_idle(time.monotonic() + LONG_LIVED_IDLE)  # at rest: ended and reaped
        assert kept.child is None
        assert not psutil.pid_exists(first)
        ask(workspace, holder)  # the next request is answered by a new one
        assert kept.child is not None and kept.child.pid != first
    finally:
        holder.close()


def test_l1_and_l3_end_their_gits_on_a_tick_after_a_rest(workspace):
    """The actors' ticks end the children; before, a cat-file per L3 worker and L1's
    check-ignore stayed for as long as gitsieve ran (about 1 MiB each)."""
    committed(workspace)
    cfg = workspace.load()
    l1, l3 = PatternLayer(cfg), ContentLayer(cfg)
    try:
        assert l1.judge.ignored(["x.log", "notes.md"]) == {"x.log"}
        assert l3.judge.head.get("notes.md").data == b"hello\n"
        children = [l1.judge.ignore.child.pid, l3.judge.head.reader.child.pid]
        now = time.monotonic()
        l1.on_tick(now)
        l3.on_tick(now)
        assert all(psutil.pid_exists(pid) for pid in children)
        l1.on_tick(now + LONG_LIVED_IDLE)
        l3.on_tick(now + LONG_LIVED_IDLE)
        assert l1.judge.ignore.child is None and l3.judge.head.reader.child is None
        assert not any(psutil.pid_exists(pid) for pid in children)
    finally:
        l1.judge.close()
        l3.judge.close()


# Run in a process of its own: the preload freezes the collector for good.
_AFTER_PRELOAD = textwrap.dedent("""
    import ctypes.util, sys
    import regex
    from gitsieve.common import config as config_mod
    from gitsieve.common.tools.runner import Runner

    cfg = config_mod.load(sys.argv[1])
    Runner(cfg).preload()

    def refused(*args, **kwargs):
        raise AssertionError(f"after the preload: {args}")
    regex.compile = refused  # every configured regex must be compiled already
    ctypes.util.find_library = refused  # ldconfig must not run again

    import inotify_simple
    from gitsieve.common.judge.attribution import fanotify, file_identity
    from gitsieve.common.judge.content_judge import ContentJudge
    from gitsieve.common.judge.rules import RuleSet
    inotify_simple.INotify().close()
    fanotify._LIBC = None
    fanotify.libc()
    file_identity._libc()
    judge = ContentJudge(cfg)
    assert judge.volatile is not None
    RuleSet.load(cfg.patterns_file, cfg.workspace)
    judge.close()
    print("nothing compiled or looked up again")
""")


def test_what_every_fork_would_do_again_is_done_before_the_fork(workspace):
    """Compiling the content layer's volatile-text pattern ran the regex parser (hundreds
    of functions) in L3 and the executor, and finding libc ran ldconfig in L2, the watcher
    and health: in each fork, copying the pages those functions touched (fails before)."""
    workspace.fast_config('[filter]\ntext_volatile_patterns = ["build [0-9]+"]\n')
    workspace.patterns("ANALYZE:notes/.*:notes\nBLOCK:status/.*\\.json:agent status\n")
    done = subprocess.run([sys.executable, "-c", _AFTER_PRELOAD, str(workspace.root)],
                          check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing compiled or looked up again" in done.stdout


# A fresh interpreter: what it frees must not be hidden by the test process's own heap.
_FREED_HEAP = textwrap.dedent("""
    import os, time
    from gitsieve.common.actor.heap import HeapTrim

    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytes(4000) + bytes([n % 256]) for n in range(20_000)]  # 80 MB through malloc
    kept = blocks[-1]  # the heap's top stays in use: free() alone gives nothing back
    del blocks
    trim = HeapTrim(every=0.0)
    before = resident()
    assert trim.due(time.monotonic()), "starting up is work: the first rest trims"
    after = resident()
    assert not trim.due(time.monotonic()), "nothing handled since: no second trim"
    trim.worked()
    assert trim.due(time.monotonic())
    print(before >> 20, after >> 20)
""")


def test_freed_heap_goes_back_to_the_kernel_after_work():
    """Before, the pages of a burst an actor handled stayed resident (and in its PSS) for
    as long as it ran: glibc keeps freed memory for reuse."""
    done = subprocess.run([sys.executable, "-c", _FREED_HEAP], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before - after >= 40, f"resident {before} MiB before the trim, {after} after"


def test_trims_wait_for_the_interval_and_for_work():
    trim = HeapTrim(every=30.0)
    start = time.monotonic()
    assert not trim.due(start), "the first trim comes an interval after the start"
    assert trim.due(start + 30.0) and trim.trims == 1
    assert not trim.due(start + 90.0), "nothing handled since the last trim"
    trim.worked()
    assert not trim.due(start + 45.0), "worked, but within the interval"
    assert trim.due(start + 60.0) and trim.trims == 2


class _Listener(Actor):
    name = "listener"


def test_an_actor_trims_on_a_round_after_handling_something(workspace):
    """The poll loop, with real sockets: a round that handled a message makes the next
    trim due; rounds with nothing to handle, or only liveness traffic, do not."""
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    actor = _Listener(cfg)
    endpoint = f"ipc://{cfg.runtime_dir}/listener-test"
    handled = []
    try:
        actor._heartbeat = actor.connect(zmq.PUSH, cfg.endpoints.heartbeat, hwm=10)
        actor.add_input(actor.bind(zmq.PULL, endpoint),
                        {Heartbeat: handled.append, ControlRequest: handled.append})
        actor.heap = HeapTrim(every=0.0)
        actor._round()
        assert actor.heap.trims == 1  # starting up was work
        actor._next_heartbeat = time.monotonic()  # a round at once, beating: not work
        actor._round()
        assert actor.heap.trims == 1
        sender = actor.connect(zmq.PUSH, endpoint)

        def handle(message) -> None:
            sender.send(messages.encode(message))
            count, deadline = len(handled), time.monotonic() + 10
            while len(handled) == count and time.monotonic() < deadline:
                actor._round()
            assert len(handled) == count + 1
        handle(Heartbeat(actor="test", pid=1, sent=time.time(), state="running", stats={},
                         interval=1.0))
        assert actor.heap.trims == 1, "a heartbeat is liveness, not work"
        handle(ControlRequest(command="status"))
        assert actor.heap.trims == 2
    finally:
        actor.close()


def test_old_roots_are_forgotten_as_head_moves(workspace):
    """Each commit makes a new root tree, and the tree cache kept every one it was asked
    about up to its cap (100,000 entries: about 17 MB in L3 and again in the executor);
    now a tree not looked into since HEAD last moved goes (fails before: 20 roots kept)."""
    for n in range(50):
        workspace.write(f"f{n}.txt", f"{n}\n")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "files")
    holder = HeadVersions(Git(workspace.root), workspace.path(".git"), 1 << 20)
    try:
        for n in range(20):
            workspace.write("f0.txt", f"edit {n}\n")
            workspace.git("commit", "-q", "-am", f"edit {n}")
            assert holder.get("f0.txt").data == f"edit {n}\n".encode()
        root_entries = len(workspace.git("ls-tree", "HEAD").splitlines())
        assert holder.walker.cached_entries <= 2 * root_entries
        assert len(holder.walker.trees) <= 2
        holder.get("f1.txt")  # asked again without a move: the tree is still there
        assert holder.status()["cat_file_starts"] == 1
    finally:
        holder.close()


def test_head_versions_are_let_go_after_a_rest(workspace):
    """L3's and the executor's cached HEAD versions (up to 64 MB) and trees stayed for as
    long as gitsieve ran; after a rest they go with the cat-file child, and the next
    question reads HEAD again (fails before)."""
    committed(workspace)
    holder = HeadVersions(Git(workspace.root), workspace.path(".git"), 1 << 20)
    try:
        assert holder.get("notes.md").data == b"hello\n"
        asked = time.monotonic()
        assert holder.close_idle(asked + 1) is False  # asked a moment ago: kept
        assert holder.cache and holder.walker.trees and holder.reader.child is not None
        holder.get("notes.md")  # a cache hit is a question too: the rest starts again
        assert holder.close_idle(asked + LONG_LIVED_IDLE) is False
        assert holder.close_idle(time.monotonic() + LONG_LIVED_IDLE) is True
        assert not holder.cache and not holder.walker.trees
        assert holder.walker.cached_entries == 0 and holder.reader.child is None
        assert holder.close_idle(time.monotonic() + LONG_LIVED_IDLE) is False  # nothing held
        assert holder.get("notes.md").data == b"hello\n"
    finally:
        holder.close()


def test_letting_a_cache_go_makes_a_trim_due_at_once():
    trim = HeapTrim(every=30.0)
    start = time.monotonic()
    assert trim.due(start + 30.0)
    trim.released()
    assert trim.due(start + 31.0), "what a cache held is trimmed on the next round"


def test_a_trim_collects_the_cyclic_garbage_of_the_work_first():
    """Each git run through sh leaves cyclic garbage, which the collector's thresholds
    kept for long (thousands of objects in the executor after 40 commits)."""
    class Node:
        pass
    gc.disable()
    try:
        node = Node()
        node.self = node
        gone = weakref.ref(node)
        del node
        assert gone() is not None
        trim = HeapTrim(every=0.0)
        assert trim.due(time.monotonic())
        assert gone() is None
    finally:
        gc.enable()


# A fresh interpreter: the filler must see the allocator as the fork server leaves it.
_FILLED_POOLS = textwrap.dedent("""
    import importlib
    from gitsieve.common.actor.heap import fill_small_object_pools, small_object_free_blocks
    for actor in ("executor", "content_layer", "process_layer", "watcher"):
        importlib.import_module("gitsieve.actors." + actor)

    def free_bytes():
        return sum(size * free for size, free in small_object_free_blocks().items()
                   if size >= 32)
    before = free_bytes()
    taken = fill_small_object_pools()
    print(before, taken, free_bytes())
""")


def test_the_fork_server_takes_its_free_small_object_blocks_before_forking():
    """A fork's first allocations of each size went into the free blocks of pools it
    shares with the fork server, copying a page each time; the filler takes them first
    (4 to 8 MiB less PSS over the eight actors, measured in ARCHITECTURE.md)."""
    done = subprocess.run([sys.executable, "-c", _FILLED_POOLS], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, taken, after = map(int, done.stdout.split())
    assert before > 100_000 and taken >= before // 2, (before, taken)
    assert after < before // 2, f"{before} bytes free before the fill, {after} after"


# The fork server's last step before forking, in a fresh interpreter importing what it does.
_FILLED_CHUNKS = textwrap.dedent("""
    import ctypes, importlib
    from gitsieve.common.actor.heap import _MallInfo2, fill_malloc_free_chunks, trim_heap
    for actor in ("executor", "content_layer", "process_layer", "watcher"):
        importlib.import_module("gitsieve.actors." + actor)
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]

    def free_below_top():
        info = libc.mallinfo2()
        return info.fordblks - info.keepcost

    # How many free chunks importing leaves depends on the installation (an editable one
    # leaves megabytes, a plain one tens of kilobytes): free some between live ones.
    kept = [bytes(1000 + n % 3000) for n in range(4000)]
    del kept[::2]
    trim_heap()
    before = free_below_top()
    taken = fill_malloc_free_chunks()
    after = free_below_top()
    chunk = libc.malloc(2000)  # what a fork's first malloc of an object over 512 bytes gets
    from_top = libc.sbrk(0) - libc.mallinfo2().keepcost - (chunk + 2000) < 4096
    print(before, taken, after, int(from_top))
""")


def test_the_fork_server_takes_its_free_malloc_chunks_before_forking():
    """Importing leaves free chunks between live ones in glibc's heap (megabytes with an
    editable installation); a fork's mallocs reused them and copied each page they lie on.
    Taken before forking, the next malloc comes from the top of the heap."""
    done = subprocess.run([sys.executable, "-c", _FILLED_CHUNKS], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, taken, after, from_top = map(int, done.stdout.split())
    assert before > 256 * 1024 and taken > before // 2, (before, taken)
    assert after < before // 4, f"{before} bytes free below the top before the fill, {after} after"
    assert from_top, "a malloc after the fill still reused a free chunk the forks share"


# In a fresh interpreter: nothing else looks a name up between the probe and the count.
_EMPTIED_METHOD_CACHE = textwrap.dedent("""
    import sys
    from gitsieve.common.actor.heap import empty_method_cache

    class Probe:
        pass

    name = sys.intern("gitsieve_probe_" + "attribute")
    alone = sys.getrefcount(name)
    getattr(Probe, name, None)  # a lookup the method cache remembers, with its name
    cached = sys.getrefcount(name)
    emptied = empty_method_cache()
    print(alone, cached, sys.getrefcount(name), int(emptied))
""")


def test_the_fork_server_empties_the_method_cache_before_forking():
    """Each entry of the interpreter's method cache held a reference to an attribute name,
    so a fork's lookup replacing an entry wrote the count of a string on a page the forks
    share, copying it (about 60 pages an actor).  Emptied before the fork, the cache holds
    no name of the fork server's (ImportError before)."""
    done = subprocess.run([sys.executable, "-c", _EMPTIED_METHOD_CACHE],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    alone, cached, emptied, cleared = map(int, done.stdout.split())
    assert cached > alone, "the probe's lookup was not cached: the test proves nothing"
    assert cleared and emptied == alone, (alone, cached, emptied)


# Run in a process of its own, like _AFTER_PRELOAD.
_PRELOAD_EMPTIES_METHOD_CACHE = textwrap.dedent("""
    import sys
    from gitsieve.common import config as config_mod
    from gitsieve.common.tools.runner import Runner

    class Probe:
        pass

    name = sys.intern("gitsieve_probe_" + "attribute")
    alone = sys.getrefcount(name)
    getattr(Probe, name, None)
    cached = sys.getrefcount(name)
    Runner(config_mod.load(sys.argv[1])).preload()
    print(alone, cached, sys.getrefcount(name))
""")


def test_the_preload_ends_with_the_method_cache_empty(workspace):
    """What the fork server looked up before forking is not held by the method cache the
    forks inherit."""
    done = subprocess.run([sys.executable, "-c", _PRELOAD_EMPTIES_METHOD_CACHE,
                           str(workspace.root)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    alone, cached, after = map(int, done.stdout.split())
    assert cached > alone, "the probe's lookup was not cached: the test proves nothing"
    assert after == alone, (alone, cached, after)


class _Worker(Actor):
    name = "worker"


def test_a_worker_fed_after_a_long_rest_announces_within_its_promised_interval(workspace):
    """Rest stretches the beats (ten heartbeat intervals) while the announcement after work
    is promised within one: the worker slept until its beat, and the router, counting five
    of the promised intervals, forgot it as silent (fails before)."""
    workspace.config("[runtime]\nheartbeat_interval = 0.1\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    worker = _Worker(cfg)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(cfg.endpoints.stage_out("l1"))
    taken = []
    try:
        worker._heartbeat = worker.connect(zmq.PUSH, cfg.endpoints.heartbeat, hwm=10)
        worker.take_stage("l1", {Change: taken.append})
        identity = None
        deadline = time.monotonic() + 10
        while worker._quiet_beats < 8:  # a long rest: the beats stretched
            worker._round()
            while router.poll(0):
                identity = router.recv_multipart()[0]
            assert time.monotonic() < deadline
        assert identity is not None
        while worker._next_heartbeat - time.monotonic() < 0.8:  # just after a rested beat
            worker._round()
            assert time.monotonic() < deadline
        router.send_multipart([identity, messages.encode(Change(
            path="a.txt", kind=ChangeKind.WRITE, seq=1, epoch=1.0, observed=time.time()))])
        while not taken:
            worker._round()
            assert time.monotonic() < deadline
        promised = None
        while True:  # the announcement of the work taken, sent in the round that took it
            while router.poll(0):
                promised = messages.decode(router.recv_multipart()[1])
            if promised is not None and promised.received >= 1:
                break
            worker._round()
            assert time.monotonic() < deadline
        # the next announcement, due within the interval just promised
        started = time.monotonic()
        silent_after = 5 * promised.interval
        while not router.poll(0):
            worker._round()
            assert time.monotonic() - started < silent_after, "the router forgets it"
    finally:
        router.close(0)
        worker.close()
        context.term()


def test_a_descriptor_resting_after_a_read_is_read_once_when_its_rest_is_over(workspace):
    """The poll loop, with a real pipe: a callback that asks for a rest is not called for
    what arrives meanwhile, then once for all of it; one that found nothing asks for no rest
    and is polled again (a source gone quiet wakes the actor at once, and no timer does)."""
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    actor = _Listener(cfg)
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    reads: list[bytes] = []

    def read_and_rest() -> float | None:
        try:
            reads.append(os.read(read_end, 4096))
        except BlockingIOError:
            reads.append(b"")
            return None
        return 0.3

    def rounds(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            actor._round()

    try:
        actor._heartbeat = actor.connect(zmq.PUSH, cfg.endpoints.heartbeat, hwm=10)
        actor.wakeup_in = lambda: 0.02
        actor.watch_fd(read_end, read_and_rest)
        os.write(write_end, b"a")
        rounds(0.05)
        assert reads == [b"a"]
        for byte in b"bcde":
            os.write(write_end, bytes([byte]))
            rounds(0.02)
        assert reads == [b"a"], "read while resting"
        rounds(0.35)  # the rest is over: one read of everything, then a rest again
        assert reads == [b"a", b"bcde"]
        rounds(0.35)  # over again, and nothing came: polled again, no rest
        assert reads == [b"a", b"bcde", b""]
        rounds(0.3)
        assert reads == [b"a", b"bcde", b""], "woken by a timer with nothing to read"
        os.write(write_end, b"f")
        rounds(0.05)
        assert reads[-1] == b"f"
    finally:
        actor.close()
        os.close(read_end)
        os.close(write_end)
