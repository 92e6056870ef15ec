"""``gitsieve bench``: edit-to-commit latency with churn running, and per-actor memory.

Builds a throw-away workspace with a bare remote, starts ``gitsieve run`` on it and
``scripts/churn.py`` beside it, then makes edits one at a time (alternating an ALLOW path
and a path no rule matches, which goes through L2 and L3) and times each from the write to
the moment the branch ref names a commit holding it.  Prints figures; asserts nothing.

``gitsieve bench --agent`` (:func:`run_agent`) measures what ``gitsieve agent`` costs the
processes it wraps: the same writer run bare and wrapped.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.gateway import Git
from gitsieve.common.protocol.messages import BadMessage
from gitsieve.common.tools.ctl import path_chunks
from gitsieve.common.tools.resources import resource
from gitsieve.common.tools.runner import actor_ids

CHURN = ("scripts", "churn.py")
PATTERNS = """\
BLOCK:\\.claude/autonomous/.*:Autonomous status
BLOCK:\\.claude/memory/.*:Auto-saved context
BLOCK:\\.claude/intelligence/.*\\.log:Intelligence logs
BLOCK:logs/.*\\.log:System logs
ALLOW:docs/.*\\.md:User documentation
ANALYZE:\\.claude/contexts/.*:Context files
"""


_IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
             "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


AUTONOMOUS_NAME = "claude-autonomous"


def _git(cwd: Path, *args: str) -> str:
    return os.fsdecode(Git(cwd).run(*args, env=_IDENTITY))


def bench_config(debounce: float, *, autonomous: bool = True, fast_health: bool = True,
                 filter_lines: str = "", extra: str = "") -> str:
    """The benchmarks' config: quiet periods of ``debounce`` s, no rate limits;
    ``autonomous``: the simulated agent's name is an autonomous process; ``fast_health``:
    health verdicts every 0.5 s (not for CPU figures); ``filter_lines`` go into
    ``[filter]``, ``extra`` (whole sections) at the end."""
    names = f'autonomous_processes = ["{AUTONOMOUS_NAME}"]\n' if autonomous else ""
    return (f"[filter]\n{names}{filter_lines}" if names or filter_lines else "") + f"""\
[debounce]
allow = {debounce}
default = {debounce}
rules = []
[limits]
max_commits_per_hour = 100000
max_commits_per_day = 100000
cooldown_seconds = 0
""" + ("[health]\ninterval = 0.5\n" if fast_health else "") + extra


def bare_workspace(base: Path, config_text: str) -> Path:
    """A work tree with a bare ``origin``, ``config_text`` as its (uncommitted) config."""
    remote, root = base / "remote.git", base / "ws"
    _git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    _git(base, "init", "-q", "-b", "main", str(root))
    _git(root, "config", "user.name", "bench")
    _git(root, "config", "user.email", "bench@localhost")
    _git(root, "remote", "add", "origin", str(remote))
    (root / config_mod.CONFIG_NAME).write_text(config_text)
    return root


def make_workspace(base: Path, debounce: float, extra_config: str = "") -> Path:
    """The latency bench's work tree: rules file, docs/ and notes/, the churn prepared."""
    root = bare_workspace(base, bench_config(debounce, filter_lines="process_cache_ttl = 1\n",
                                             extra=extra_config))
    (root / "docs").mkdir()
    (root / "notes").mkdir()
    patterns = root / ".claude/sync-filter/system-patterns.conf"
    patterns.parent.mkdir(parents=True)
    patterns.write_text(PATTERNS)
    subprocess.run([sys.executable, str(resource(*CHURN)), "--workspace", str(root), "--prepare"],
                   check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "bench start")
    _git(root, "push", "-q", "-u", "origin", "main")
    return root


