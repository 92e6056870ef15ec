"""``gitsieve bench --dirty N | --burst N | --tree N | --large MB``: what the commit path
costs, each against the git floor (issue 13): a dirty start of N untracked files, a
person's burst of N new files while gitsieve runs, per-edit time on a big tree, and the
executor's memory and control latency while one large file is committed.  Prints figures;
asserts nothing."""
from __future__ import annotations

import os
import random
import resource as rusage
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
from gitsieve.common.tools.bench import (
    _git,
    bare_workspace,
    bench_config,
    commit_all,
    percentile,
    time_edit,
    wait_until_running,
)
from gitsieve.common.tools.runner import actor_ids


# ----- git-cost scenarios (issue 13): a dirty start and a big tree, against the git floor --
def _plain_workspace(base: Path, debounce: float) -> tuple[Path, Path]:
    """(work tree, bare remote) with a committed config, pushed; nothing else."""
    root = bare_workspace(base, bench_config(debounce, autonomous=False))
    commit_all(root, "bench start")
    return root, base / "remote.git"


def _write_files(root: Path, count: int, per_dir: int, prefix: str = "data") -> list[str]:
    """``count`` small files, ``per_dir`` to a directory; their workspace-relative paths."""
    paths = []
    for number in range(count):
        rel = f"{prefix}/d{number // per_dir:05d}/f{number:06d}.txt"
        target = root / rel
        if number % per_dir == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"file {number}\n")
        paths.append(rel)
    return paths


def _files_on(remote: Path, prefix: str) -> int:
    code, out, _ = Git(remote).result("ls-tree", "-r", "-z", "--name-only", "main", "--",
                                      prefix)
    return out.count(b"\0") if code == 0 else 0


def _gitsieve_tree_cpu(runner: subprocess.Popen) -> float:
    """CPU seconds of ``gitsieve run`` and every actor, git children they reaped included."""
    total = 0.0
    try:
        procs = [psutil.Process(runner.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return total
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def actor_cpu(config) -> dict[str, float]:
    """CPU seconds of every actor, the git children it reaped included."""
    spent = {}
    for actor_id in control.known_actors(config):
        try:
            pid = control.request(config, actor_id, "status", timeout=1.0).data["pid"]
            times = psutil.Process(pid).cpu_times()
        except (control.Unreachable, psutil.Error, KeyError):
            continue
        spent[actor_id] = (times.user + times.system + times.children_user
                           + times.children_system)
    return spent


def _start_gitsieve(root: Path):
    config = config_mod.load(root)
    runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                               "--workspace", str(root)], stderr=subprocess.DEVNULL)
    return config, runner


def _stop(runner) -> None:
    if runner is not None and runner.poll() is None:
        runner.send_signal(signal.SIGTERM)
        runner.wait(15)


