"""``gitsieve bench --guard``: what the guard costs (issue 12): scan cost per file, its share
of edit-to-commit latency with churn running, a dirty start with and without it.  Prints
figures; asserts nothing."""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.tools.bench import (
    CHURN,
    _git,
    actor_memory,
    make_workspace,
    percentile,
    time_edit,
    wait_until_running,
)
from gitsieve.common.tools.resources import resource
from gitsieve.common.tools.runner import actor_ids

# ----- the guard (issue 12): its cost per file, its share of latency, a dirty start ------
GUARD_OFF = "[guard]\nsecrets = false\nmax_new_file_mb = 0\n"
_GUARD_RSS_PROBE = """
import resource, time
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
# what the executor imports besides the guard
import gitsieve.common.actor.base, gitsieve.common.git.committer, gitsieve.common.judge.limits
before, started = rss(), time.perf_counter()
from gitsieve.common.judge.guard.gate import CommitGuard
from gitsieve.common.judge.guard.judge import GuardJudge, GuardSettings
judge = GuardJudge(bytes(32), GuardSettings())
judge.scanner.scan("probe.txt", b"warm up every rule once\\n")
print(rss() - before, time.perf_counter() - started, judge.scanner.rule_count)
"""


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return percentile(ordered, 0.5), percentile(ordered, 0.99)


def guard_scan_costs(rounds: int = 200) -> list[tuple[str, float, float]]:
    """(case, p50 ms, p99 ms) of the guard's scan of one blob's bytes (uncached)."""
    import json as json_module

    from gitsieve.common.judge.guard.scanner import SecretScanner
    scanner = SecretScanner(os.urandom(32))
    stdlib = Path(json_module.__file__).resolve().parent.parent
    text = b"".join((stdlib / name).read_bytes() for name in
                    ("argparse.py", "typing.py", "inspect.py", "difflib.py"))
    minified = _minified_js(100_000)
    cases = [("4 KB source (a typical edit)", "src/edit.py", text[:4_000]),
             ("100 KB text (Python source)", "src/module.py", text[:100_000]),
             ("100 KB minified JS", "static/app.min.js", minified),
             ("1 MB text", "src/big.txt", (text * 10)[:1_000_000])]
    results = []
    for label, path, data in cases:
        scanner.scan(path, data)
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            scanner.scan(path, data)
            samples.append((time.perf_counter() - started) * 1000)
        results.append((label, *_percentiles(samples)))
    return results


