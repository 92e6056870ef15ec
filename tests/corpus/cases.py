"""The labelled corpus behind ``gitsieve test``: every rule of L1-L3 and the hard cases.

A case is a dict: ``id``, ``rule`` (what it exercises), ``setup`` ({path: text} committed
before the cases run), ``steps`` and ``modes`` (the attribution modes it is decidable in;
an empty tuple marks a case no mode can decide yet, listed by the runner as excluded, with
``why``).  Steps are tuples run in order by real processes:

  ("user", OP, path, text)    the simulated user's editor (a non-autonomous process)
  ("agent", OP, path, text)   the simulated autonomous process (agent_sim.py serve)
  ("self", "restore", path)   gitsieve's own git (GITSIEVE_GIT=1) restores path from HEAD
  ("commit", path)            commit path (as gitsieve would), HEAD moves
  ("judge", path, kind, expect)  run a Change through L1-L3; expect "commit" or "drop"

OPs are agent_sim.py's: write, append, child, replace, rename (text = new name), delete,
hold, release.  Every case lives under its own directory ``cNNN/`` so cases never share a
file; RULES below are the harness's rules file.
"""
from __future__ import annotations

import json

# "agent": the psutil technique with the autonomous process run under `gitsieve agent`
# (its command line matching nothing): the journal names it exactly, unprivileged.
BOTH = ("fanotify", "psutil", "agent")
EXACT = ("fanotify", "agent")
USER_KNOWN = ("fanotify",)  # needs a write positively known as the user's

RULES = r"""
BLOCK:c\d+/\.claude/autonomous/.*:autonomous status
ALLOW:c\d+/docs/.*\.md:user documentation
ANALYZE:c\d+/\.claude/contexts/.*:context files
"""
GITIGNORE = "*.ignored\nignored/\n"
# Small, so the size-cap cases stay fast.
MAX_ANALYZE_BYTES = 64 * 1024

STAMP_A = "2024-05-01T10:00:00.123456+00:00"
STAMP_B = "2024-05-01T10:00:07.654321+00:00"
UUID_A = "0b8f6c1e-3d2a-4f5b-9c8d-7e6f5a4b3c2d"
UUID_B = "9a1b2c3d-4e5f-4a6b-8c7d-6e5f4a3b2c1d"


def _doc(**values) -> str:
    return json.dumps(values, indent=1) + "\n"


_cases: list[dict] = []


def case(rule: str, steps: list, setup: dict | None = None, modes=BOTH, why: str = ""):
    number = len(_cases) + 1
    prefix = f"c{number:03d}/"

    def rel(path: str) -> str:
        return prefix + path

    fixed = []
    for step in steps:
        if step[0] in ("user", "agent"):
            actor, op, path, *rest = step
            text = rest[0] if rest else ""
            if op == "rename":
                text = rel(text)
            fixed.append((actor, op, rel(path), text))
        elif step[0] == "judge":
            fixed.append(("judge", rel(step[1]), step[2], step[3]))
        else:
            fixed.append((step[0], *[rel(p) for p in step[1:]])
                         if step[0] == "commit" else (step[0], step[1], rel(step[2])))
    _cases.append({"id": f"c{number:03d}", "rule": rule, "modes": tuple(modes), "why": why,
                   "setup": {rel(path): text for path, text in (setup or {}).items()},
                   "steps": fixed})


WRITERS = ("user", "agent")
AREAS = ("", ".claude/contexts/", "src/")

# ----- L1: editor junk and backups, whoever writes them ---------------------------------
for name in (".notes.md.swp", ".notes.md.swx", "notes.md~", "4913", ".#notes.md",
             ".goutputstream-X1Y2Z3", "build.tmp", "config.json.bak", "main.py.orig"):
    for writer in WRITERS:
        case("L1 editor junk", [(writer, "write", name, "scratch\n"),
                                ("judge", name, "write", "drop")])