def wait_until_running(config, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = 0
        for actor_id in control.known_actors(config):
            try:
                if control.request(config, actor_id, "status", timeout=0.5).ok:
                    running += 1
            except control.Unreachable:
                continue
        if running >= expected:
            return
        time.sleep(0.2)
    raise RuntimeError(f"gitsieve did not start {expected} actors within {timeout}s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def actor_memory(config) -> dict[str, float]:
    """RSS (MiB) of every actor, found by the pid it reports over its control socket."""
    memory = {}
    for actor_id in control.known_actors(config):
        try:
            pid = control.request(config, actor_id, "status", timeout=1.0).data["pid"]
            memory[actor_id] = psutil.Process(pid).memory_info().rss / 2 ** 20
        except (control.Unreachable, psutil.Error, KeyError):
            continue
    return memory


def time_edit(root: Path, ref: Path, rel: str, content: str, timeout: float) -> float | None:
    """Write ``rel`` and return seconds until a commit holding ``content`` is on the ref."""
    before = ref.read_text() if ref.exists() else ""
    start = time.monotonic()
    (root / rel).write_text(content)
    deadline = start + timeout
    seen = before
    while time.monotonic() < deadline:
        current = ref.read_text() if ref.exists() else ""
        if current != seen:
            stamp = time.monotonic()
            seen = current
            code, shown, _ = Git(root).result("show", f"{current.strip()}:{rel}")
            if code == 0 and os.fsdecode(shown) == content:
                return stamp - start
        time.sleep(0.002)
    return None


def run(edits: int = 60, debounce: float = 0.5, churn: bool = True, rest: float = 60.0) -> int:
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-"))
    runner = churner = None
    try:
        root = make_workspace(base, debounce)
        config = config_mod.load(root)
        runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                                   "--workspace", str(root)], stderr=subprocess.DEVNULL)
        wait_until_running(config, len(actor_ids(config)))
        if churn:
            churner = subprocess.Popen([sys.executable, str(resource(*CHURN)), "--workspace", str(root),
                                        "--name", "claude-autonomous"])
        time.sleep(1.0)
        ref = config.git_dir / "refs" / "heads" / "main"
        results: dict[str, list[float]] = {"ALLOW (docs/)": [], "ANALYZE (notes/)": []}
        missed: list[str] = []  # "number path" of edits not committed within the timeout
        for number in range(edits):
            kind, rel = (("ALLOW (docs/)", f"docs/page-{number % 5}.md") if number % 2 == 0
                         else ("ANALYZE (notes/)", f"notes/note-{number % 5}.txt"))
            latency = time_edit(root, ref, rel, f"edit {number} {random.random()}\n",
                                timeout=debounce + 10)
            if latency is None:
                missed.append(f"#{number} {rel}")
            else:
                results[kind].append(latency)
            time.sleep(0.1 + random.random() * 0.2)
        memory = actor_memory(config)
        churn_commits = _git(root, "log", "--format=%H", "--", ".claude", "logs").split()
        stop_process(churner)
        if rest > 0:
            memory_at_rest(root, runner, config, rest)
    finally:
        for proc in (churner, runner):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)

    everything = [v for values in results.values() for v in values]
    print(f"gitsieve bench: {edits} edits, debounce {debounce:.2f} s, "
          f"churn {'every 0.3 s' if churn else 'off'}, {os.cpu_count()} cpus")
    print(f"{'paths':<20}{'n':>5}{'p50':>9}{'p90':>9}{'max':>9}   (seconds, edit -> commit)")
    for kind, values in (*results.items(), ("all", everything)):
        if values:
            print(f"{kind:<20}{len(values):>5}{percentile(values, .5):>9.3f}"
                  f"{percentile(values, .9):>9.3f}{max(values):>9.3f}")
    if everything:
        print(f"over debounce: p50 +{percentile(everything, .5) - debounce:.3f} s "
              f"(target +0.15), p90 +{percentile(everything, .9) - debounce:.3f} s "
              f"(target +0.40); mean {statistics.mean(everything):.3f} s")
    print(f"edits not committed within {debounce + 10:g} s: {len(missed)} {missed[:5]}; "
          f"commits touching churn files: "
          f"{len(churn_commits) - 1} (the first is the setup commit)")
    print("actor RSS (MiB): " + ", ".join(f"{name} {mb:.1f}" for name, mb in sorted(memory.items()))
          + f"; total {sum(memory.values()):.1f}")
    return 0 if not missed else 1


# ----- shared by the scenarios below ---------------------------------------------------------
def commit_all(root: Path, message: str) -> None:
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", message)
    _git(root, "push", "-q", "-u", "origin", "main")


