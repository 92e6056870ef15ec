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
import sys
import time
from datetime import datetime

import zmq

from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.gateway import Git, GitError
from gitsieve.common.judge.learning import LearnedStore
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import WAITS_ON_A_PERSON, Hold
from gitsieve.common.protocol.trail import as_dict, describe

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3
# Holds the executor keeps on one path for its own reason (see CommitResult.held_paths).
PATH_HOLDS = frozenset({Hold.SECRET, Hold.OVERSIZED})
LAYER_PREFIXES = {"l1": "L1", "l2": "L2", "l3": "L3"}


class CtlError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _not_running(config) -> CtlError:
    return CtlError(f"gitsieve is not running on {config.workspace} (no actor answered on "
                    f"{config.endpoints.ipc_dir}); start it with `gitsieve run`",
                    EXIT_UNREACHABLE)


def ask(config, actor_id: str, command: str, args: dict | None = None,
        timeout: float = 2.0) -> dict:
    """One control command; unreachable -> exit 1, an actor's error -> exit 3."""
    try:
        reply = control.request(config, actor_id, command, args, timeout=timeout)
    except control.Unreachable:
        if not control.known_actors(config):
            raise _not_running(config) from None
        raise CtlError(f"the {actor_id} actor did not answer on "
                       f"{config.endpoints.control(actor_id)}; check `actorctl status` and "
                       f"the gitsieve log", EXIT_UNREACHABLE) from None
    if not reply.ok:
        raise CtlError(f"{actor_id}: {reply.error}", EXIT_DAEMON)
    return reply.data


def all_statuses(config, timeout: float = 1.0) -> list[dict]:
    actors = []
    for actor_id in control.known_actors(config):
        try:
            reply = control.request(config, actor_id, "status", timeout=timeout)
        except control.Unreachable:
            actors.append({"name": actor_id, "pid": None, "state": "unreachable"})
            continue
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
        health = data.get("health")
        if health:
            verdict = "ok" if health.get("ok") else "NOT OK: " + "; ".join(health.get("reasons", []))
            lines.append(f"health: {verdict}")
        executor = next((a for a in data["actors"] if a["name"] == "executor"), {})
        for hold in executor.get("path_holds") or ():
            lines.append(f"held {hold['path']}: {hold['held_reason']}")
        if executor.get("push_held"):
            lines.append(executor["push_held"])
        return "\n".join(lines)


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
        lines.append(f"  change: {decision['kind']} seq {decision['seq']} observed "
                     f"{_clock(decision['observed'])}, decided {_clock(decision['received'])}")
        for step in decision["trail"]:
            lines.append(f"  {step_text(step)}")
        if not decision["commit"]:
            lines.append(f"  => not committed ({decision['action']})")
        elif decision["pending"]:
            lines.append(f"  => debouncing: quiet period {decision['quiet']}s, due in "
                         f"{decision['due_in']}s")
        else:
            lines.append(f"  => released to the executor at {_clock(decision['batched'])} "
                         f"(batch {decision['batch_id']}) after a {decision['quiet']}s quiet "
                         f"period")
        if decision.get("stale_dropped"):
            lines.append(f"  ({decision['stale_dropped']} older verdicts arrived late and "
                         f"were dropped)")
        executed = data["executor"] or {}
        if executed.get("held"):
            lines.append(f"  held by the executor: {executed['held_reason']}")
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
                try:
                    decision = messages.decode(feed.recv())
                except messages.BadMessage as exc:
                    print(f"actorctl: skipped a bad frame: {exc}", file=sys.stderr)
                    continue
                if not isinstance(decision, Decision):
                    continue
                shown += 1
                if args.json:
                    print(json.dumps({"path": decision.path, "kind": decision.kind,
                                      "seq": decision.seq, "epoch": decision.epoch,
                                      "observed": decision.observed,
                                      "commit": decision.commit, "action": decision.action,
                                      "trail": [as_dict(step) for step in decision.trail]}),
                          flush=True)
                else:
                    print(decision_line(decision), flush=True)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            feed.close(linger=0)
        return EXIT_OK


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
        while True:
            ask(config, "debouncer", "flush")
            report = self.check(config, after)
            idle = report.pop("idle")
            if report["ok"]:
                break
            # Only a person ends the executor's hold, or every path's own hold.
            stuck = idle and (report["executor_hold"] in WAITS_ON_A_PERSON or (
                report["held"] and not report["push_pending"]
                and all(item.get("hold") in WAITS_ON_A_PERSON for item in report["held"])))
            if stuck or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        report["waited"] = round(time.monotonic() - started, 3)
        report["head"] = Git(config.workspace).head()
        return report

    @staticmethod
    def check(config, after: tuple) -> dict:
        """One look at the pipeline and at ``git status``."""
        router = ask(config, "router", "status")
        debouncer = ask(config, "debouncer", "status")
        executor = ask(config, "executor", "status")
        try:
            dirty = [p for p in Git(config.workspace).dirty_paths() if not p.endswith("/")]
        except GitError as exc:
            raise CtlError(f"git status failed: {exc}", EXIT_DAEMON) from None
        decided = ask(config, "debouncer", "explain", {"paths": dirty})["paths"] if dirty else {}
        executed = ask(config, "executor", "explain", {"paths": dirty})["paths"] if dirty else {}
        held, skipped = [], []
        for path in dirty:
            record = decided.get(path)
            execution = executed.get(path) or {}
            if execution.get("held") and execution.get("hold") in PATH_HOLDS:
                # Held for its own reason (a secret, too large): the executor keeps it
                # whatever a later decision says, until the reason clears.
                held.append({"path": path,
                             "reason": f"held by the executor: {execution['held_reason']}",
                             "hold": execution["hold"]})
            elif record is None or (record["epoch"], record["seq"]) <= after:
                held.append({"path": path, "reason": "not decided yet (still in the pipeline)"})
            elif not record["commit"]:
                last = record["trail"][-1] if record["trail"] else {}
                skipped.append({"path": path, "action": record["action"],
                                "reason": step_text(last) if last else record["action"]})
            elif execution.get("held"):
                held.append({"path": path,
                             "reason": f"held by the executor: {execution['held_reason']}",
                             "hold": execution.get("hold")})
            elif record["pending"]:
                held.append({"path": path, "reason": f"debouncing (due in {record['due_in']}s)"})
            else:
                held.append({"path": path, "reason": "released to the executor, not committed "
                                                     "yet (a newer change may be in flight)"})
        push_pending = bool(executor.get("push_pending"))
        idle = (not router.get("queue") and not debouncer.get("queue")
                and not debouncer.get("backlog_batches"))
        ok = idle and not held and not executor.get("held") and not push_pending
        hold = executor.get("hold")
        return {"ok": ok, "idle": idle, "held": held, "not_synced_by_decision": skipped,
                "push_pending": push_pending,
                "executor_hold": None if hold in (None, Hold.NOTHING) else hold,
                "executor_reason": "" if hold in (None, Hold.NOTHING)
                else executor.get("held_reason", "")}

    def exit_code(self, data: dict) -> int:
        return EXIT_OK if data["ok"] else EXIT_DAEMON

    def render(self, data: dict) -> str:
        lines = []
        if data["ok"]:
            lines.append(f"flushed in {data['waited']}s: every change is committed"
                         f"{'' if data['push_pending'] else ' and pushed'} "
                         f"(HEAD {(data['head'] or '-')[:12]})")
        else:
            lines.append(f"not flushed after {data['waited']}s:")
            for item in data["held"]:
                lines.append(f"  held {item['path']}: {item['reason']}")
            if data["push_pending"]:
                lines.append(f"  push pending: {data['executor_reason']}")
        for item in data["not_synced_by_decision"]:
            lines.append(f"  not synced by decision: {item['path']}: {item['reason']}")
        return "\n".join(lines)


