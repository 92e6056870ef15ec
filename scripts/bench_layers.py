#!/usr/bin/env python3
"""Per-layer throughput and latency of the decision layers, printed (no thresholds here).

- L1: paths/s of one pattern-layer worker: the rules alone (junk check + first matching
  rule), and whole poll rounds of 500 Changes (one ``git check-ignore`` per round).
- L2: ms per judged change in the privileged path (fanotify + lineage), for files just
  written by another process (drain, lineage walk, window, verdict, Decision encoded); and
  in the unprivileged path (psutil), for a person's burst of new files no process holds
  open any more (every change a miss, as when a tool unpacks thousands).
- L3: ms to judge a 100 KB JSON whose only change is a volatile key, HEAD version cached
  (file read, JSON parse of both sides, comparison), and the pure comparison alone.
- Stage: Changes/s through real processes and sockets: watcher-side PUSH -> router ->
  the L1 process -> router's l2 queue, with the configured ``[workers] stage_window``.
- Codec: µs to encode and to decode (with every field checked) a Decision carrying all
  three trail steps, what every layer pays per message.

Usage: python scripts/bench_layers.py [--paths 200000] [--events 2000] [--rounds 200]
                                      [--stage 20000] [--codec 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gitsieve.common import config as config_mod
from gitsieve.common.git.gateway import Git
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    Technique,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep

IDENTITY = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b"}

RULES = r"""
BLOCK:\.claude/autonomous/.*:status
BLOCK:logs/.*\.log:logs
ALLOW:docs/.*\.md:docs
ALLOW:scripts/.*\.sh:scripts
ANALYZE:\.claude/contexts/.*:contexts
"""


def make_workspace(base: Path, extra_config: str = "") -> Path:
    root = base / "ws"
    root.mkdir()
    git = Git(root)
    git.run("init", "-q", "-b", "main")
    (root / ".gitignore").write_text("*.ignored\n")
    (root / ".rules.conf").write_text(RULES)
    (root / ".gitsieve.toml").write_text(
        f'[filter]\npatterns_file = ".rules.conf"\n{extra_config}')
    git.run("add", "-A")
    git.run("commit", "-q", "-m", "init", env=IDENTITY)
    return root


def bench_l1(base: Path, count: int) -> None:
    from gitsieve.common.judge.pattern import PatternJudge, observe
    root = make_workspace(base / "l1")
    config = config_mod.load(root)
    rules = RuleCache(config.patterns_file)
    judge = PatternJudge(config)
    kinds = ("docs/a{}.md", ".claude/contexts/c{}.json", "src/m{}.py", ".claude/autonomous/s{}",
             "logs/x{}.log", "notes/.n{}.swp")
    paths = [kinds[i % len(kinds)].format(i) for i in range(count)]
    started = time.perf_counter()
    changes = [observe(path, ChangeKind.WRITE, seq, 1.0, 1.0, rules)
               for seq, path in enumerate(paths)]
    facts_rate = count / (time.perf_counter() - started)
    rounds = [changes[i:i + 500] for i in range(0, min(count, 50_000), 500)]
    started = time.perf_counter()
    for chunk in rounds:
        judge.judge(chunk)
    round_rate = sum(map(len, rounds)) / (time.perf_counter() - started)
    print(f"L1  facts (junk + rules, the watcher's part): {facts_rate:12,.0f} paths/s")
    print(f"L1  judge, rounds of 500 changes:             {round_rate:12,.0f} paths/s per "
          "worker (one git check-ignore per round)")


def bench_l2(base: Path, events: int) -> None:
    if os.geteuid() != 0:
        print("L2  privileged path: skipped (needs root)")
        return
    from gitsieve.common.judge.process import ProcessJudge
    tag = f"bench-agent-{os.getpid()}"
    root = make_workspace(base / "l2", f'autonomous_processes = ["{tag}"]\n'
                                       'attribution = "fanotify"\n')
    judge = ProcessJudge(config_mod.load(root))
    # A long-lived autonomous process (as agents are) writing ``events`` files.
    writer = ("import sys, pathlib\nroot = pathlib.Path(sys.argv[1])\n"
              "sys.stdin.readline()\n"
              "for i in range(int(sys.argv[2])):\n"
              "    (root / f'.claude/contexts/f{i}.json').write_text('{}')\n"
              "print('done', flush=True)\nsys.stdin.read()\n")
    (root / ".claude/contexts").mkdir(parents=True)
    agent = subprocess.Popen([sys.executable, "-c", writer, str(root), str(events), tag],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.2)
    judge.attributor.drain()  # its exec, read while it runs (the actor's poll loop does this)
    agent.stdin.write("go\n")
    agent.stdin.flush()
    agent.stdout.readline()
    observed = time.time()
    timings, verdicts = [], set()
    for i in range(events):
        change = Change(path=f".claude/contexts/f{i}.json", kind=ChangeKind.WRITE, seq=i,
                        epoch=1.0, observed=observed)
        started = time.perf_counter()
        verdicts.add(judge.judge(change).verdict)
        timings.append(time.perf_counter() - started)
    agent.communicate("")
    judge.close()
    timings.sort()
    print(f"L2  fanotify+lineage, {events} changes: p50 {timings[len(timings) // 2] * 1000:.3f}"
          f" ms, p99 {timings[int(len(timings) * 0.99)] * 1000:.3f} ms, mean "
          f"{sum(timings) / len(timings) * 1000:.3f} ms per change (verdicts: "
          f"{', '.join(sorted(verdicts))}; first change includes draining all {events} "
          "writes)")


def bench_l2_unprivileged(base: Path, events: int) -> None:
    from gitsieve.common.judge.process import ProcessJudge
    root = make_workspace(base / "l2u", f'autonomous_processes = ["bench-agent-{os.getpid()}"]'
                                        '\nattribution = "psutil"\n')
    (root / "burst").mkdir()
    for number in range(events):
        (root / f"burst/f{number}.txt").write_text(f"{number}\n")
    judge = ProcessJudge(config_mod.load(root))
    judge.tick(time.monotonic())
    observed = time.time()
    started = time.perf_counter()
    for number in range(events):
        judge.judge(Change(path=f"burst/f{number}.txt", kind=ChangeKind.WRITE, seq=number,
                           epoch=1.0, observed=observed))
    elapsed = time.perf_counter() - started
    judge.close()
    print(f"L2  psutil, a burst of {events} new files (all misses): "
          f"{elapsed / events * 1000:.3f} ms per change, {events / elapsed:.0f} changes/s")


def bench_l3(base: Path, rounds: int) -> None:
    from gitsieve.common.judge.content import classify, compile_volatile
    from gitsieve.common.judge.content_judge import ContentJudge
    root = make_workspace(base / "l3")
    doc = {"timestamp": "2024-01-01T00:00:00Z", "session_id": "alpha",
           "items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"], "score": i * 0.5}
                     for i in range(1050)]}
    head = json.dumps(doc, indent=1).encode()
    (root / "big.json").write_bytes(head)
    git = Git(root)
    git.run("add", "big.json")
    git.run("commit", "-q", "-m", "big", env=IDENTITY)
    cfg = config_mod.load(root)
    judge = ContentJudge(cfg, git)
    volatile = compile_volatile(cfg.text_volatile_patterns)
    change = Change(path="big.json", kind=ChangeKind.WRITE, seq=1, epoch=1.0, observed=1.0)
    variants = (("timestamp", "2024-01-02T00:00:00Z", "token fast path"),
                ("session_id", "beta", "JSON parse + compare, HEAD parse cached"))
    for key, value, how in variants:
        work = json.dumps({**doc, key: value}, indent=1).encode()
        (root / "big.json").write_bytes(work)
        judge.judge(change)  # fills the HEAD cache, as repeated churn on one path does
        timings, pure = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            verdict = judge.judge(change).verdict
            timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            classify("big.json", head, work, cfg.volatile_keys, volatile=volatile)
            pure.append(time.perf_counter() - started)
        timings.sort()
        pure.sort()
        print(f"L3  {len(work) / 1024:.0f} KB JSON, only {key} changed ({verdict}, {how}): "
              f"whole judgement p50 {timings[len(timings) // 2] * 1000:.3f} ms, p99 "
              f"{timings[int(len(timings) * 0.99)] * 1000:.3f} ms; comparison alone p50 "
              f"{pure[len(pure) // 2] * 1000:.3f} ms")
    judge.close()


def bench_stage(base: Path, count: int) -> None:
    import zmq

    from gitsieve.common.protocol import messages
    root = make_workspace(base / "stage", '[runtime]\nlog_level = "WARNING"\n')
    cfg = config_mod.load(root)
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    decisions = context.socket(zmq.PULL)
    decisions.bind(cfg.endpoints.decisions)
    # Stands in for the L2 workers: announces a window that takes everything.
    analyzed = context.socket(zmq.DEALER)
    analyzed.connect(cfg.endpoints.stage_out("l2"))
    analyzed.send(messages.encode(messages.Ready(worker="bench", received=0,
                                                 window=count)))
    producer = context.socket(zmq.PUSH)
    producer.connect(cfg.endpoints.stage_in("l1"))
    procs = [subprocess.Popen([sys.executable, "-m", f"gitsieve.actors.{name}", "--workspace",
                               str(root)]) for name in ("router", "pattern_layer")]
    try:
        time.sleep(1.5)  # both bound and connected
        kinds = ("docs/a{}.md", ".claude/contexts/c{}.json", "src/m{}.py")
        started = time.perf_counter()
        for seq in range(count):
            change = Change(path=kinds[seq % 3].format(seq), kind=ChangeKind.WRITE, seq=seq,
                            epoch=1.0, observed=time.time())
            producer.send_multipart(messages.stage_frames(change, priority=False))
        got = 0
        poller = zmq.Poller()
        poller.register(decisions, zmq.POLLIN)
        poller.register(analyzed, zmq.POLLIN)
        while got < count:
            ready = dict(poller.poll(10_000))
            if not ready:
                break
            for sock in ready:
                while sock.poll(0):
                    sock.recv()
                    got += 1
        elapsed = time.perf_counter() - started
        print(f"Stage router -> L1 process -> out, {count} Changes: {got / elapsed:12,.0f} "
              f"changes/s ({got} arrived; window {cfg.stage_window})")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        context.destroy(linger=0)


def bench_codec(count: int) -> None:
    decision = Decision(
        path="data/d00001/f000123.txt", kind=ChangeKind.WRITE, seq=123, epoch=3.0,
        observed=1234.5, commit=True, action=Action.ANALYZE, trail=(
            PatternStep(Action.ANALYZE, L1Reason.DEFAULT),
            ProcessStep(Writer.UNKNOWN, L2Reason.IDENTIFIED, Mode.FANOTIFY,
                        Technique.FANOTIFY, 1234, "python3 editor.py", 1.0, writes=1,
                        writes_until=12.0),
            ContentStep(Content.USER, next(iter(L3Reason)), "", "ab" * 20, "cd" * 20)))
    frame = messages.encode(decision)
    started = time.perf_counter()
    for _ in range(count):
        messages.encode(decision)
    encode_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        messages.decode(frame)
    decode_us = (time.perf_counter() - started) / count * 1e6
    print(f"Codec  Decision with three trail steps ({len(frame)} bytes): encode "
          f"{encode_us:.1f} us, decode {decode_us:.1f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--stage", type=int, default=20_000)
    parser.add_argument("--codec", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gitsieve-bench-") as base:
        for name in ("l1", "l2", "l2u", "l3", "stage"):
            (Path(base) / name).mkdir()
        bench_l1(Path(base), args.paths)
        bench_l2(Path(base), args.events)
        bench_l2_unprivileged(Path(base), args.events)
        bench_l3(Path(base), args.rounds)
        bench_stage(Path(base), args.stage)
    bench_codec(args.codec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