def start_gitsieve(root: Path) -> tuple[subprocess.Popen, object]:
    config = config_mod.load(root)
    runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                               "--workspace", str(root)], stderr=subprocess.DEVNULL)
    wait_until_running(config, len(actor_ids(config)))
    return runner, config


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ProcessTree:
    """gitsieve's processes (the runner and everything below it), named by the actor each
    one reports on its control socket, sampled for memory, CPU time and wakeups."""

    def __init__(self, runner: subprocess.Popen, config):
        self.runner, self.config = runner, config
        self.names: dict[int, str] = {}
        self.peak_rss: dict[str, float] = {}

    def refresh_names(self) -> None:
        for actor_id in control.known_actors(self.config):
            try:
                pid = control.request(self.config, actor_id, "status", timeout=1.0).data["pid"]
            except (control.Unreachable, KeyError):
                continue
            self.names[pid] = actor_id
        self.names[self.runner.pid] = "runner"

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.runner.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def name_of(self, proc: psutil.Process) -> str:
        return self.names.get(proc.pid, f"other ({proc.pid})")

    def sample_rss(self) -> None:
        for proc in self.processes():
            try:
                rss = proc.memory_info().rss / 2 ** 20
            except psutil.Error:
                continue
            name = self.name_of(proc)
            if name.startswith("other"):
                name = "git and other children"
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), rss)

    def counters(self) -> dict[int, tuple[float, int]]:
        """pid -> (CPU seconds including reaped children, context switches)."""
        found = {}
        for proc in self.processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    switches = proc.num_ctx_switches()
            except psutil.Error:
                continue
            found[proc.pid] = (times.user + times.system + times.children_user
                               + times.children_system,
                               switches.voluntary + switches.involuntary)
        return found

    @staticmethod
    def delta(before: dict, after: dict) -> tuple[float, int]:
        cpu = sum(after[pid][0] - before.get(pid, (0.0, 0))[0] for pid in after)
        wakeups = sum(after[pid][1] - before.get(pid, (0.0, 0))[1] for pid in after)
        return cpu, wakeups

    def memory(self) -> dict[str, dict[str, float]]:
        """Per process: rss, pss, uss (MiB)."""
        table = {}
        for proc in self.processes():
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            table[self.name_of(proc)] = {"rss": info.rss / 2 ** 20, "pss": info.pss / 2 ** 20,
                                         "uss": info.uss / 2 ** 20}
        return table


def actor_status(config, actor_id: str) -> dict:
    try:
        reply = control.request(config, actor_id, "status", timeout=2.0)
    except control.Unreachable:
        return {}
    return reply.data if reply.ok else {}


class CommitWatcher:
    """Edits timed from the write to the first commit on the branch holding them."""

    def __init__(self, root: Path, ref: Path):
        self.root, self.ref = root, ref
        self.pending: list[tuple[str, str, float]] = []  # (path, content, written)
        self.latency: dict[str, float] = {}
        self.written_wall: dict[str, float] = {}
        self.seen = ref.read_text() if ref.exists() else ""

    def edit(self, rel: str, content: str) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        written = time.monotonic()
        self.written_wall[rel] = time.time()
        target.write_text(content)
        self.pending.append((rel, content, written))

    def poll(self) -> None:
        current = self.ref.read_text() if self.ref.exists() else ""
        if current == self.seen or not self.pending:
            self.seen = current or self.seen
            return
        stamp = time.monotonic()
        self.seen = current
        git = Git(self.root)
        still = []
        for rel, content, written in self.pending:
            code, shown, _ = git.result("show", f"{current.strip()}:{rel}")
            if code == 0 and os.fsdecode(shown) == content:
                self.latency[rel] = stamp - written
            else:
                still.append((rel, content, written))
        self.pending = still

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.01)


def stage_breakdown(config, edits: "CommitWatcher") -> str:
    """Where the timed edits' latency went, p50/p90 per stage: write -> the watcher's
    observation -> the debouncer's receipt (the layers) -> batched -> committed."""
    paths = sorted(edits.latency)
    found = {}
    for chunk in path_chunks(paths):
        try:
            reply = control.request(config, "debouncer", "explain", {"paths": chunk},
                                    timeout=5.0)
        except (control.Unreachable, BadMessage):
            return ""
        found.update(reply.data.get("paths", {}) if reply.ok else {})
    stages: dict[str, list[float]] = {"watch": [], "layers": [], "debounce": [], "commit": []}
    for rel in paths:
        record = found.get(rel)
        if not record or rel not in edits.written_wall:
            continue
        written = edits.written_wall[rel]
        committed = written + edits.latency[rel]
        marks = [written, record["observed"], record["received"],
                 record["batched"] or committed, committed]
        for name, start, end in zip(stages, marks, marks[1:]):
            stages[name].append(end - start)
    if not stages["watch"]:
        return ""
    parts = []
    for name, values in stages.items():
        values.sort()
        parts.append(f"{name} {values[len(values) // 2]:.2f}/"
                     f"{values[min(len(values) - 1, int(len(values) * 0.9))]:.2f}")
    return "where the time went, p50/p90 s: " + ", ".join(parts)