class Learned(Command):
    name = "learned"
    help = "list learned BLOCK paths, or forget one (--forget PATH) or all (--all)"

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--forget", metavar="PATH", help="unlearn one path")
        group.add_argument("--all", action="store_true", help="unlearn every path")

    def execute(self, config, args) -> dict:
        """Through the running debouncer (the learned file's single writer); with gitsieve
        stopped, on the file itself."""
        forgetting = args.forget is not None or args.all
        path = workspace_path(config, args.forget) if args.forget is not None else None
        running = "debouncer" in control.known_actors(config)
        if running and not forgetting:
            return {**ask(config, "debouncer", "learned"), "source": "running debouncer"}
        if running:
            forgotten = ask(config, "debouncer", "forget", {"path": path}).get("forgotten")
        else:
            store = LearnedStore(config.learned_file)
            learned = store.load()
            if not forgetting:
                return {"learned": [{"path": p, **e} for p, e in sorted(learned.items())],
                        "counting": {}, "source": str(config.learned_file)}
            forgotten = bool(learned) if path is None else path in learned
            if forgotten:
                store.save({} if path is None else
                           {p: e for p, e in learned.items() if p != path})
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


def build_parser(prog: str = "actorctl") -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog=prog, parents=[common],
                                     description="Introspect a running gitsieve.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in COMMANDS.items():
        command = cls()
        sub_parser = sub.add_parser(name, help=command.help, parents=[common])
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(command_object=command)
    return parser


def main(argv: list[str] | None = None, prog: str = "actorctl") -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    args.json = getattr(args, "json", False)
    try:
        config = config_mod.load_from_arguments(args)
    except config_mod.ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command: Command = args.command_object
    try:
        return command.run(config, args)
    except CtlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
