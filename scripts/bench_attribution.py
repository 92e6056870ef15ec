#!/usr/bin/env python3
"""Attribution figures, printed (no thresholds here).

``idle``: an idle workspace while the rest of the machine writes elsewhere.  A temporary
workspace (``--files`` files in directories of 25, committed, with a bare remote) runs under
``gitsieve run`` with exact attribution; after a warm-up a writer process rewrites files in
another directory of the same filesystem at ``--rate`` writes a second (and, with
``--spawn``, starts that many short processes a second, as other programs do).  For
``--seconds`` it samples every gitsieve process from /proc: CPU seconds and voluntary
context switches (a process sleeping in poll and woken counts one: wakeups), and the L2
workers' fanotify event counters from ``gitsieve status --json``.  ``--attribution helper``
measures the same with a temporary ``gitsieve helper`` (root), the helper included.  Only the command line
is used, so the same script measures any installed version (the ``before`` of a change:
``PYTHONPATH=/path/to/old/site python3 scripts/bench_attribution.py idle``).

``latency``: attribution latency per event, per technique.  A writer process whose command
line matches ``autonomous_processes`` writes a file and answers; from that answer until the
attributor's ``attribute()`` returns for the file (drains, a Sync round trip with the
helper, psutil's scan of autonomous processes), p50/p90/p99 over ``--events`` writes, and
the verdicts it gave.  ``fanotify`` needs root; ``helper`` starts a temporary ``gitsieve
helper`` on a private socket (root) or uses ``--helper-socket``.

``reuse``: the regression workload of ``tests/test_identity_reuse.py`` (a person's temp
files created and deleted beside an agent's new and replaced files, one ext4 directory,
``--seconds`` long) under each keying of recorded writes: how many agent files there were,
how many inode numbers of the person's deleted files they got, and how many of them carry
the person's write (attributed USER).

Usage: python3 scripts/bench_attribution.py idle [--seconds 30] [--files 500] [--rate 200]
                                                 [--spawn 0]
       python3 scripts/bench_attribution.py latency [--events 300]
                                                    [--techniques fanotify,helper,psutil]
       python3 scripts/bench_attribution.py reuse [--seconds 3] [--runs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDENTITY = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_CONFIG = """
[filter]
attribution = "{attribution}"{socket}
[watcher]
reconcile_interval = 60
"""
# Rewrites files in one directory at a given rate, and optionally starts short processes.
ELSEWHERE = r"""
import os, subprocess, sys, time
directory, rate, spawn = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
n, started = 0, time.monotonic()
next_spawn = started
while True:
    due = started + n / rate if rate else started + 3600
    if spawn and next_spawn <= due:
        time.sleep(max(0.0, next_spawn - time.monotonic()))
        subprocess.run(["/bin/true"])
        next_spawn += 1 / spawn
        continue
    time.sleep(max(0.0, due - time.monotonic()))
    with open(os.path.join(directory, f"f{n % 50}"), "w") as handle:
        handle.write(str(n))
    n += 1
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, env={**os.environ, **IDENTITY},
                   capture_output=True)


def make_workspace(base: Path, files: int, config: str) -> Path:
    remote, root = base / "remote.git", base / "ws"
    git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    git(base, "init", "-q", "-b", "main", str(root))
    for n in range(files):
        target = root / f"dir{n // 25:04d}" / f"file{n:06d}.txt"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"file {n}\n")
    (root / ".gitsieve.toml").write_text(config)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "-u", "origin", "main")
    return root


def gitsieve(*args: str) -> list[str]:
    return [sys.executable, "-m", "gitsieve.common.tools.cli", *args]


def status(root: Path) -> list[dict]:
    done = subprocess.run(gitsieve("status", "--workspace", str(root), "--json"),
                          capture_output=True, text=True)
    if done.returncode != 0:
        return []
    return json.loads(done.stdout)["actors"]


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:  # gone meanwhile
            continue
        found += map(int, children)
        frontier += map(int, children)
    return found


def sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, voluntary context switches) of ``pid`` and its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        switches = sum(int(line.split()[1]) for line in
                       Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("voluntary_ctxt_switches"))
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, switches