def _timed(step, cpu: list | None = None) -> float:
    """Seconds ``step`` took; the CPU seconds of the processes it ran are appended to
    ``cpu``."""
    before = rusage.getrusage(rusage.RUSAGE_CHILDREN)
    started = time.monotonic()
    step()
    elapsed = time.monotonic() - started
    after = rusage.getrusage(rusage.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def _dirty_once(count: int, timeout: float, burst: bool = False) -> dict:
    """One floor run and one gitsieve run of a dirty start of ``count`` files (with
    ``burst``: written while gitsieve runs), each in a workspace of its own."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-dirty-"))
    runner = None
    try:
        (base / "floor").mkdir()
        floor_root, _ = _plain_workspace(base / "floor", 0.5)
        _write_files(floor_root, count, 100)
        floor_cpu: list[float] = []
        floor = _timed(lambda: (_git(floor_root, "add", "-A"),
                                _git(floor_root, "commit", "-q", "-m", "floor"),
                                _git(floor_root, "push", "-q", "origin", "main")), floor_cpu)
        (base / "run").mkdir()
        root, remote = _plain_workspace(base / "run", 0.5)
        written = None
        if burst:
            config, runner = _start_gitsieve(root)
            wait_until_running(config, len(actor_ids(config)))
            started = time.monotonic()
            _write_files(root, count, 100)
            written = time.monotonic() - started
        else:
            _write_files(root, count, 100)
            started = time.monotonic()
            config, runner = _start_gitsieve(root)
        on_remote, elapsed = 0, None
        ref = remote / "refs" / "heads" / "main"
        seen = ""
        while time.monotonic() - started < timeout:
            current = ref.read_text() if ref.exists() else ""
            if current != seen:
                seen = current
                on_remote = _files_on(remote, "data")
                if on_remote >= count:
                    elapsed = time.monotonic() - started
                    break
            time.sleep(0.05)
        cpu = _gitsieve_tree_cpu(runner)
        per_actor = actor_cpu(config)
        commits = int(_git(root, "rev-list", "--count", "HEAD").strip()) - 1
    finally:
        _stop(runner)
        shutil.rmtree(base, ignore_errors=True)
    return {"floor": floor, "floor_cpu": floor_cpu[0], "elapsed": elapsed, "written": written,
            "on_remote": on_remote, "cpu": cpu, "per_actor": per_actor, "commits": commits}


def run_dirty(count: int, repeats: int = 3, timeout: float = 600.0, burst: bool = False) -> int:
    """``--dirty N``: N untracked files when gitsieve starts; seconds until all of them are
    on the remote, against ``git add -A && git commit && git push`` of the same files.
    ``--burst N``: the same files written (by this process, as a person's tool would) while
    gitsieve runs, timed from the first file.  The two alternate ``repeats`` times (a file
    system's speed drifts between minutes); the figure is the median of the runs' ratios."""
    print(f"gitsieve bench --{'burst' if burst else 'dirty'} {count}: {os.cpu_count()} cpus, "
          f"{repeats} run(s), each git's floor then gitsieve; as uid {os.getuid()}")
    ratios = []
    for number in range(1, repeats + 1):
        run = _dirty_once(count, timeout, burst)
        if run["elapsed"] is None:
            print(f"  run {number}: floor {run['floor']:.2f} s; gitsieve: only "
                  f"{run['on_remote']} of {count} files on the remote after {timeout:.0f} s")
            return 1
        ratios.append(run["elapsed"] / run["floor"])
        began = ("the burst's first file (written in "
                 f"{run['written']:.2f} s)" if burst else "start")
        print(f"  run {number}: git add -A && git commit && git push {run['floor']:.2f} s "
              f"({run['floor_cpu']:.1f} CPU-s); gitsieve, {began} to every file on the "
              f"remote {run['elapsed']:.2f} s ({ratios[-1]:.1f}x), {run['commits']} "
              f"commit(s), {run['cpu']:.1f} CPU-s")
        print("    CPU-s by actor (git children included): " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in sorted(run["per_actor"].items())))
    print(f"  median {statistics.median(ratios):.1f}x the floor (runs: "
          f"{', '.join(f'{ratio:.1f}' for ratio in ratios)}; target <= 3x)")
    return 0


def run_tree(files: int, edits: int = 20, debounce: float = 0.5) -> int:
    """``--tree N``: a committed tree of N files (10 a directory); per-edit seconds beyond
    the debounce until the edit is committed and pushed, against ``git add && git commit``
    and ``git push`` of one file on the same tree."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-tree-"))
    runner = None
    try:
        root, remote = _plain_workspace(base, debounce)
        paths = _write_files(root, files, 10)
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "tree")
        _git(root, "push", "-q", "origin", "main")
        floor_commit, floor_push, floor_cpu = [], [], []
        for number in range(3):
            rel = paths[number * 7]
            (root / rel).write_text(f"floor {number}\n")
            floor_commit.append(_timed(lambda: (_git(root, "add", "--", rel),
                                                _git(root, "commit", "-q", "-m", "floor")),
                                       floor_cpu))
            floor_push.append(_timed(lambda: _git(root, "push", "-q", "origin", "main"),
                                     floor_cpu))
        ref = remote / "refs" / "heads" / "main"
        started = time.monotonic()
        config, runner = _start_gitsieve(root)
        wait_until_running(config, len(actor_ids(config)), timeout=120)
        up = time.monotonic() - started
        # an edit made as soon as every actor runs, while the start's reconcile goes on
        first = time_edit(root, ref, paths[1], f"first {random.random()}\n", debounce + 30)
        first = None if first is None else time.monotonic() - started
        time.sleep(3.0)  # the start's reconcile settles
        cpu_before = actor_cpu(config)
        latencies, missed = [], int(first is None)
        for number in range(edits):
            rel = paths[(number * 7919) % len(paths)]
            latency = time_edit(root, ref, rel, f"edit {number} {random.random()}\n",
                                timeout=debounce + 30)
            if latency is None:
                missed += 1
            else:
                latencies.append(latency)
            time.sleep(0.2)
        cpu_after = actor_cpu(config)
        spent = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    finally:
        _stop(runner)
        shutil.rmtree(base, ignore_errors=True)
    print(f"gitsieve bench --tree {files}: {edits} edits, debounce {debounce:.2f} s, "
          f"{os.cpu_count()} cpus")
    print(f"  start: every actor running {up:.2f} s after `gitsieve run`; an edit made then "
          f"on the remote at {'never' if first is None else f'{first:.2f} s'}")
    print(f"  floor: git add && git commit {min(floor_commit):.3f} s, "
          f"git push {min(floor_push):.3f} s (min of 3); {sum(floor_cpu) / 3:.3f} CPU-s "
          f"per edit")
    if latencies:
        over = [value - debounce for value in latencies]
        print(f"  gitsieve edit -> on the remote, beyond the debounce: p50 "
              f"+{percentile(over, .5):.3f} s, p90 +{percentile(over, .9):.3f} s "
              f"(target <= 0.15)")
        print("  CPU-s per edit by actor (git children included): " + ", ".join(
            f"{name} {seconds / len(latencies):.3f}" for name, seconds in sorted(spent.items())))
    print(f"  edits never pushed: {missed}")
    return 0 if not missed else 1