# ----- L1: ignored by git --------------------------------------------------------------
for name in ("cache.ignored", "ignored/data.json", "ignored/sub/x.txt"):
    for writer in WRITERS:
        case("L1 ignored by git", [(writer, "write", name, "{}\n"),
                                   ("judge", name, "write", "drop")])
# ----- L1: BLOCK and ALLOW rules -------------------------------------------------------
for name in (".claude/autonomous/status.json", ".claude/autonomous/heartbeat.txt",
             ".claude/autonomous/deep/run.log"):
    for writer in WRITERS:
        case("L1 BLOCK rule", [(writer, "write", name, _doc(state="busy")),
                               ("judge", name, "write", "drop")])
for name in ("docs/guide.md", "docs/api/reference.md", "docs/changelog.md"):
    for writer in WRITERS:
        case("L1 ALLOW rule", [(writer, "write", name, "# Title\n\nbody\n"),
                               ("judge", name, "write", "commit")])

# ----- L2 exact: autonomous writes with real content ------------------------------------
for area in AREAS:
    for name, text in (("plan.json", _doc(task="refactor parser", steps=["a", "b"])),
                       ("analysis.md", "# Findings\n\nThe cache is cold.\n"),
                       ("result.txt", "42 items processed, 3 failed\n")):
        case("L2 new file with real content by an autonomous process",
             [("agent", "write", area + name, text), ("judge", area + name, "write", "drop")],
             modes=EXACT, why="content alone cannot tell who wrote a new file")
        case("L2 real edit of a committed file by an autonomous process",
             [("agent", "write", area + name, text + "more\n"),
              ("judge", area + name, "write", "drop")],
             setup={area + name: text}, modes=EXACT,
             why="a real content change looks like a user's without the writer")
        case("L2 short-lived child of an autonomous process (new file)",
             [("agent", "child", area + "child-" + name, text),
              ("judge", area + "child-" + name, "write", "drop")], modes=EXACT,
             why="the child exits within milliseconds; only lineage names its parent")
        case("L2 atomic replace (write tmp, rename) by an autonomous process",
             [("agent", "replace", area + name, text + "v2\n"),
              ("judge", area + name, "write", "drop")],
             setup={area + name: text}, modes=EXACT,
             why="the rename hides the writer from open-file checks")
# ----- L2 psutil-detectable: the autonomous process holds the file open ----------------
for area in AREAS:
    for name in ("live.json", "stream.txt", "notes.md"):
        case("L2 autonomous process holds the file open for writing",
             [("agent", "hold", area + name, _doc(progress=0.5, item="x")),
              ("judge", area + name, "write", "drop"), ("agent", "release", area + name)])
        case("L2 autonomous process holds a committed file open for writing",
             [("agent", "hold", area + name, "appended by the agent\n"),
              ("judge", area + name, "write", "drop"), ("agent", "release", area + name)],
             setup={area + name: "original\n"})

# ----- user writes: committed ----------------------------------------------------------
for area in AREAS:
    for name, before, after in (
            ("config.json", _doc(depth=1, name="a"), _doc(depth=2, name="a")),
            ("README.txt", "hello\n", "hello world\n"),
            ("main.py", "print(1)\n", "print(2)\n"),
            ("notes.md", "- one\n", "- one\n- two\n")):
        case("user edit of a committed file", [("user", "write", area + name, after),
                                               ("judge", area + name, "write", "commit")],
             setup={area + name: before})
        case("user creates a new file", [("user", "write", area + "new-" + name, after),
                                         ("judge", area + "new-" + name, "write", "commit")])
        case("user deletes a committed file", [("user", "delete", area + name),
                                               ("judge", area + name, "delete", "commit")],
             setup={area + name: before})
    case("user edit where only a timestamp differs (exact: still the user's)",
         [("user", "write", area + "meeting.md", f"Meeting at {STAMP_B}\n"),
          ("judge", area + "meeting.md", "write", "commit")],
         setup={area + "meeting.md": f"Meeting at {STAMP_A}\n"}, modes=USER_KNOWN,
         why="unprivileged, a timestamp-only change is taken for system churn")
    case("user appends to a .log (exact: still the user's)",
         [("user", "append", area + "journal.log", "user line\n"),
          ("judge", area + "journal.log", "write", "commit")],
         setup={area + "journal.log": "first\n"}, modes=USER_KNOWN,
         why="unprivileged, append-only log growth is taken for system churn")
    case("user changes only a volatile JSON key (exact: still the user's)",
         [("user", "write", area + "state.json", _doc(timestamp=2, value="v")),
          ("judge", area + "state.json", "write", "commit")],
         setup={area + "state.json": _doc(timestamp=1, value="v")}, modes=USER_KNOWN,
         why="unprivileged, volatile-key-only changes are taken for system churn")

