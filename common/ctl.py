"""``actorctl``: ask a running gitsieve what it is doing.

Each command is one class (after circus): ``name``, ``help``, ``add_arguments``,
``execute(config, args) -> data`` and ``render(data) -> str``.
Exit codes: 0 ok, 1 gitsieve not reachable, 2 usage, 3 error reported by an actor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common import config as config_mod
from common import control

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3


class CtlError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _not_running(config) -> CtlError:
    return CtlError(f"gitsieve is not running on {config.workspace} (no actor answered on "
                    f"{config.endpoints.ipc_dir}); start it with `gitsieve run`",
                    EXIT_UNREACHABLE)


class Command:
    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Command-specific arguments."""

    def execute(self, config, args) -> dict:
        raise CtlError(f"{self.name}: not a command", EXIT_USAGE)

    def render(self, data: dict) -> str:
        return json.dumps(data, indent=2, sort_keys=True)


class Status(Command):
    name = "status"
    help = "every actor: pid, state, uptime, messages, errors"

    def execute(self, config, args) -> dict:
        actors = []
        for actor_id in control.known_actors(config):
            try:
                reply = control.request(config, actor_id, "status", timeout=1.0)
            except control.Unreachable:
                actors.append({"name": actor_id, "pid": None, "state": "unreachable"})
                continue
            if not reply.ok:
                raise CtlError(f"{actor_id}: {reply.error}", EXIT_DAEMON)
            actors.append(reply.data)
        if not any(a["state"] != "unreachable" for a in actors):
            raise _not_running(config)
        health = next((a.get("health") for a in actors if a["name"] == "health"), None)
        return {"workspace": str(config.workspace), "actors": actors, "health": health}

    def render(self, data: dict) -> str:
        lines = [f"gitsieve on {data['workspace']}",
                 f"{'ACTOR':<18}{'PID':>8}  {'STATE':<12}{'UPTIME':>9}{'IN':>8}{'OUT':>8}"
                 f"{'BAD':>5}{'ERR':>5}  LAST ERROR"]
        for actor in data["actors"]:
            if actor["state"] == "unreachable":
                lines.append(f"{actor['name']:<18}{'-':>8}  unreachable")
                continue
            lines.append(
                f"{actor['name']:<18}{actor['pid']:>8}  {actor['state']:<12}"
                f"{actor['uptime']:>8.0f}s{actor['messages_in']:>8}{actor['messages_out']:>8}"
                f"{actor['bad_frames']:>5}{actor['errors']:>5}  {actor['last_error'][:60]}")
        health = data.get("health")
        if health:
            verdict = "ok" if health.get("ok") else "NOT OK: " + "; ".join(health.get("reasons", []))
            lines.append(f"health: {verdict}")
        return "\n".join(lines)


COMMANDS = {cls.name: cls for cls in (Status,)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actorctl", description="Introspect a running gitsieve.")
    parser.add_argument("--workspace", default=os.environ.get("GITSIEVE_WORKSPACE"),
                        help="the git work tree (default: current directory)")
    parser.add_argument("--config", default=os.environ.get("GITSIEVE_CONFIG") or None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls in COMMANDS.items():
        command = cls()
        sub_parser = sub.add_parser(name, help=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(command_object=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        config = config_mod.load(args.workspace or os.getcwd(), args.config)
    except config_mod.ConfigError as exc:
        print(f"actorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command: Command = args.command_object
    try:
        data = command.execute(config, args)
    except CtlError as exc:
        print(f"actorctl: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else command.render(data))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