def storm_writer(root: Path, rate: float, seconds: float, files: int, new: bool = False) -> int:
    """The autonomous process of ``--storm``: rewrites ``files`` files with new content (or,
    ``new``, writes a new file each time) at ``rate`` writes a second for ``seconds``.  Its
    command line carries AUTONOMOUS_NAME."""
    folder = root / "agent"
    folder.mkdir(exist_ok=True)
    # Plain descriptor calls on names made ahead: Python's file objects would cap the
    # rate near 5k writes/s on this kind of machine, below what the scenario asks for.
    names = [] if new else [os.fsencode(folder / f"state-{n:03d}.txt") for n in range(files)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    started = time.monotonic()
    written = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        for _ in range(min(due - written, 100)):  # a slow machine writes less, never longer
            name = (os.fsencode(folder / f"new-{written:06d}.txt") if new
                    else names[written % files])
            fd = os.open(name, flags, 0o644)
            try:
                os.write(fd, b"agent write %d\n" % written)
            finally:
                os.close(fd)
            written += 1
        if written >= due:
            time.sleep(0.005)
    print(written, flush=True)
    return written


def storm(rate: float, seconds: float = 10.0, files: int = 200, debounce: float = 0.5,
          new: bool = False) -> int:
    """``gitsieve bench --storm RATE``: an autonomous process rewrites ``files`` files at
    RATE writes a second (``new``: writes RATE new files a second, a burst no sampler can
    attribute) while a person edits ANALYZE paths once a second."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-storm-"))
    runner = writer = None
    try:
        root = bare_workspace(base, bench_config(debounce, fast_health=False))
        (root / "agent").mkdir()
        for index in range(files):
            (root / "agent" / f"state-{index:03d}.txt").write_text("initial\n")
        (root / "notes").mkdir()
        (root / "notes" / "start.txt").write_text("start\n")
        commit_all(root, "storm start")
        runner, config = start_gitsieve(root)
        tree = ProcessTree(runner, config)
        tree.refresh_names()
        time.sleep(2.0)
        ref = config.git_dir / "refs" / "heads" / "main"
        edits = CommitWatcher(root, ref)
        before = tree.counters()
        router_peak = 0
        writer = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.bench",
                                   "storm-writer", AUTONOMOUS_NAME, str(root), str(rate),
                                   str(seconds), str(files), "new" if new else "rewrite"],
                                  stdout=subprocess.PIPE)
        started = time.monotonic()
        next_edit, next_sample, number = started + 0.5, started, 0
        while writer.poll() is None:
            now = time.monotonic()
            if now >= next_edit:
                edits.edit(f"notes/storm-{number:03d}.txt", f"user edit {number}\n")
                number += 1
                next_edit += 1.0
            if now >= next_sample:
                next_sample += 0.5
                tree.sample_rss()
                router_peak = max(router_peak, actor_status(config, "router").get("queue") or 0)
            edits.poll()
            time.sleep(0.01)
        storm_end = time.monotonic()
        storm_writes = int(writer.stdout.read() or 0)
        storm_pending = list(edits.pending)
        time.sleep(max(0.0, storm_end + 1.0 - time.monotonic()))
        edits.edit("notes/after-storm.txt", "edit one second after the storm\n")
        deadline = time.monotonic() + 120
        while edits.pending and time.monotonic() < deadline:
            edits.poll()
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + 0.5
                tree.sample_rss()
                router_peak = max(router_peak, actor_status(config, "router").get("queue") or 0)
            time.sleep(0.01)
        cpu, _ = ProcessTree.delta(before, tree.counters())
        busy = time.monotonic() - started
        watcher = actor_status(config, "watcher")
        router = actor_status(config, "router")
        l2 = [actor_status(config, f"l2-{i:02d}") for i in range(1, config.l2_workers + 1)]
        agent_commits = _git(root, "log", "--format=%H", "--", "agent").split()
        missed = [rel for rel, _, _ in edits.pending]
        stages = stage_breakdown(config, edits)
    finally:
        stop_process(writer)
        stop_process(runner)
        shutil.rmtree(base, ignore_errors=True)

    during = [edits.latency[rel] for rel in sorted(edits.latency) if rel.startswith("notes/storm")]
    what = "new files written" if new else f"{files} files rewritten"
    print(f"gitsieve bench --storm {rate:g}{' --new-files' if new else ''}: {what} by "
          f"{AUTONOMOUS_NAME} for {seconds:g} s, a user edit (ANALYZE path) a second; "
          f"debounce {debounce:g} s, {os.cpu_count()} cpus")
    print(f"the autonomous process wrote {storm_writes} times ({storm_writes / seconds:.0f}/s)")
    if during:
        print(f"user-edit latency during the storm: n {len(during)}, p50 "
              f"{percentile(during, .5):.2f} s, p90 {percentile(during, .9):.2f} s, max "
              f"{max(during):.2f} s (target p90 <= {debounce + 0.5:.2f} s)")
    if stages:
        print(stages)
    recovery = edits.latency.get("notes/after-storm.txt")
    print("recovery: an edit 1 s after the storm committed in "
          + (f"{recovery:.2f} s" if recovery is not None else "(never)") + " (target <= 2 s)")
    print(f"edits never committed: {len(missed)} {missed[:5]}; still pending when the storm "
          f"ended: {len(storm_pending)}")
    print(f"CPU: {cpu:.1f} s over {busy:.1f} s = {100 * cpu / busy:.0f} % of a core; "
          f"inotify overflows {watcher.get('overflows')}, fanotify overflows "
          f"{[s.get('fanotify_overflows') for s in l2]}, router peak queue {router_peak}, "
          f"lost at workers {sum(s.get('lost', 0) for s in (router.get('stages') or {}).values())}")
    print("peak RSS (MiB): " + ", ".join(f"{name} {mb:.1f}" for name, mb in
                                         sorted(tree.peak_rss.items()))
          + " (target: no actor above 60)")
    print(f"commits touching the agent's files: {len(agent_commits) - 1} (the first is the "
          f"setup commit)")
    return 0 if not missed else 1


def idle(seconds: float = 60.0, files: int = 500, outside_rate: float = 200.0,
         spawn_rate: float = 0.0) -> int:
    """``gitsieve bench --idle SECONDS``: CPU and wakeups of gitsieve on a ``files``-file
    workspace nobody edits while another process writes elsewhere on the same file
    system (a periodic reconcile included), and starts ``spawn_rate`` short processes a
    second (``--spawns``)."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-idle-"))
    runner = writer = None
    try:
        root = bare_workspace(base, bench_config(
            0.5, fast_health=False, extra=f"[watcher]\nreconcile_interval = {max(1.0, seconds / 2):g}\n"))
        for index in range(files):
            folder = root / f"d{index // 1000:03d}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{index:06d}.txt").write_text(f"{index}\n")
        commit_all(root, "idle start")
        started_at = time.monotonic()
        runner, config = start_gitsieve(root)
        startup = time.monotonic() - started_at
        tree = ProcessTree(runner, config)
        tree.refresh_names()
        time.sleep(3.0)
        outside = base / "elsewhere"
        outside.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", OUTSIDE_WRITER, str(outside),
                                   str(outside_rate), str(spawn_rate)])
        before = tree.counters()
        time.sleep(seconds)
        cpu, wakeups = ProcessTree.delta(before, tree.counters())
        per_process = {}
        after = tree.counters()
        for pid, (cpu_after, switches_after) in after.items():
            cpu_before, switches_before = before.get(pid, (0.0, 0))
            per_process[tree.names.get(pid, str(pid))] = (
                cpu_after - cpu_before, (switches_after - switches_before) / seconds)
        reconciles = actor_status(config, "watcher").get("reconciles")
    finally:
        stop_process(writer)
        stop_process(runner)
        shutil.rmtree(base, ignore_errors=True)
    print(f"gitsieve bench --idle {seconds:g}: {files} files, nobody edits them; another "
          f"process writes {outside_rate:g} files/s elsewhere on the same file system"
          + (f" and starts {spawn_rate:g} processes/s" if spawn_rate else "")
          + f"; {os.cpu_count()} cpus")
    print(f"started in {startup:.2f} s; reconciles seen: {reconciles}")
    print(f"CPU {100 * cpu / seconds:.2f} % of a core (target <= 0.3 %), wakeups "
          f"{wakeups / seconds:.0f}/s")
    print("per process (CPU s, wakeups/s): " + ", ".join(
        f"{name} {c:.2f}/{w:.0f}" for name, (c, w) in sorted(per_process.items())))
    return 0


