#!/usr/bin/env python3
"""A simulated autonomous process: the churn gitsieve must never commit.

Every INTERVAL seconds it rewrites files in BLOCK areas (status JSON, context, logs) and
timestamp-only JSON in ANALYZE areas, and whenever HEAD moves it reacts the way agent
runtimes do (append to a log, touch a status file) -- the loop a naive auto-commit falls into.

``--full`` adds the rest of a busy agent (issue 8's gauntlet): a new decision file with real
content every round; timestamp-only files (``sh -c 'date +%s%N > F'`` rewritten every round,
an ISO-8601 stamp with fractions, a new stamp file every fifth round); and a status file
with real content (the new HEAD and a count) rewritten whenever HEAD moves: a change no
content rule can call churn, so only the loop breaker stops it being committed forever.

Its command line carries ``--name`` (default ``claude-autonomous``) so that gitsieve's
``autonomous_processes`` patterns recognise it.

    python3 scripts/churn.py --workspace WS [--interval 0.3] [--prepare]

``--prepare`` writes the initial ANALYZE-area files and exits; commit them so that later
timestamp-only rewrites have a HEAD version to be compared with.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

BLOCK_JSON = (".claude/autonomous/service-status.json", ".claude/memory/enhanced-context.json")
BLOCK_LOGS = (".claude/intelligence/agent.log", "logs/system.log")
ANALYZE_JSON = ".claude/contexts/session.json"
REACTION_JSON = ".claude/contexts/head-watch.json"
REACTION_LOG = ".claude/contexts/reactions.log"
ANALYZE_FILES = (ANALYZE_JSON, REACTION_JSON, REACTION_LOG)
# --full
DECISIONS_DIR = ".claude/decisions"
HEAD_STATUS = ".claude/contexts/head-status.md"  # real content on every HEAD move
NANO_STAMP = ".claude/contexts/heartbeat.ns"      # date +%s%N
ISO_STAMP = ".claude/contexts/clock.iso"          # ISO-8601 with microseconds
STAMPS_DIR = ".claude/contexts/stamps"            # a new timestamp-only file now and then
TIMESTAMP_ONLY = (NANO_STAMP, ISO_STAMP, STAMPS_DIR)

stopping = False


def _stop(*_args) -> None:
    global stopping
    stopping = True


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def session_state(now: float) -> dict:
    # Only the volatile keys (last_update, timestamp, session_id) ever change.
    return {"project": "gitsieve-demo", "last_update": now, "session_id": str(uuid.uuid4()),
            "state": {"phase": "idle", "timestamp": now, "agents": [{"name": "indexer",
                                                                     "timestamp": now}]}}


def head_watch(now: float) -> dict:
    return {"watching": "HEAD", "last_update": now, "timestamp": now}


def prepare(root: Path) -> None:
    now = time.time()
    write_atomic(root / ANALYZE_JSON, json.dumps(session_state(now), indent=2) + "\n")
    write_atomic(root / REACTION_JSON, json.dumps(head_watch(now), indent=2) + "\n")
    write_atomic(root / REACTION_LOG, "reactions\n")


def current_head(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=root,
                            capture_output=True, text=True)
    return result.stdout.strip()


def churn_once(root: Path, tick: int) -> None:
    now = time.time()
    for rel in BLOCK_JSON:
        write_atomic(root / rel, json.dumps({"tick": tick, "last_update": now,
                                             "load": tick % 7}) + "\n")
    for rel in BLOCK_LOGS:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a") as log:
            log.write(f"{now:.3f} tick {tick}\n")
    path = root / ANALYZE_JSON
    if tick % 2:
        write_atomic(path, json.dumps(session_state(now), indent=2) + "\n")
    else:
        path.write_text(json.dumps(session_state(now), indent=2) + "\n")


def react(root: Path, head: str) -> None:
    now = time.time()
    with open(root / REACTION_LOG, "a") as log:
        log.write(f"{now:.3f} saw HEAD {head}\n")
    (root / REACTION_JSON).write_text(json.dumps(head_watch(now), indent=2) + "\n")


def churn_full(root: Path, tick: int) -> None:
    """The --full additions made every round: a new decision, timestamp-only files."""
    decision = root / DECISIONS_DIR / f"decision-{tick:05d}.md"
    decision.parent.mkdir(parents=True, exist_ok=True)
    decision.write_text(f"# Decision {tick}\n\nChose option {tick % 3} after weighing "
                        f"{tick % 5 + 2} alternatives.\n")
    stamp = root / NANO_STAMP
    subprocess.run(["sh", "-c", 'date +%s%N > "$1"', "sh", str(stamp)], check=False)
    (root / ISO_STAMP).write_text(datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="microseconds") + "\n")
    if tick % 5 == 0:
        (root / STAMPS_DIR).mkdir(parents=True, exist_ok=True)
        (root / STAMPS_DIR / f"run-{tick:05d}.stamp").write_text(f"{time.time():.6f}\n")


def react_full(root: Path, head: str, reactions: int) -> None:
    (root / HEAD_STATUS).write_text(f"# Agent status\n\nLast commit seen: {head}\n"
                                    f"Commits seen: {reactions}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--name", default="claude-autonomous",
                        help="tag on the command line matched by autonomous_processes")
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="also new decision files, timestamp-only files and a status file "
                             "with real content rewritten on every HEAD move")
    args = parser.parse_args()
    root = Path(args.workspace)
    if args.prepare:
        prepare(root)
        return 0
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    head = current_head(root)
    tick = reactions = 0
    while not stopping:
        tick += 1
        churn_once(root, tick)
        if args.full:
            churn_full(root, tick)
        latest = current_head(root)
        if latest != head:
            head = latest
            reactions += 1
            react(root, head)
            if args.full:
                react_full(root, head, reactions)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