# ----- L3: content rules decide what no writer evidence does ----------------------------
for area in AREAS:
    for writer in ("agent", "agent-child"):
        actor, op = ("agent", "child") if writer == "agent-child" else ("agent", "write")
        case("L3 volatile JSON keys only",
             [(actor, op, area + "status.json", _doc(timestamp=STAMP_B, jobs=3,
                                                     session_id=UUID_B)),
              ("judge", area + "status.json", "write", "drop")],
             setup={area + "status.json": _doc(timestamp=STAMP_A, jobs=3,
                                               session_id=UUID_A)})
        case("L3 nested volatile JSON keys only",
             [(actor, op, area + "deep.json", _doc(a={"b": [{"last_update": 2, "k": 1}]})),
              ("judge", area + "deep.json", "write", "drop")],
             setup={area + "deep.json": _doc(a={"b": [{"last_update": 1, "k": 1}]})})
        case("L3 timestamp-only text",
             [(actor, op, area + "heartbeat.txt", f"alive at {STAMP_B}\n"),
              ("judge", area + "heartbeat.txt", "write", "drop")],
             setup={area + "heartbeat.txt": f"alive at {STAMP_A}\n"})
        case("L3 uuid-only text",
             [(actor, op, area + "run.id", f"run {UUID_B}\n"),
              ("judge", area + "run.id", "write", "drop")],
             setup={area + "run.id": f"run {UUID_A}\n"})
        case("L3 JSON whose only change is a timestamp value under another key",
             [(actor, op, area + "job.json", _doc(updated=STAMP_B, name="j")),
              ("judge", area + "job.json", "write", "drop")],
             setup={area + "job.json": _doc(updated=STAMP_A, name="j")})
        case("L3 reformatted JSON, same data",
             [(actor, op, area + "fmt.json", json.dumps({"x": 1, "y": [1, 2]}) + "\n"),
              ("judge", area + "fmt.json", "write", "drop")],
             setup={area + "fmt.json": _doc(x=1, y=[1, 2])})
    case("L3 append-only log growth by an autonomous process",
         [("agent", "append", area + "agent.log", "line 2\n"),
          ("judge", area + "agent.log", "write", "drop")],
         setup={area + "agent.log": "line 1\n"})
    for writer in WRITERS:
        case("L3 rewritten with identical bytes",
             [(writer, "write", area + "same.txt", "same\n"),
              ("judge", area + "same.txt", "write", "drop")],
             setup={area + "same.txt": "same\n"})
    case("L3 user's real JSON change next to volatile keys",
         [("user", "write", area + "mixed.json", _doc(timestamp=2, limit=20)),
          ("judge", area + "mixed.json", "write", "commit")],
         setup={area + "mixed.json": _doc(timestamp=1, limit=10)})
    case("L3 binary file changed by the user",
         [("user", "write", area + "image.bin", "\0\1\2\3 changed"),
          ("judge", area + "image.bin", "write", "commit")],
         setup={area + "image.bin": "\0\1\2\3 original"})
    case("L3 binary file changed by an autonomous process",
         [("agent", "write", area + "cache.bin", "\0\1 agent v2"),
          ("judge", area + "cache.bin", "write", "drop")],
         setup={area + "cache.bin": "\0\1 agent v1"}, modes=EXACT,
         why="a binary change has no volatile tokens to recognise")
    case("L3 file over max_analyze_bytes changed by the user",
         [("user", "write", area + "big.txt", "y" * (MAX_ANALYZE_BYTES + 10)),
          ("judge", area + "big.txt", "write", "commit")],
         setup={area + "big.txt": "x" * (MAX_ANALYZE_BYTES + 10)})
    case("L3 file over max_analyze_bytes rewritten identically",
         [("agent", "write", area + "big-same.txt", "z" * (MAX_ANALYZE_BYTES + 10)),
          ("judge", area + "big-same.txt", "write", "drop")],
         setup={area + "big-same.txt": "z" * (MAX_ANALYZE_BYTES + 10)})