OUTSIDE_WRITER = """\
import os, shutil, sys, time, pathlib
folder, rate, spawn_rate = pathlib.Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
true = shutil.which("true")
count = spawned = 0
start = time.monotonic()
while True:
    elapsed = time.monotonic() - start
    while count < int(elapsed * rate):
        (folder / f"x{count % 50}.txt").write_text(str(count))
        count += 1
    while spawned < int(elapsed * spawn_rate):
        os.waitpid(os.posix_spawn(true, [true], os.environ), 0)
        spawned += 1
    time.sleep(0.01)
"""


def memory_at_rest(root: Path, runner: subprocess.Popen, config, rest: float) -> None:
    """After ``rest`` seconds without edits: RSS, PSS and USS of every gitsieve process."""
    time.sleep(rest)
    tree = ProcessTree(runner, config)
    tree.refresh_names()
    table = tree.memory()
    total = {kind: sum(row[kind] for row in table.values()) for kind in ("rss", "pss", "uss")}
    print(f"memory after {rest:g} s at rest, {len(table)} processes (MiB): RSS "
          f"{total['rss']:.1f}, PSS {total['pss']:.1f} (target <= 80), USS {total['uss']:.1f}")
    print("PSS per process (MiB): " + ", ".join(f"{name} {row['pss']:.1f}"
                                                 for name, row in sorted(table.items())))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "storm-writer":
    # python -m gitsieve.common.tools.bench storm-writer NAME ROOT RATE SECONDS FILES MODE
    raise SystemExit(0 if storm_writer(Path(sys.argv[3]), float(sys.argv[4]),
                                       float(sys.argv[5]), int(sys.argv[6]),
                                       new=sys.argv[7] == "new") else 1)