def name_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [word.decode(errors="replace") for word in argv if word]
    for n, word in enumerate(words):
        if word.startswith("gitsieve.actors."):
            instance = words[words.index("--instance") + 1] if "--instance" in words else ""
            return word.split(".")[-1] + (f"-{int(instance):02d}" if instance else "")
        if word == "gitsieve.common.tools.cli":
            return "gitsieve " + words[n + 1]
    return os.path.basename(words[0]) if words else "?"


def l2_events(root: Path) -> dict[str, int]:
    return {actor["name"]: actor.get("fanotify_events", 0) for actor in status(root)
            if actor["name"].startswith("l2")}


def bench_idle(args) -> None:
    base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-idle-"))
    runner = writer = helper = None
    try:
        socket_line = ""  # (versions before the helper know no such key)
        if args.attribution == "helper":
            from gitsieve.common.tools.accuracy import TemporaryHelper
            helper = TemporaryHelper()
            socket_line = f'\nhelper_socket = "{helper.socket_path}"'
        root = make_workspace(base, args.files, QUIET_CONFIG.format(
            attribution=args.attribution, socket=socket_line))
        elsewhere = base / "elsewhere"
        elsewhere.mkdir()
        log = open(base / "gitsieve.log", "wb")
        runner = subprocess.Popen(gitsieve("run", "--workspace", str(root)), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not l2_events(root):
            if runner.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gitsieve did not start:\n{(base / 'gitsieve.log').read_text()}")
            time.sleep(0.5)
        writer = subprocess.Popen([sys.executable, "-c", ELSEWHERE, str(elsewhere),
                                   str(args.rate), str(args.spawn)], start_new_session=True)
        time.sleep(args.warmup)
        pids = [runner.pid, *descendants(runner.pid)]
        if helper is not None:
            pids.append(helper.proc.pid)
        names = {pid: name_of(pid) for pid in pids}
        before = {pid: sample(pid) for pid in pids}
        events_before = l2_events(root)
        time.sleep(args.seconds)
        after = {pid: sample(pid) for pid in pids}
        events_after = l2_events(root)
    finally:
        for proc in (writer, runner):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if helper is not None:
            helper.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"idle {args.seconds:g} s, {args.files} files, {args.attribution}, {args.rate:g} "
          f"writes/s and {args.spawn:g} processes/s elsewhere on the same filesystem")
    print(f"  {'process':<16}{'CPU %':>8}{'wakeups/s':>11}")
    total_cpu = total_wakeups = 0.0
    for pid in pids:
        if before.get(pid) is None or after.get(pid) is None:
            continue
        cpu = (after[pid][0] - before[pid][0]) / args.seconds * 100
        wakeups = (after[pid][1] - before[pid][1]) / args.seconds
        total_cpu += cpu
        total_wakeups += wakeups
        print(f"  {names[pid]:<16}{cpu:>8.2f}{wakeups:>11.1f}")
    print(f"  {'all':<16}{total_cpu:>8.2f}{total_wakeups:>11.1f}")
    for name in sorted(events_after):
        delta = events_after[name] - events_before.get(name, 0)
        print(f"  {name}: {delta} fanotify events read ({delta / args.seconds * 60:.0f} a "
              "minute)")


WRITER = r"""
import sys
print("ready", flush=True)
for line in sys.stdin:
    with open(line.strip(), "w") as handle:
        handle.write("result\\n")
    print("ok", flush=True)
"""


