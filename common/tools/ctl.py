"""``actorctl``: ask a running gitsieve what it is doing.

Each command is one class (after circus): ``name``, ``help``, ``add_arguments``,
``execute(config, args) -> data`` and ``render(data) -> str``; a command that streams
(``tail``) overrides ``run``.  Commands: status, stats, explain, tail, pause, resume, flush,
learned.  Exit codes: 0 ok, 1 gitsieve not reachable, 2 usage, 3 error reported by an actor
(or, for ``flush``, paths still held).  ``gitsieve status|learned|debug|...`` run these same
commands (``debug`` is ``tail``).
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from datetime import datetime
from pathlib import Path

import zmq

from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.gateway import Git, GitError
from gitsieve.common.judge.learning import LearnedStore
from gitsieve.common.judge.loop import LOOPS_FILE
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import WAITS_ON_A_PERSON, Hold, render
from gitsieve.common.protocol.trail import as_dict, describe

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3
STUCK_SETTLE = 0.5  # seconds a hold only a person ends must last before flush reports it
LAYER_PREFIXES = {"l1": "L1", "l2": "L2", "l3": "L3"}


class CtlError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _owner_name(path: Path) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "someone else"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def access_problem(path: Path) -> str:
    """'' or "permission denied: DIR (owned by NAME)" for the first directory on the way to
    ``path`` (``path`` included) this user may not enter, or a ``.git`` it may not read."""
    path = Path(os.path.abspath(path))
    for directory in (*reversed(path.parents), path, path / ".git"):
        if directory.name == ".git" and not directory.exists():
            break
        if os.path.isdir(directory) and not os.access(directory, os.X_OK | (
                os.R_OK if directory.name == ".git" else 0)):
            return f"permission denied: {directory} (owned by {_owner_name(directory)})"
    return ""


def _not_running(config) -> CtlError:
    for directory in (config.runtime_dir, Path(config.endpoints.ipc_dir)):
        problem = access_problem(directory)
        if problem:
            return CtlError(f"{problem}; its gitsieve is not yours to ask: run this as "
                            f"{_owner_name(directory)} (or root)", EXIT_UNREACHABLE)
    return CtlError(f"gitsieve is not running on {config.workspace} (no actor answered on "
                    f"{config.endpoints.ipc_dir}); start it with `gitsieve run`",
                    EXIT_UNREACHABLE)


def _unreadable(actor_id: str, command: str, exc: messages.BadMessage) -> CtlError:
    return CtlError(f"the {actor_id} actor's answer to {command} could not be read: {exc}",
                    EXIT_DAEMON)


def ask(config, actor_id: str, command: str, args: dict | None = None,
        timeout: float = 2.0) -> dict:
    """One control command; unreachable -> exit 1, an actor's error or an answer that
    cannot be decoded -> exit 3."""
    try:
        reply = control.request(config, actor_id, command, args, timeout=timeout,
                                listening=True)
    except control.Unreachable:
        if not control.any_listening(config):
            raise _not_running(config) from None
        raise CtlError(f"the {actor_id} actor did not answer on "
                       f"{config.endpoints.control(actor_id)}; check `actorctl status` and "
                       f"the gitsieve log", EXIT_UNREACHABLE) from None
    except messages.BadMessage as exc:
        raise _unreadable(actor_id, command, exc) from None
    if not reply.ok:
        raise CtlError(f"{actor_id}: {reply.error}", EXIT_DAEMON)
    return reply.data


def path_chunks(paths: list[str]) -> list[list[str]]:
    """``paths`` in runs one `explain` request may name (the protocol's limits)."""
    chunks, chunk, size = [], [], 0
    for path in paths:
        length = len(path.encode("utf-8", "surrogateescape"))
        if chunk and (len(chunk) >= messages.MAX_EXPLAINED_PATHS
                      or size + length > messages.MAX_EXPLAINED_PATH_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(path)
        size += length
    if chunk:
        chunks.append(chunk)
    return chunks


def explain_all(config, actor_id: str, paths: list[str]) -> dict:
    """``actor_id``'s `explain` records of every path in ``paths``, asked in chunks."""
    found = {}
    for chunk in path_chunks(paths):
        found.update(ask(config, actor_id, "explain", {"paths": chunk})["paths"])
    return found


def all_statuses(config, timeout: float = 1.0) -> list[dict]:
    actors = []
    for actor_id in control.known_actors(config):
        try:
            reply = control.request(config, actor_id, "status", timeout=timeout,
                                    listening=True)
        except control.Unreachable:
            actors.append({"name": actor_id, "pid": None, "state": "unreachable"})
            continue
        except messages.BadMessage as exc:
            raise _unreadable(actor_id, "status", exc) from None
        if not reply.ok:
            raise CtlError(f"{actor_id}: {reply.error}", EXIT_DAEMON)
        actors.append(reply.data)
    if not any(a["state"] != "unreachable" for a in actors):
        raise _not_running(config)
    return actors


def worker_queues(router: dict) -> dict[str, int]:
    """Layer worker -> changes it holds (taken from its stage queue, not yet done), as the
    router counts them from the workers' credit announcements."""
    found = {}
    for stage in (router.get("stages") or {}).values():
        for name, worker in (stage.get("workers") or {}).items():
            found[name] = worker.get("in_flight")
    return found


def workspace_path(config, text: str) -> str:
    """A path given on the command line, as the workspace-relative POSIX path actors use."""
    absolute = os.path.abspath(text)
    root = os.path.abspath(config.workspace)
    if not (absolute == root or absolute.startswith(root + os.sep)):
        # Not under the workspace from here: take it as already workspace-relative.
        absolute = os.path.join(root, text)
    rel = os.path.relpath(absolute, root).replace(os.sep, "/")
    reason = messages.bad_path_reason(rel)
    if reason or rel == ".":
        raise CtlError(f"{text}: not a path inside {config.workspace}", EXIT_USAGE)
    return rel


def _clock(moment) -> str:
    if not isinstance(moment, (int, float)):
        return "-"
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S.%f")[:-3]


def step_text(step: dict) -> str:
    """A trail step as the debouncer reports it (:func:`trail.as_dict`), for people."""
    evidence = []
    if step.get("pid"):
        evidence.append(f"pid {step['pid']}")
    if step.get("cmdline"):
        evidence.append(str(step["cmdline"]))
    if step.get("technique"):
        evidence.append(f"via {step['technique']}")
    extra = f" [{'; '.join(evidence)}]" if evidence else ""
    return (f"{step.get('layer', '?')} {step.get('verdict', '?')}: "
            f"{step.get('reason_text', '')}{extra}")


def executor_line(executor: dict) -> str:
    """The executor's holds for `status`: the paths it holds and why, and the push."""
    parts = [f"executor: {executor.get('held', 0)} held"]
    if executor.get("hold") not in (None, Hold.NOTHING):
        parts[0] += f" ({executor['held_reason']}) [{executor['hold']}]"
    own = executor.get("path_holds") or {}
    if own:
        parts.append("held paths by reason: " + ", ".join(
            f"{hold} {count}" for hold, count in sorted(own.items())))
    if executor.get("busy"):
        busy = executor["busy"]
        parts.append(f"{busy['kind']} of {busy['paths']} path(s) running for "
                     f"{busy['seconds']}s")
    if executor.get("push_hold"):
        parts.append(f"push: {executor['push_reason']} [{executor['push_hold']}]")
    elif executor.get("push_pending"):
        parts.append("push pending")
    return "; ".join(parts)


def decision_line(decision: Decision) -> str:
    trail = " -> ".join(describe(step) for step in decision.trail)
    verdict = "COMMIT" if decision.commit else "SKIP"
    return (f"{_clock(decision.observed)} {verdict:<6} {decision.kind:<6} {decision.path}  "
            f"({trail or decision.action})")


class Command:
    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Command-specific arguments."""

    def execute(self, config, args) -> dict:
        raise CtlError(f"{self.name}: not a command", EXIT_USAGE)

    def render(self, data: dict) -> str:
        return json.dumps(data, indent=2, sort_keys=True)

    def exit_code(self, data: dict) -> int:
        return EXIT_OK

    def run(self, config, args) -> int:
        data = self.execute(config, args)
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else self.render(data))
        return self.exit_code(data)


class Status(Command):
    name = "status"
    help = "every actor: pid, state, uptime, messages, queue, restarts, errors"

    def execute(self, config, args) -> dict:
        actors = all_statuses(config)
        health_actor = next((a for a in actors if a["name"] == "health"), {})
        restarts = health_actor.get("restarts") or {}
        in_flight = worker_queues(next((a for a in actors if a["name"] == "router"), {}))
        for actor in actors:
            if actor["state"] != "unreachable":
                actor["queue"] = in_flight.get(actor["name"], actor.get("queue"))
                actor["restarts"] = restarts.get(actor["name"], 0)
        return {"workspace": str(config.workspace), "actors": actors,
                "health": health_actor.get("health")}

    def render(self, data: dict) -> str:
        lines = [f"gitsieve on {data['workspace']}",
                 f"{'ACTOR':<14}{'PID':>8}  {'STATE':<10}{'UPTIME':>9}{'IN':>8}{'OUT':>8}"
                 f"{'QUEUE':>7}{'RESTARTS':>9}{'ERR':>5}  LAST ERROR"]
        for actor in data["actors"]:
            if actor["state"] == "unreachable":
                lines.append(f"{actor['name']:<14}{'-':>8}  unreachable")
                continue
            queue = "-" if actor.get("queue") is None else actor["queue"]
            lines.append(
                f"{actor['name']:<14}{actor['pid']:>8}  {actor['state']:<10}"
                f"{actor['uptime']:>8.0f}s{actor['messages_in']:>8}{actor['messages_out']:>8}"
                f"{queue:>7}{actor.get('restarts', 0):>9}{actor['errors']:>5}  "
                f"{actor['last_error'][:60]}")
        techniques = [attribution_text(actor) for actor in data["actors"]
                      if actor.get("attribution")]
        if techniques:
            lines.append("attribution: " + ", ".join(techniques))
        unwrapped = {entry["pid"]: entry["cmdline"] for actor in data["actors"]
                     for entry in actor.get("unwrapped_autonomous") or ()}
        if unwrapped:
            named = ", ".join(f"{cmdline.split(' ', 1)[0]} (pid {pid})"
                              for pid, cmdline in sorted(unwrapped.items()))
            lines.append(f"warning: autonomous processes in the workspace outside `gitsieve "
                         f"agent`: {named}; their quick writes cannot be told from yours "
                         f"here and may be committed: run them as `gitsieve agent -- CMD`, "
                         f"or start `gitsieve helper` as root")
        executor = next((a for a in data["actors"] if a["name"] == "executor"
                         and a["state"] != "unreachable"), None)
        if executor is not None:
            lines.append(executor_line(executor))
        health = data.get("health")
        if health:
            verdict = "ok" if health.get("ok") else "NOT OK: " + "; ".join(health.get("reasons", []))
            lines.append(f"health: {verdict}")
        for actor in data["actors"]:
            for held in actor.get("held_paths") or ():
                lines.append(f"held by the {actor['name']}: {held['path']}: "
                             f"{held['held_reason']}")
        return "\n".join(lines)


def attribution_text(actor: dict) -> str:
    """An L2 worker's technique, and for the helper whether it is connected now."""
    text = f"{actor['name']} {actor['attribution']}"
    if "helper_connected" in actor:
        text += " (connected)" if actor["helper_connected"] else " (helper away: UNKNOWN)"
    return text


class Stats(Command):
    name = "stats"
    help = "decisions per layer and verdict, handler latency, commits, pushes, retries"

    def execute(self, config, args) -> dict:
        actors = [a for a in all_statuses(config) if a["state"] != "unreachable"]
        layers: dict[str, dict] = {}
        latency = {}
        by_name = {}
        for actor in actors:
            by_name[actor["name"]] = actor
            layer = LAYER_PREFIXES.get(actor["name"].split("-", 1)[0])
            if layer:
                counts = layers.setdefault(layer, {})
                for key, value in actor.items():
                    if key.startswith("verdict_") and isinstance(value, int):
                        verdict = key[len("verdict_"):]
                        counts[verdict] = counts.get(verdict, 0) + value
            for message_type, summary in (actor.get("latency") or {}).items():
                if summary.get("count"):
                    latency[f"{actor['name']}:{message_type}"] = summary
        debouncer = by_name.get("debouncer", {})
        executor = by_name.get("executor", {})
        watcher = by_name.get("watcher", {})
        return {
            "layers": layers, "latency": latency,
            "debouncer": {key: debouncer.get(key) for key in
                          ("decisions_commit", "decisions_skip", "stale", "batches", "pending")},
            "executor": {key: executor.get(key) for key in
                         ("commits", "pushes", "retries", "push_retries", "rate_limit_waits",
                          "backoffs", "attempts", "held", "paused")},
            "watcher": {key: watcher.get(key) for key in
                        ("changes_sent", "overflows", "rescans", "reconciles")},
        }

    def render(self, data: dict) -> str:
        lines = ["decisions by layer:"]
        for layer, counts in sorted(data["layers"].items()):
            shown = ", ".join(f"{verdict} {count}" for verdict, count in sorted(counts.items()))
            lines.append(f"  {layer}: {shown or 'none'}")
        for part in ("debouncer", "executor", "watcher"):
            shown = ", ".join(f"{key} {value}" for key, value in data[part].items()
                              if value is not None)
            lines.append(f"{part}: {shown or 'not reachable'}")
        lines.append(f"{'HANDLER LATENCY':<36}{'COUNT':>8}{'P50 ms':>9}{'P90 ms':>9}"
                     f"{'P99 ms':>9}{'MAX ms':>9}")
        for name, summary in sorted(data["latency"].items()):
            lines.append(f"{name:<36}{summary['count']:>8}{summary['p50_ms']:>9}"
                         f"{summary['p90_ms']:>9}{summary['p99_ms']:>9}{summary['max_ms']:>9}")
        return "\n".join(lines)


class Explain(Command):
    name = "explain"
    help = "why a path was (not) committed: each layer's verdict, debounce, commit or hold"

    def add_arguments(self, parser):
        parser.add_argument("path", help="file path (absolute, or relative to here or to "
                                         "the workspace)")

    def execute(self, config, args) -> dict:
        path = workspace_path(config, args.path)
        decided = ask(config, "debouncer", "explain", {"paths": [path]})["paths"].get(path)
        executed = ask(config, "executor", "explain", {"paths": [path]})
        try:
            dirty = path in Git(config.workspace).dirty_paths()
        except GitError as exc:
            raise CtlError(f"git status failed: {exc}", EXIT_DAEMON) from None
        return {"path": path, "decision": decided, "executor": executed["paths"].get(path),
                "push_pending": executed["push_pending"], "paused": executed["paused"],
                "differs_from_head": dirty}

    def render(self, data: dict) -> str:
        lines = [f"{data['path']}: "
                 f"{'differs from HEAD' if data['differs_from_head'] else 'same as HEAD'}"]
        decision = data["decision"]
        if decision is None:
            lines.append("  no decision since gitsieve started (or it was forgotten)")
            return "\n".join(lines)
        if decision.get("forgotten"):
            lines.append(f"  => seq {decision['seq']}: {decision['note']}")
            return "\n".join(lines)
        lines.append(f"  change: {decision['kind']} seq {decision['seq']} observed "
                     f"{_clock(decision['observed'])}, decided {_clock(decision['received'])}")
        for step in decision["trail"]:
            lines.append(f"  {step_text(step)}")
        if decision.get("hold"):
            lines.append(f"  => held by the debouncer: {decision['held_reason']}")
        elif not decision["commit"]:
            lines.append(f"  => not committed ({decision['action']})")
        elif decision["pending"]:
            lines.append(f"  => debouncing: quiet period {decision['quiet']}s, due in "
                         f"{decision['due_in']}s")
            if decision.get("held_reason"):
                lines.append(f"  held: {decision['held_reason']}")
        else:
            lines.append(f"  => released to the executor at {_clock(decision['batched'])} "
                         f"(batch {decision['batch_id']}) after a {decision['quiet']}s quiet "
                         f"period")
        if decision.get("note"):
            lines.append(f"  ({decision['note']})")
        if decision.get("stale_dropped"):
            lines.append(f"  ({decision['stale_dropped']} older verdicts arrived late and "
                         f"were dropped)")
        executed = data["executor"] or {}
        if executed.get("held"):
            tag = f" [{executed['hold']}]" if executed.get("hold") else ""
            lines.append(f"  held by the executor: {executed['held_reason']}{tag}")
        elif executed.get("commit"):
            pushed = {True: "pushed", False: "not pushed yet", None: "no remote"}
            lines.append(f"  committed in {executed['commit'][:12]} at "
                         f"{_clock(executed['finished'])}, {pushed[executed.get('pushed')]}")
        elif executed.get("note"):
            lines.append(f"  executor: {executed['note']}")
        return "\n".join(lines)


class Tail(Command):
    name = "tail"
    help = "live stream of decisions (Ctrl-C stops)"

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=0,
                            help="stop after this many decisions (default: run until Ctrl-C)")
        parser.add_argument("--timeout", type=float, default=0,
                            help="stop after this many seconds (default: never)")

    def run(self, config, args) -> int:
        ask(config, "debouncer", "status")  # a clear error when nothing publishes
        context = zmq.Context.instance()
        feed = context.socket(zmq.SUB)
        feed.linger = 0
        feed.setsockopt(zmq.SUBSCRIBE, b"")
        feed.connect(config.endpoints.feed)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        shown = 0
        try:
            while not args.count or shown < args.count:
                wait = 500 if deadline is None else max(0, min(
                    500, int((deadline - time.monotonic()) * 1000)))
                if deadline is not None and wait == 0:
                    break
                if not feed.poll(wait):
                    continue
                try:  # [topic, Decision] or a bundle of them: see common.judge.feed
                    parts = messages.topic_parts(feed.recv_multipart())
                except messages.BadMessage as exc:
                    print(f"actorctl: skipped a bad frame: {exc}", file=sys.stderr)
                    continue
                for _topic, frame in parts:
                    if args.count and shown >= args.count:
                        break
                    try:
                        decision = messages.decode(frame)
                    except messages.BadMessage as exc:
                        print(f"actorctl: skipped a bad frame: {exc}", file=sys.stderr)
                        continue
                    if isinstance(decision, Decision):
                        shown += 1
                        self._show(decision, args.json)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            feed.close(linger=0)
        return EXIT_OK

    @staticmethod
    def _show(decision: Decision, as_json: bool) -> None:
        if as_json:
            print(json.dumps({"path": decision.path, "kind": decision.kind,
                              "seq": decision.seq, "epoch": decision.epoch,
                              "observed": decision.observed,
                              "commit": decision.commit, "action": decision.action,
                              "trail": [as_dict(step) for step in decision.trail]}),
                  flush=True)
        else:
            print(decision_line(decision), flush=True)


class ExecutorSwitch(Command):
    """A command the executor carries out as it is named (pause, resume)."""

    done = ""

    def execute(self, config, args) -> dict:
        return ask(config, "executor", self.name)

    def render(self, data: dict) -> str:
        return self.done.format(held=data["held"])


class Pause(ExecutorSwitch):
    name = "pause"
    help = "stop committing and pushing (edits keep being decided and are synced on resume)"
    done = "paused; {held} paths held"


class Resume(ExecutorSwitch):
    name = "resume"
    help = "commit and push again, including what was held while paused"
    done = "resumed; {held} held paths will be committed"


class Flush(Command):
    name = "flush"
    help = "barrier: wait until every change made so far is committed and pushed"

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=30.0,
                            help="seconds to wait before reporting what is held (default 30)")

    def execute(self, config, args) -> dict:
        started = time.monotonic()
        deadline = started + max(0.0, args.timeout)
        barrier = ask(config, "watcher", "reconcile", timeout=10.0)
        after = (barrier["epoch"], barrier["seq_before"])
        stuck_since = None
        while True:
            ask(config, "debouncer", "flush")
            report = self.check(config, after)
            idle, stuck = report.pop("idle"), report.pop("waits_on_a_person")
            if report["ok"]:
                break
            # "idle" cannot see a change between two actors (in a socket): only a hold that
            # lasts STUCK_SETTLE is one to stop waiting on
            stuck = idle and stuck
            stuck_since = (stuck_since or time.monotonic()) if stuck else None
            if (stuck and time.monotonic() - stuck_since >= STUCK_SETTLE) or (
                    time.monotonic() >= deadline):
                break
            time.sleep(0.1)
        report["waited"] = round(time.monotonic() - started, 3)
        return report

    @staticmethod
    def git_state(config) -> dict:
        """HEAD, the checked-out branch and the upstream (``[git] remote``/``branch``'s
        remote-tracking branch; None when there is none to compare with)."""
        git = Git(config.workspace)
        try:
            dirty = git.dirty_paths()
        except GitError as exc:
            raise CtlError(f"git status failed: {exc}", EXIT_DAEMON) from None
        code, out, _ = git.result("symbolic-ref", "-q", "HEAD")
        ref = out.decode().strip() if code == 0 else ""
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
        upstream = None
        remotes = git.result("remote")[1].decode().split()
        if config.remote and config.remote in remotes and branch:
            code, out, _ = git.result("rev-parse", "--verify", "-q",
                                      f"refs/remotes/{config.remote}/{branch}")
            upstream = out.decode().strip() if code == 0 else ""
        return {"dirty": dirty, "head": git.head(), "branch": branch, "upstream": upstream}

    @staticmethod
    def check(config, after: tuple) -> dict:
        """One look at the pipeline and at git: every dirty path is committed, decided
        against, or listed with the reason it is held (a Hold value and its text)."""
        router = ask(config, "router", "status")
        debouncer = ask(config, "debouncer", "status")
        executor = ask(config, "executor", "status")
        state = Flush.git_state(config)
        nested = [p for p in state["dirty"] if p.endswith("/")]
        dirty = [p for p in state["dirty"] if not p.endswith("/")]
        decided = explain_all(config, "debouncer", dirty)
        executed = explain_all(config, "executor", dirty)
        held, skipped = [], []
        for path in nested:  # git lists a repository inside the work tree as a directory
            held.append({"path": path, "hold": Hold.NESTED_REPOSITORY,
                         "reason": render(Hold.NESTED_REPOSITORY)})
        for path in dirty:
            record = decided.get(path)
            mine = executed.get(path) or {}
            if mine.get("held"):
                held.append({"path": path, "hold": mine.get("hold"),
                             "reason": f"held by the executor: {mine['held_reason']}"})
            elif record is None or (record["epoch"], record["seq"]) <= after:
                held.append({"path": path, "hold": None,
                             "reason": "not decided yet (still in the pipeline)"})
            elif record.get("hold"):
                held.append({"path": path, "hold": record["hold"],
                             "reason": f"held by the debouncer: {record['held_reason']}"})
            elif not record["commit"]:
                last = record["trail"][-1] if record["trail"] else {}
                skipped.append({"path": path, "action": record["action"],
                                "reason": step_text(last) if last
                                else record.get("note") or record["action"]})
            elif record["pending"]:
                held.append({"path": path, "hold": None,
                             "reason": record.get("held_reason")
                             or f"debouncing (due in {record['due_in']}s)"})
            else:
                held.append({"path": path, "hold": None,
                             "reason": "released to the executor, not committed yet (a newer "
                                       "change may be in flight)"})
        # Held paths git status cannot show (a FIFO, a file below an unreadable directory):
        # held all the same, so listed while they are there.
        listed = {item["path"] for item in held}
        for item in executor.get("held_paths") or []:
            if isinstance(item, dict) and isinstance(item.get("path"), str) \
                    and item["path"] not in listed \
                    and os.path.lexists(config.workspace / item["path"]):
                held.append({"path": item["path"], "hold": item.get("hold"),
                             "reason": f"held by the executor: {item.get('held_reason', '')}"})
        branch = None
        if config.branch and state["branch"] != config.branch:
            shown = f"on branch {state['branch']!r}" if state["branch"] else "HEAD is detached"
            branch = {"hold": Hold.BRANCH,
                      "reason": f"{shown}, configured for {config.branch!r}: nothing is "
                                f"committed or pushed until it is checked out again"}
        push = None
        if branch is None and state["upstream"] is not None and state["head"] is not None \
                and state["head"] != state["upstream"]:
            push = {"hold": executor.get("push_hold"),
                    "reason": executor.get("push_reason") or "HEAD is not on the remote yet",
                    "head": state["head"], "upstream": state["upstream"] or None}
        idle = (not router.get("queue") and not debouncer.get("queue")
                and not debouncer.get("backlog_batches") and not executor.get("busy"))
        ok = idle and not held and branch is None and push is None
        holds = [item["hold"] for item in held] + [part["hold"] for part in (branch, push)
                                                   if part is not None]
        executor_hold = executor.get("hold")
        if executor_hold in WAITS_ON_A_PERSON:
            holds += [executor_hold]  # paused, health, ... even with no dirty path left
        return {"ok": ok, "idle": idle, "held": held, "not_synced_by_decision": skipped,
                "branch": branch, "push": push, "push_pending": push is not None,
                "waits_on_a_person": bool(holds) and all(
                    hold in WAITS_ON_A_PERSON for hold in holds),
                "head": state["head"], "upstream": state["upstream"],
                "executor_hold": None if executor_hold in (None, Hold.NOTHING)
                else executor_hold,
                "executor_reason": "" if executor_hold in (None, Hold.NOTHING)
                else executor.get("held_reason", "")}

    def exit_code(self, data: dict) -> int:
        return EXIT_OK if data["ok"] else EXIT_DAEMON

    def render(self, data: dict) -> str:
        lines = []
        if data["ok"]:
            pushed = " and pushed" if data["upstream"] is not None else " (nothing to push to)"
            lines.append(f"flushed in {data['waited']}s: every change is committed{pushed} "
                         f"(HEAD {(data['head'] or '-')[:12]})")
        else:
            lines.append(f"not flushed after {data['waited']}s:")
            if data["branch"]:
                lines.append(f"  {data['branch']['reason']} [{data['branch']['hold']}]")
            for item in data["held"]:
                tag = f" [{item['hold']}]" if item["hold"] else ""
                lines.append(f"  held {item['path']}: {item['reason']}{tag}")
            if data["push"]:
                push = data["push"]
                tag = f" [{push['hold']}]" if push["hold"] else ""
                upstream = (push["upstream"] or "none")[:12]
                lines.append(f"  not pushed (HEAD {(push['head'] or '-')[:12]}, upstream "
                             f"{upstream}): {push['reason']}{tag}")
        for item in data["not_synced_by_decision"]:
            lines.append(f"  not synced by decision: {item['path']}: {item['reason']}")
        return "\n".join(lines)