def _minified_js(size: int) -> bytes:
    """A bundle as minifiers write one: one long line of short names, hashes and base64."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    parts = ["!function(e,t){'use strict';"]
    while sum(map(len, parts)) < size:
        name = "".join(rng.choice(alphabet[:26]) for _ in range(2))
        blob = "".join(rng.choice(alphabet + "+/") for _ in range(rng.randrange(20, 200)))
        parts.append(f'var {name}="{blob}",{name}1={rng.randrange(1 << 30)};'
                     f'function {name}2(a,b){{return a.{name}?a[b]:void 0}}')
    return "".join(parts).encode()[:size]


def _real_files(count: int) -> list[tuple[str, bytes]]:
    """``count`` real source files (the standard library's, at most 1 MB each)."""
    import json as json_module
    root = Path(json_module.__file__).resolve().parent.parent
    found = []
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size <= 1 << 20:
            found.append((str(path.relative_to(root)), path.read_bytes()))
            if len(found) == count:
                break
    return found


SYSTEM_TREES = ("/usr/lib/node_modules", "/usr/lib/python3/dist-packages",
                "/usr/share/javascript")


def _system_tree_findings() -> None:
    """False positives on real files: every file (at most 1 MB) of the system's Python,
    JavaScript and node trees, scanned; each file with a finding is listed."""
    from gitsieve.common.judge.guard.scanner import SecretScanner
    scanner = SecretScanner(os.urandom(32))
    scanned, size, flagged = 0, 0, []
    started = time.perf_counter()
    for tree in (Path(name) for name in SYSTEM_TREES if os.path.isdir(name)):
        for path in sorted(tree.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file() or path.is_symlink() \
                    or path.stat().st_size > 1 << 20:
                continue
            data = path.read_bytes()
            scanned, size = scanned + 1, size + len(data)
            findings = scanner.scan(str(path.relative_to(tree)), data)
            if findings:
                flagged.append(f"{path} ({', '.join(sorted({f.rule.value for f in findings}))})")
    print(f"\nreal files: {scanned} files ({size / 1e6:.1f} MB) under "
          f"{', '.join(t for t in SYSTEM_TREES if os.path.isdir(t))} scanned in "
          f"{time.perf_counter() - started:.1f} s; {len(flagged)} with findings")
    for line in flagged[:20]:
        print(f"  {line}")


def _latency_run(guard_on: bool, edits: int, debounce: float) -> dict:
    """Edit-to-commit latency with churn running; the executor's guard timings."""
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-guard-"))
    runner = churner = None
    try:
        root = make_workspace(base, debounce, "" if guard_on else GUARD_OFF)
        config = config_mod.load(root)
        runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                                   "--workspace", str(root)], stderr=subprocess.DEVNULL)
        wait_until_running(config, len(actor_ids(config)))
        churner = subprocess.Popen([sys.executable, str(resource(*CHURN)), "--workspace",
                                    str(root), "--name", "claude-autonomous"])
        time.sleep(1.0)
        ref = config.git_dir / "refs" / "heads" / "main"
        latencies, missed = [], 0
        for number in range(edits):
            rel = f"docs/page-{number % 5}.md" if number % 2 == 0 else \
                f"notes/note-{number % 5}.txt"
            # ~4 KB of text per edit, different every time (a fresh blob to scan)
            content = f"edit {number} {random.random()}\n" + "lorem ipsum dolor " * 230
            latency = time_edit(root, ref, rel, content, timeout=debounce + 10)
            if latency is None:
                missed += 1
            else:
                latencies.append(latency)
            time.sleep(0.1 + random.random() * 0.2)
        status = control.request(config, "executor", "status", timeout=2.0).data
        return {"latencies": latencies, "missed": missed,
                "guard": (status.get("guard") or {}).get("timings", {}),
                "rss": actor_memory(config).get("executor", 0.0)}
    finally:
        for proc in (churner, runner):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _dirty_start_run(guard_on: bool, files: list[tuple[str, bytes]]) -> dict:
    """Seconds from `gitsieve run` to every one of ``files`` committed and pushed (or held
    by the guard), written while gitsieve was not running."""
    from gitsieve.common.tools import ctl
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-dirty-"))
    runner = None
    try:
        root = make_workspace(base, 0.5, "" if guard_on else GUARD_OFF)
        for rel, data in files:
            target = root / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        config = config_mod.load(root)
        started = time.monotonic()
        runner = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                                   "--workspace", str(root)], stderr=subprocess.DEVNULL)
        report = None
        while time.monotonic() - started < 1800:
            try:
                report = ctl.Flush().execute(config, argparse.Namespace(timeout=60.0))
            except ctl.CtlError:  # still starting, or busy with the first commit
                time.sleep(0.5)
                continue
            held = [item for item in report["held"] if item.get("hold")]
            if report["ok"] or (held and len(held) == len(report["held"])
                                and not report["push_pending"]):
                break
        elapsed = time.monotonic() - started
        committed = len(_git(root, "ls-tree", "-r", "--name-only", "HEAD", "--",
                             "src").split())
        status = control.request(config, "executor", "status", timeout=5.0).data
        return {"seconds": elapsed, "committed": committed,
                "held": [item["path"] for item in (report or {}).get("held", [])],
                "guard": (status.get("guard") or {}).get("timings", {})}
    finally:
        if runner is not None and runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            runner.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def _dirty_commit_run(guard_on: bool, files: list[tuple[str, bytes]]) -> dict:
    """The executor's part of a dirty start alone: one sync commit (and its push) of
    ``files``, through the committer with and without the guard's hooks."""
    from gitsieve.common.git.committer import Committer
    from gitsieve.common.judge.guard.gate import CommitGuard
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-commit-"))
    guard = None
    try:
        root = make_workspace(base, 0.5)
        for rel, data in files:
            target = root / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        config = config_mod.load(root)
        config_mod.prepare_runtime_dir(config)
        committer = Committer(config)
        if guard_on:
            guard = CommitGuard(config, committer.git)
            committer.commit_gate, committer.push_gate = guard, guard.push_gate
        started = time.monotonic()
        result = committer.commit([f"src/{rel}" for rel, _ in files])
        elapsed = time.monotonic() - started
        return {"seconds": elapsed, "committed": len(result.paths),
                "held": sorted(result.held_paths), "pushed": result.pushed,
                "guard": guard.status()["timings"] if guard else {}}
    finally:
        if guard is not None:
            guard.close()
        shutil.rmtree(base, ignore_errors=True)


