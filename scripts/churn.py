#!/usr/bin/env python3
"""A simulated autonomous process: the churn gitsieve must never commit.

Every INTERVAL seconds it rewrites files in BLOCK areas (status JSON, context, logs) and
timestamp-only JSON in ANALYZE areas, and whenever HEAD moves it reacts the way agent
runtimes do (append to a log, touch a status file) -- the loop a naive auto-commit falls into.

Its command line carries ``--name`` (default ``claude-autonomous``) so that gitsieve's
``autonomous_processes`` patterns recognise it.

    python3 scripts/churn.py --workspace WS [--interval 0.3] [--prepare]

``--prepare`` writes the initial ANALYZE-area files and exits; commit them so that later
timestamp-only rewrites have a HEAD version to be compared with.
"""
from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--name", default="claude-autonomous",
                        help="tag on the command line matched by autonomous_processes")
    parser.add_argument("--prepare", action="store_true")
    args = parser.parse_args()
    root = Path(args.workspace)
    if args.prepare:
        prepare(root)
        return 0
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    head = current_head(root)
    tick = 0
    while not stopping:
        tick += 1
        churn_once(root, tick)
        latest = current_head(root)
        if latest != head:
            head = latest
            react(root, head)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