class Learned(Command):
    name = "learned"
    help = ("list learned BLOCK paths and feedback-loop holds, or forget / release one "
            "(--forget PATH) or all (--all)")

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--forget", metavar="PATH", help="unlearn one path")
        group.add_argument("--all", action="store_true", help="unlearn every path")

    def execute(self, config, args) -> dict:
        """Through the running debouncer (the learned file's single writer); with gitsieve
        stopped, on the file itself."""
        forgetting = args.forget is not None or args.all
        path = workspace_path(config, args.forget) if args.forget is not None else None
        # Its socket file alone does not say: a stopped gitsieve leaves it behind.
        running = control.listening(config, "debouncer")
        if running and not forgetting:
            return {**ask(config, "debouncer", "learned"), "source": "running debouncer"}
        if running:
            forgotten = ask(config, "debouncer", "forget", {"path": path}).get("forgotten")
        else:
            stores = (LearnedStore(config.learned_file),
                      LearnedStore(config.learned_file.with_name(LOOPS_FILE)))
            learned, loops = (store.load() for store in stores)
            if not forgetting:
                return {"learned": [{"path": p, **e} for p, e in sorted(learned.items())],
                        "counting": {}, "source": str(config.learned_file),
                        "loops": [{"path": p, **e} for p, e in sorted(loops.items())]}
            forgotten = False
            for store, entries in zip(stores, (learned, loops)):
                if path is None and entries or path in entries:
                    store.save({} if path is None else
                               {p: e for p, e in entries.items() if p != path})
                    forgotten = True
        if not forgotten:
            raise CtlError(f"nothing learned for {path or 'any path'}", EXIT_DAEMON)
        return {"forgotten": path or "every path"}

    def render(self, data: dict) -> str:
        if "forgotten" in data:
            return f"forgot {data['forgotten']}"
        lines = [f"{len(data['learned'])} learned BLOCK paths"]
        for entry in data["learned"]:
            writer = entry.get("writer_cmdline")
            if isinstance(writer, (list, tuple)):
                writer = " ".join(writer)
            lines.append(f"  {entry['path']}  learned {_clock(entry.get('learned_at'))}"
                         f" from {entry.get('changes')} system changes"
                         f"{f' by {writer}' if writer else ''}")
        counting = data.get("counting") or {}
        if counting:
            lines.append(f"{len(counting)} paths being counted toward learning")
        loops = data.get("loops") or []
        if loops:
            lines.append(f"{len(loops)} paths held as feedback loops (--forget releases)")
            for entry in loops:
                lines.append(f"  {entry['path']}  held {_clock(entry.get('held_at'))} after "
                             f"{entry.get('reactions')} changes right after commits")
        return "\n".join(lines)