def run_guard(edits: int = 40, debounce: float = 0.5, files: int = 10_000,
              rounds: int = 200) -> int:
    """The guard's cost: per blob scanned (p50/p99), its memory, its share of
    edit-to-commit latency with churn running (guard off vs on), and a dirty start of
    ``files`` real files with and without it.  Prints figures; asserts nothing."""
    print(f"gitsieve bench --guard: {os.cpu_count()} cpus")
    probe = subprocess.run([sys.executable, "-c", _GUARD_RSS_PROBE], capture_output=True,
                           text=True, check=True).stdout.split()
    print(f"rule set: {probe[2]} content rules; import and compile {float(probe[1]) * 1000:.0f}"
          f" ms, RSS +{int(probe[0]) / 2 ** 20:.1f} MiB (in a process holding the executor's "
          "imports)")
    print(f"\n{'scan cost of one uncached blob (ms)':40}{'p50':>9}{'p99':>9}")
    for label, p50, p99 in guard_scan_costs(rounds):
        print(f"{label:40}{p50:>9.3f}{p99:>9.3f}")

    _system_tree_findings()

    runs = {on: _latency_run(on, edits, debounce) for on in (False, True)}
    print(f"\nedit -> commit with churn running, {edits} edits of ~4 KB, debounce "
          f"{debounce:.2f} s (seconds)")
    print(f"{'guard':<8}{'n':>5}{'p50':>9}{'p90':>9}{'max':>9}{'missed':>8}{'executor MiB':>14}")
    for on, result in runs.items():
        values = result["latencies"] or [float("nan")]
        print(f"{'on' if on else 'off':<8}{len(result['latencies']):>5}"
              f"{percentile(values, .5):>9.3f}{percentile(values, .9):>9.3f}"
              f"{max(values):>9.3f}{result['missed']:>8}{result['rss']:>14.1f}")
    staged = runs[True]["guard"].get("staged", {})
    size = runs[True]["guard"].get("size", {})
    push = runs[True]["guard"].get("push", {})
    latency_p50 = percentile(runs[True]["latencies"] or [float("nan")], .5)
    added = latency_p50 - percentile(runs[False]["latencies"] or [float("nan")], .5)
    print(f"guard inside the executor, per commit: staged-blob scan p50 "
          f"{staged.get('p50_ms', 0):.2f} ms (p99 {staged.get('p99_ms', 0):.2f}), size check "
          f"p50 {size.get('p50_ms', 0):.2f} ms, push gate p50 {push.get('p50_ms', 0):.2f} ms "
          f"(after the commit, before its push)")
    print(f"share of edit-to-commit p50: {staged.get('p50_ms', 0) / 1000 / latency_p50:.1%}"
          f"; p50 on - off: {added * 1000:+.0f} ms (target: at most +20 ms; the A/B "
          "difference is mostly noise from churn and a shared machine)")

    real = _real_files(files)
    megabytes = sum(len(data) for _, data in real) / 1e6
    print(f"\nthe dirty start's sync commit: {len(real)} real files ({megabytes:.1f} MB, the "
          "standard library) committed and pushed in one commit by the committer")
    commits = {on: _dirty_commit_run(on, real) for on in (False, True)}
    for on, result in commits.items():
        guard = result["guard"]
        inside = ", ".join(f"{name} {value['total_s']:.2f} s" for name, value in guard.items())
        print(f"  guard {'on ' if on else 'off'}: {result['seconds']:6.2f} s, "
              f"{result['committed']} committed, {len(result['held'])} held, pushed "
              f"{result['pushed']}" + (f"; guard: {inside}" if on else ""))
    if commits[True]["held"]:
        print("  held by the guard: " + ", ".join(commits[True]["held"][:10]))
    print(f"  added by the guard: "
          f"{commits[True]['seconds'] / commits[False]['seconds'] - 1:+.0%}")

    print(f"\ndirty start: {len(real)} real files ({megabytes:.1f} MB, the standard library) "
          "written while gitsieve was stopped; seconds from `gitsieve run` to all committed")
    dirty = {on: _dirty_start_run(on, real) for on in (False, True)}
    for on, result in dirty.items():
        guard = result["guard"]
        inside = sum(guard.get(name, {}).get("total_s", 0.0) for name in guard)
        print(f"  guard {'on ' if on else 'off'}: {result['seconds']:7.1f} s, "
              f"{result['committed']} committed, {len(result['held'])} held"
              + (f"; guard time in the executor {inside:.1f} s" if on else ""))
    if dirty[True]["held"]:
        print("  held by the guard: " + ", ".join(dirty[True]["held"][:10]))
    off_seconds = dirty[False]["seconds"]
    print(f"  added by the guard: {(dirty[True]['seconds'] - off_seconds) / off_seconds:+.0%}"
          " (target: at most +50 %)")
    return 0