def run_large(megabytes: int = 60) -> int:
    """``--large MB``: a file of MB random bytes moved into the workspace; the executor's
    RSS and its control latency sampled until the file is on the remote."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-large-"))
    runner = None
    try:
        root, remote = _plain_workspace(base, 0.5)
        config, runner = _start_gitsieve(root)
        wait_until_running(config, len(actor_ids(config)))
        time.sleep(2.0)
        executor = psutil.Process(control.request(config, "executor", "status",
                                                  timeout=2).data["pid"])
        idle_rss = executor.memory_info().rss / 2 ** 20
        size = megabytes * 2 ** 20
        staged = base / "large.tmp"  # written beside, then moved in: one complete version
        with open(staged, "wb") as handle:
            handle.write(os.urandom(size))
        started = time.monotonic()
        os.replace(staged, root / "large.bin")
        peak, slowest, samples, unanswered = idle_rss, 0.0, 0, 0
        while time.monotonic() - started < 300:
            peak = max(peak, executor.memory_info().rss / 2 ** 20)
            asked = time.monotonic()
            try:
                control.request(config, "executor", "status", timeout=5.0)
                slowest = max(slowest, time.monotonic() - asked)
            except control.Unreachable:
                unanswered += 1
            samples += 1
            code, out, _ = Git(remote).result("cat-file", "-s", "main:large.bin")
            if code == 0 and out.strip() == str(size).encode():
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        settled_rss = executor.memory_info().rss / 2 ** 20
    finally:
        _stop(runner)
        shutil.rmtree(base, ignore_errors=True)
    print(f"gitsieve bench --large {megabytes}: {os.cpu_count()} cpus")
    print(f"  write -> on the remote: {elapsed:.2f} s")
    print(f"  executor RSS: idle {idle_rss:.1f} MiB, peak while committing {peak:.1f} MiB, "
          f"after {settled_rss:.1f} MiB")
    print(f"  control requests meanwhile: {samples}, slowest answer {slowest * 1000:.0f} ms, "
          f"unanswered within 5 s: {unanswered}")
    return 0