COMMANDS = {cls.name: cls for cls in (Status, Stats, Explain, Tail, Pause, Resume, Flush,
                                      Learned)}


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    config_mod.add_location_arguments(common)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    return common


def build_parser(prog: str = "actorctl", shown_as: dict[str, str] | None = None
                 ) -> argparse.ArgumentParser:
    """``shown_as``: a command's own name in usage lines (`gitsieve debug` runs `tail`)."""
    common = _common_options()
    parser = argparse.ArgumentParser(prog=prog, parents=[common],
                                     description="Introspect a running gitsieve.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in COMMANDS.items():
        command = cls()
        named = {"prog": shown_as[name]} if shown_as and name in shown_as else {}
        sub_parser = sub.add_parser(name, help=command.help, parents=[common], **named)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(command_object=command)
    return parser


def main(argv: list[str] | None = None, prog: str = "actorctl") -> int:
    """``prog``: "actorctl", or "gitsieve NAME" when run as that gitsieve command."""
    shown_as = {argv[0]: prog} if argv and " " in prog else None
    parser = build_parser(prog, shown_as)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    args.json = getattr(args, "json", False)
    try:
        config = config_mod.load_from_arguments(args)
    except (config_mod.ConfigError, OSError) as exc:
        # "not a git repository" is what git says of a directory it may not read
        workspace = getattr(args, "workspace", None) or os.environ.get("GITSIEVE_WORKSPACE")
        where = Path(workspace or os.getcwd())
        problem = access_problem(where)
        if not problem and "dubious ownership" in str(exc):
            problem = f"permission denied: {where} is owned by {_owner_name(where)} ({exc})"
        print(f"{prog}: {problem or exc}", file=sys.stderr)
        return EXIT_USAGE
    command: Command = args.command_object
    try:
        return command.run(config, args)
    except CtlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