# ----- hard cases -----------------------------------------------------------------------
SHARED = "Project notes\n\nupdated: {stamp}\n"
for area in AREAS:
    for how in ("write", "child"):
        case("a file both sides write: the user's change once, never the timestamp rewrites",
             [("user", "write", area + "shared.md",
               "Project notes\nuser line\n\nupdated: " + STAMP_A + "\n"),
              ("judge", area + "shared.md", "write", "commit"),
              ("commit", area + "shared.md"),
              ("agent", how, area + "shared.md",
               "Project notes\nuser line\n\nupdated: " + STAMP_B + "\n"),
              ("judge", area + "shared.md", "write", "drop"),
              ("agent", how, area + "shared.md",
               "Project notes\nuser line\n\nupdated: 2024-06-01T00:00:00.1+00:00\n"),
              ("judge", area + "shared.md", "write", "drop")],
             setup={area + "shared.md": SHARED.format(stamp=STAMP_A)})
    case("a file both sides write: user edits right after an agent rewrite",
         [("agent", "write", area + "both.md", SHARED.format(stamp=STAMP_B)),
          ("user", "write", area + "both.md", "Project notes\nmine\n\nupdated: "
           + STAMP_B + "\n"),
          ("judge", area + "both.md", "write", "commit")],
         setup={area + "both.md": SHARED.format(stamp=STAMP_A)}, modes=("fanotify", "psutil"),
         why="the journal alone takes a version written within 0.25 s of the agent's "
             "recorded write for the agent's (nothing says the user wrote too)")
    case("rename by the user of a committed file",
         [("user", "rename", area + "old-name.txt", area + "new-name.txt"),
          ("judge", area + "new-name.txt", "write", "commit"),
          ("judge", area + "old-name.txt", "delete", "commit")],
         setup={area + "old-name.txt": "content\n"})
    case("an autonomous process renames its fresh temp file into place",
         [("agent", "write", area + "out.partial", _doc(result=[1, 2, 3])),
          ("agent", "rename", area + "out.partial", area + "out.json"),
          ("judge", area + "out.json", "write", "drop")], modes=EXACT,
         why="a new file with real content: only the writer tells")
    case("gitsieve's own git restores a file",
         [("user", "write", area + "restored.txt", "edited\n"),
          ("self", "restore", area + "restored.txt"),
          ("judge", area + "restored.txt", "write", "drop")],
         setup={area + "restored.txt": "committed\n"})
    case("deletion by an autonomous process",
         [("agent", "delete", area + "agent-owned.json"),
          ("judge", area + "agent-owned.json", "delete", "drop")],
         setup={area + "agent-owned.json": _doc(x=1)}, modes=EXACT,
         why="unprivileged, a deleted file has no writer to observe")
    case("an autonomous process renames a committed file (no write)",
         [("agent", "rename", area + "agent-old.json", area + "agent-new.json"),
          ("judge", area + "agent-new.json", "write", "drop"),
          ("judge", area + "agent-old.json", "delete", "drop")],
         setup={area + "agent-old.json": _doc(kept=True)}, modes=EXACT,
         why="unprivileged, a rename without a write has no writer to observe")

CASES = _cases
