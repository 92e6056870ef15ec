#!/usr/bin/env python3
"""A simulated autonomous process (or, with a neutral --name, a simulated user's editor).

Its command line carries ``--name NAME`` so ``[filter] autonomous_processes`` can match it.

``serve``: one JSON command a line on stdin, ``ok`` (or ``error: ...``) a line on stdout:
  {"op": "write", "path": P, "text": T}       create/overwrite P (relative to --workspace)
  {"op": "append", "path": P, "text": T}
  {"op": "child", "path": P, "text": T}       a short-lived ``sh -c 'printf ... > P'`` child
  {"op": "replace", "path": P, "text": T}     atomic replace: write P.tmp, rename over P
  {"op": "rename", "path": P, "to": Q}
  {"op": "delete", "path": P}
  {"op": "hold", "path": P, "text": T}        append and keep P open for writing
  {"op": "release", "path": P}
``run``: the e2e agent.  Every --interval seconds it creates a new JSON file with real
content under --dir, rewrites the timestamp line of each --shared file (files that also
hold user content), and has a short-lived child (``sh -c 'date ... > F'``) rewrite
--child-file; whenever HEAD moves (a commit) it rewrites the shared files' timestamps at
once.  With --shell-tools each round also moves a fresh file into place with ``mv`` and
removes its own file of three rounds before with ``rm`` (children), and removes one
--remove path (committed files) with ``rm`` and renames one --move path away with ``mv``.
It logs what it did, one JSON line per change, to --log.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

STAMP_LINE = re.compile(r"^updated: .*$", re.MULTILINE)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


class Agent:
    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.held: dict[str, object] = {}

    def target(self, rel: str) -> Path:
        path = self.workspace / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, path: str, text: str = "") -> None:
        self.target(path).write_text(text)

    def append(self, path: str, text: str = "") -> None:
        with open(self.target(path), "a") as handle:
            handle.write(text)

    def child(self, path: str, text: str = "") -> None:
        subprocess.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", text,
                        str(self.target(path))], check=True)

    def replace(self, path: str, text: str = "") -> None:
        final = self.target(path)
        temp = final.with_name(final.name + ".agent-tmp")
        temp.write_text(text)
        os.replace(temp, final)

    def rename(self, path: str, to: str = "", text: str = "") -> None:
        os.replace(self.target(path), self.target(to))

    def delete(self, path: str, text: str = "") -> None:
        os.unlink(self.workspace / path)

    def hold(self, path: str, text: str = "") -> None:
        handle = open(self.target(path), "a")
        handle.write(text)
        handle.flush()
        self.held[path] = handle

    def release(self, path: str, text: str = "") -> None:
        self.held.pop(path).close()


def serve(agent: Agent) -> int:
    ops = {"write": agent.write, "append": agent.append, "child": agent.child,
           "replace": agent.replace, "rename": agent.rename, "delete": agent.delete,
           "hold": agent.hold, "release": agent.release}
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            command = json.loads(line)
            op = ops[command.pop("op")]
            op(**command)
            print("ok", flush=True)
        except (OSError, KeyError, TypeError, ValueError, subprocess.CalledProcessError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", flush=True)
    return 0


def head_signature(workspace: Path) -> tuple:
    git_dir = workspace / ".git"
    try:
        info = (git_dir / "logs" / "HEAD").stat()
        return (info.st_mtime_ns, info.st_size)
    except OSError:
        return ()


def run(agent: Agent, args) -> int:
    log = open(args.log, "a") if args.log else None

    def record(kind: str, path: str) -> None:
        if log:
            log.write(json.dumps({"kind": kind, "path": path, "at": time.time()}) + "\n")
            log.flush()

    def stamp_shared() -> None:
        for rel in args.shared:
            path = agent.workspace / rel
            try:
                text = path.read_text()
            except OSError:  # the user removed it: nothing to stamp
                continue
            stamped = STAMP_LINE.sub(f"updated: {now_iso()}", text, count=1)
            if stamped != text:
                path.write_text(stamped)
                record("stamp", rel)

    deadline = time.monotonic() + args.duration
    next_round = 0.0
    seen_head = head_signature(agent.workspace)
    number = 0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_round:
            next_round = time.monotonic() + args.interval
            number += 1
            rel = f"{args.dir}/agent-{number:04d}-{uuid.uuid4().hex[:6]}.json"
            agent.write(rel, json.dumps({"task": f"analysis {number}", "findings": [
                {"item": i, "score": (number * 7 + i) % 10} for i in range(3)],
                "created": now_iso()}, indent=1) + "\n")
            record("new", rel)
            stamp_shared()
            if args.child_file:
                subprocess.run(["sh", "-c", 'date "+updated: %Y-%m-%dT%H:%M:%S.%N" > "$1"',
                                "sh", str(agent.target(args.child_file))], check=False)
                record("child", args.child_file)
            if args.shell_tools:
                shell_tools(agent, args, number, record)
        head = head_signature(agent.workspace)
        if head != seen_head:  # a commit landed: react like a monitor refreshing status
            seen_head = head
            stamp_shared()
            record("react", "")
        time.sleep(0.02)
    if log:
        log.close()
    return 0


def shell_tools(agent: Agent, args, number: int, record) -> None:
    """One round of coreutils children: mv into place, rm of an own older file, and one
    committed file removed and one renamed away (while any are left)."""
    partial = agent.target(f"{args.dir}/.agent-{number:04d}.partial")
    partial.write_text(f"moved into place in round {number}\n")
    moved = f"{args.dir}/agent-moved-{number:04d}.txt"
    subprocess.run(["mv", str(partial), str(agent.target(moved))], check=False)
    record("mv", moved)
    if number > 3:
        old = f"{args.dir}/agent-moved-{number - 3:04d}.txt"
        subprocess.run(["rm", "-f", str(agent.workspace / old)], check=False)
        record("rm", old)
    if args.remove:
        gone = args.remove.pop(0)
        subprocess.run(["rm", "-f", str(agent.workspace / gone)], check=False)
        record("rm", gone)
    if args.move:
        away = args.move.pop(0)
        subprocess.run(["mv", str(agent.workspace / away), str(agent.workspace / away)
                        + ".moved"], check=False)
        record("mv-away", away)
        record("mv", away + ".moved")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("serve", "run"))
    parser.add_argument("--name", default="claude-autonomous-sim",
                        help="carried in the command line for autonomous_processes")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--dir", default=".claude/contexts")
    parser.add_argument("--shared", action="append", default=[])
    parser.add_argument("--child-file", default="")
    parser.add_argument("--log", default="")
    parser.add_argument("--shell-tools", action="store_true",
                        help="each round: mv and rm children (see the module doc)")
    parser.add_argument("--remove", action="append", default=[],
                        help="a committed path to remove with rm, one a round")
    parser.add_argument("--move", action="append", default=[],
                        help="a committed path to rename away with mv, one a round")
    args = parser.parse_args(argv)
    agent = Agent(args.workspace.resolve())
    return serve(agent) if args.mode == "serve" else run(agent, args)


if __name__ == "__main__":
    raise SystemExit(main())