# ----- gitsieve bench --agent: the wrapper's overhead --------------------------------------
AGENT_SMALL = b"x" * 100
AGENT_MEGABYTE = b"y" * (1 << 20)
AGENT_WORKER = "from gitsieve.common.tools.bench import agent_worker; agent_worker()"
AGENT_ROWS = (("write-open + close (us)", "write_open_us"),
              ("read-open + close (us)", "read_open_us"),
              ("small files, workspace (s)", "small_inside_s"),
              ("  one small file, median (us)", "small_inside_us"),
              ("small files, outside (s)", "small_outside_s"),
              ("  one small file, median (us)", "small_outside_us"),
              ("1 MB files, workspace (s)", "mb_inside_s"),
              ("1 MB files, outside (s)", "mb_outside_s"),
              ("1 MB writes, one file, ws (s)", "stream_inside_s"))


def _median_us(count: int, action) -> float:
    """The median latency of one action: the machine is shared, and a mean would mostly
    measure other processes' time slices."""
    clock = time.perf_counter
    latencies = []
    for _ in range(count):
        start = clock()
        action()
        latencies.append(clock() - start)
    return statistics.median(latencies) * 1e6


def _small_files(directory: Path, count: int) -> tuple[float, float]:
    """Seconds for ``count`` new 100-byte files (open, write, close), and the median µs of
    one."""
    names = [os.fsencode(directory / f"f{index}") for index in range(count)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    clock = time.perf_counter
    latencies = []
    start = clock()
    for name in names:
        before = clock()
        fd = os.open(name, flags, 0o644)
        os.write(fd, AGENT_SMALL)
        os.close(fd)
        latencies.append(clock() - before)
    return clock() - start, statistics.median(latencies) * 1e6


def _megabyte_files(directory: Path, count: int) -> float:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    start = time.perf_counter()
    for index in range(count):
        fd = os.open(directory / f"m{index}", flags, 0o644)
        os.write(fd, AGENT_MEGABYTE)
        os.close(fd)
    return time.perf_counter() - start


def _megabyte_stream(directory: Path, count: int) -> float:
    """``count`` 1 MB write() calls into one file: one open, so one notification."""
    fd = os.open(directory / "stream", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(count):
        os.write(fd, AGENT_MEGABYTE)
    os.close(fd)
    return time.perf_counter() - start


def agent_worker() -> None:
    """The measured writer, run bare or as the wrapped CMD: ``-c AGENT_WORKER INSIDE OUTSIDE
    FILES MEGABYTES``; prints its figures as one JSON line."""
    inside, outside = Path(sys.argv[1]), Path(sys.argv[2])
    files, megabytes = int(sys.argv[3]), int(sys.argv[4])
    probe = inside / "probe"
    probe.write_bytes(b"p")
    probe_name = os.fsencode(probe)
    opens = 2000
    figures = {
        "write_open_us": _median_us(opens, lambda: os.close(os.open(probe_name, os.O_WRONLY))),
        "read_open_us": _median_us(opens * 5, lambda: os.close(os.open(probe_name,
                                                                       os.O_RDONLY)))}
    for label, directory in (("inside", inside), ("outside", outside)):
        small_dir, big_dir = directory / "small", directory / "big"
        small_dir.mkdir()
        big_dir.mkdir()
        os.sync()  # each phase starts without earlier phases' writeback
        figures[f"small_{label}_s"], figures[f"small_{label}_us"] = _small_files(small_dir,
                                                                                   files)
        os.sync()
        figures[f"mb_{label}_s"] = _megabyte_files(big_dir, megabytes)
        os.sync()
        figures[f"stream_{label}_s"] = _megabyte_stream(big_dir, megabytes)
    print(json.dumps(figures))


def _agent_run(wrapped: bool, files: int, megabytes: int, where: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="gitsieve-bench-agent-", dir=where) as root:
        workspace, outside = Path(root) / "ws", Path(root) / "out"
        _git(Path(root), "init", "-q", str(workspace))
        outside.mkdir()
        cmd = [sys.executable, "-c", AGENT_WORKER, str(workspace), str(outside), str(files),
               str(megabytes)]
        if wrapped:
            cmd = [sys.executable, "-m", "gitsieve.common.tools.cli", "agent", "--workspace",
                   str(workspace), "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])


def run_agent(repeats: int = 5, files: int = 10_000, megabytes: int = 100,
              where: str | None = None) -> int:
    """``gitsieve bench --agent``: the same writer bare and under ``gitsieve agent``,
    interleaved ``repeats`` times (each total as the least disturbed run, min, and the
    typical one, median), with the issue's targets."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(repeats):
        for wrapped in (False, True):
            runs[wrapped].append(_agent_run(wrapped, files, megabytes, where))
    print(f"gitsieve bench --agent: {repeats} interleaved runs under "
          f"{where or tempfile.gettempdir()}; {files} small files (100 B), {megabytes} x 1 MB "
          f"files; {os.cpu_count()} cpus")
    print(f"{'figure':31} {'bare min':>9} {'wrapped':>9} {'ratio':>6}   "
          f"{'bare med':>9} {'wrapped':>9} {'ratio':>6}")
    summary = {}
    for label, key in AGENT_ROWS:
        cells = []
        for pick in (min, statistics.median):
            bare = pick(run[key] for run in runs[False])
            wrapped = pick(run[key] for run in runs[True])
            summary[(key, pick.__name__)] = (bare, wrapped)
            cells.append(f"{bare:9.3f} {wrapped:9.3f} {wrapped / bare:5.2f}x")
        print(f"{label:31} {cells[0]}   {cells[1]}")
    for pick in ("min", "median"):
        bare, wrapped = summary[("small_inside_s", pick)]
        mb_bare, mb_wrapped = summary[("mb_inside_s", pick)]
        print(f"{pick}: added per small-file write {(wrapped - bare) / files * 1e6:.1f} us; "
              f"small files {wrapped / bare:.2f}x (target <= 2x), 1 MB files "
              f"{100 * (mb_wrapped / mb_bare - 1):+.1f} % (target <= 5 %)")
    return 0