def bench_latency(args) -> None:
    from collections import Counter

    from gitsieve.common import config as config_mod
    from gitsieve.common.judge.attribution import make_attributor
    from gitsieve.common.tools.accuracy import TemporaryHelper
    tag = f"gitsieve-bench-agent-{os.getpid()}"
    for technique in args.techniques.split(","):
        base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-latency-"))
        helper = writer = attributor = None
        try:
            socket_path = args.helper_socket
            if technique == "helper" and os.geteuid() == 0 and not socket_path:
                helper = TemporaryHelper()
                socket_path = helper.socket_path
            root = make_workspace(base, 0, f'[filter]\nattribution = "{technique}"\n'
                                  f'autonomous_processes = ["{tag}"]\nprocess_cache_ttl = 1\n'
                                  f'helper_socket = "{socket_path or "/run/gitsieve/helper.sock"}"\n')
            attributor = make_attributor(config_mod.load(root), "bench")
            if attributor.mode != technique:
                print(f"{technique}: not available here (got {attributor.mode})")
                continue
            writer = subprocess.Popen([sys.executable, "-c", WRITER, tag], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert writer.stdout.readline().strip() == "ready"
            timings, verdicts = [], Counter()
            for n in range(args.events):
                path = root / f"out-{n % 50}.txt"
                writer.stdin.write(f"{path}\n")
                writer.stdin.flush()
                assert writer.stdout.readline().strip() == "ok"
                started = time.perf_counter()
                found = attributor.attribute(path, time.time())
                timings.append(time.perf_counter() - started)
                verdicts[found.writer if found else "none (writer unknown)"] += 1
                attributor.tick(time.monotonic())
            timings.sort()
            at = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))] * 1000  # noqa: E731
            print(f"{technique:<9} {args.events} writes: p50 {at(0.5):.3f} ms, p90 "
                  f"{at(0.9):.3f} ms, p99 {at(0.99):.3f} ms; verdicts "
                  + ", ".join(f"{k} {v}" for k, v in verdicts.most_common()))
        finally:
            if writer is not None:
                writer.stdin.close()
                writer.wait(10)
            if attributor is not None:
                attributor.close()
            if helper is not None:
                helper.close()
            shutil.rmtree(base, ignore_errors=True)


def bench_reuse(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_identity_reuse as workload

    from gitsieve.common import config as config_mod
    from gitsieve.common.judge.attribution.base import USER
    from gitsieve.common.judge.attribution.exact import ExactAttributor
    from gitsieve.common.judge.attribution.file_identity import Keying
    workload.WORKLOAD_SECONDS = args.seconds
    print(f"{'keying':<8}{'agent files':>13}{'reused inodes':>15}{'attributed USER':>17}")
    for keying in (Keying.HANDLE, Keying.BIRTH, Keying.INODE):
        for _ in range(args.runs):
            base = Path(tempfile.mkdtemp(prefix="gitsieve-bench-reuse-"))
            try:
                root = make_workspace(base, 0, '[filter]\nattribution = "fanotify"\n'
                                      f'autonomous_processes = ["{workload.AGENT_MARK}"]\n')
                (root / "scratch").mkdir()
                (base / "reports").mkdir()
                attributor = ExactAttributor(config_mod.load(root), keying=keying)
                try:
                    person, files, replaced = workload.run_workload(
                        attributor, root / "scratch", base / "reports")
                    found = workload.verdicts_of(attributor, files)
                finally:
                    attributor.close()
            finally:
                shutil.rmtree(base, ignore_errors=True)
            reused = person & (set(files.values()) | replaced)
            wrong = sum(USER in writers for writers in found.values())
            print(f"{keying.value:<8}{len(files):>13}{len(reused):>15}{wrong:>17}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    idle = sub.add_parser("idle", help="CPU and wakeups of an idle workspace")
    idle.add_argument("--seconds", type=float, default=30.0)
    idle.add_argument("--warmup", type=float, default=5.0)
    idle.add_argument("--files", type=int, default=500)
    idle.add_argument("--rate", type=float, default=200.0,
                      help="writes a second elsewhere on the same filesystem")
    idle.add_argument("--spawn", type=float, default=0.0,
                      help="short processes started a second elsewhere")
    idle.add_argument("--attribution", choices=("fanotify", "helper"), default="fanotify")
    idle.set_defaults(func=bench_idle)
    latency = sub.add_parser("latency", help="attribution latency per event, per technique")
    latency.add_argument("--events", type=int, default=300)
    latency.add_argument("--techniques", default="fanotify,helper,psutil")
    latency.add_argument("--helper-socket", default="",
                         help="a running helper (default as root: a temporary one)")
    latency.set_defaults(func=bench_latency)
    reuse = sub.add_parser("reuse", help="misattribution by recorded-write keying (ext4)")
    reuse.add_argument("--seconds", type=float, default=3.0)
    reuse.add_argument("--runs", type=int, default=2)
    reuse.set_defaults(func=bench_reuse)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
