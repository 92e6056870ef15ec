"""``gitsieve`` command line.

- ``run``, ``init``, ``release``, ``bench``, ``test``: here.
- ``status``, ``explain``, ``flush``, ``learned``, ``pause``, ``resume``, ``stats`` and
  ``debug`` (= ``tail``): the actorctl commands (:mod:`.ctl`), one implementation each.

Bad input (not a repository, invalid config, bad rule, a refused runtime directory) prints
one line and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gitsieve.common import config as config_mod
from gitsieve.common.config import schema
from gitsieve.common.git import gateway
from gitsieve.common.tools.resources import ResourceMissing

# gitsieve subcommands that are actorctl's: {gitsieve name: actorctl command}
CTL_COMMANDS = {"status": "status", "explain": "explain", "flush": "flush",
                "learned": "learned", "pause": "pause", "resume": "resume", "stats": "stats",
                "debug": "tail"}
PATTERNS_PATH = ".claude/sync-filter/system-patterns.conf"


class UsageError(Exception):
    """Bad input from the user: one line, exit 2."""


def load_config(args) -> config_mod.Config:
    try:
        return config_mod.load_from_arguments(args)
    except config_mod.ConfigError as exc:
        raise UsageError(str(exc)) from None


def validate_rules(config: config_mod.Config) -> None:
    from gitsieve.common.judge import rules
    try:
        rules.RuleSet.load(config.patterns_file)
    except rules.RulesError as exc:
        raise UsageError(str(exc)) from None


def validate_guard(config: config_mod.Config) -> None:
    """[guard] allowlist_file inside the workspace, and every line of it valid."""
    from gitsieve.common.judge.guard.allowlist import AllowlistError
    from gitsieve.common.judge.guard.gate import allowlist_path, read_allowlist
    try:
        path = allowlist_path(config)
        if path is not None:
            read_allowlist(path, config.workspace)
    except ValueError as exc:  # AllowlistError included: every bad line, file:line: reason
        problems = exc.problems if isinstance(exc, AllowlistError) else (str(exc),)
        raise UsageError("; ".join(problems)) from None


def cmd_run(args) -> int:
    from gitsieve.common.actor.base import setup_logging
    from gitsieve.common.tools.runner import AlreadyRunning, Runner
    config = load_config(args)
    validate_rules(config)
    validate_guard(config)
    try:
        config_mod.prepare_runtime_dir(config)
    except config_mod.RuntimeDirError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(config.log_level, "gitsieve")
    if config.remote:
        remotes = gateway.Git(config.workspace).text("remote").split()
        if config.remote not in remotes:
            logging.getLogger(__name__).warning(
                "remote %r is not configured in %s: commits stay local until it is",
                config.remote, config.workspace)
    runner = Runner(config, getattr(args, "config", None))
    try:
        return runner.run()
    except AlreadyRunning as exc:
        raise UsageError(str(exc)) from None


def cmd_init(args) -> int:
    from gitsieve.common.judge import rules
    try:
        root, _ = gateway.discover(Path(args.directory or os.getcwd()))
    except gateway.NotARepository as exc:
        raise UsageError(str(exc)) from None
    profile = None if args.profile == "default" else args.profile
    for path, text in ((config_mod.default_config_path(root), schema.render_toml(profile)),
                       (root / PATTERNS_PATH, rules.DEFAULT_PATTERNS)):
        if path.exists() and not args.force:
            print(f"kept existing {path} (use --force to overwrite)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def cmd_release(args) -> int:
    """Record the current versions of PATHs as released: the guard lets exactly that content
    be committed and pushed (gitsieve running or not); a later change is checked again."""
    from gitsieve.common.judge.guard.gate import versions_to_release
    from gitsieve.common.judge.guard.store import GuardStoreError, ReleaseStore
    from gitsieve.common.tools.ctl import CtlError, workspace_path
    config = load_config(args)
    try:
        config_mod.prepare_runtime_dir(config)
    except config_mod.RuntimeDirError as exc:
        raise UsageError(str(exc)) from None
    git = gateway.Git(config.workspace)
    released: dict[str, str] = {}
    for text in args.paths:
        try:
            path = workspace_path(config, text)
        except CtlError as exc:
            raise UsageError(str(exc)) from None
        try:
            versions = versions_to_release(config, git, path)
        except gateway.GitError as exc:
            raise UsageError(f"{text}: git failed: {exc}") from None
        if not versions:
            raise UsageError(f"{text}: nothing to release: no such file, and no commit "
                             "waiting to be pushed has it")
        released.update(versions)
        shown = ", ".join(oid[:10] for oid in versions)
        print(f"released {path} ({len(versions)} version(s): {shown}): that content is "
              "committed and pushed as it is; a later change is checked again")
    try:
        ReleaseStore(config.runtime_dir, config.workspace).add(released)
    except GuardStoreError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_bench(args) -> int:
    from gitsieve.common.tools import bench
    if args.guard:
        return bench.run_guard(edits=args.edits, debounce=args.debounce, files=args.files)
    return bench.run(edits=args.edits, debounce=args.debounce, churn=not args.no_churn)


def cmd_test(args) -> int:
    from gitsieve.common.tools import accuracy
    return accuracy.run(args.mode, args.json, args.verbose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitsieve",
        description="Commit and push a person's edits; never an autonomous process's churn.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start every actor on a workspace (Ctrl-C stops)")
    config_mod.add_location_arguments(run)
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write a commented config and rules file")
    init.add_argument("directory", nargs="?", help="the git work tree (default: here)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.add_argument("--profile", choices=schema.PROFILES, default="default",
                      help="'default': sync within a second or two; 'conservative': the "
                           "original design's quiet periods and limits (30 s, 10 commits "
                           "an hour, 300 s between commits)")
    init.set_defaults(func=cmd_init)

    bench = sub.add_parser("bench", help="measure edit-to-commit latency and actor memory")
    bench.add_argument("--edits", type=int, default=60, help="edits to time (default 60)")
    bench.add_argument("--debounce", type=float, default=0.5,
                       help="quiet period for the edited paths, seconds (default 0.5)")
    bench.add_argument("--no-churn", action="store_true",
                       help="without the simulated autonomous process")
    bench.add_argument("--guard", action="store_true",
                       help="the guard's cost instead: per file scanned, its share of "
                            "edit-to-commit latency, a dirty start with and without it")
    bench.add_argument("--files", type=int, default=10_000,
                       help="files of the --guard dirty start (default 10000)")
    bench.set_defaults(func=cmd_bench)

    release = sub.add_parser(
        "release", help="let a path the guard holds (a secret, too large) be committed and "
                        "pushed as it is now, once")
    release.add_argument("paths", nargs="+", metavar="PATH",
                         help="file path (absolute, or relative to here or to the workspace)")
    config_mod.add_location_arguments(release)
    release.set_defaults(func=cmd_release)

    test = sub.add_parser("test", help="measure L1-L3 accuracy on the labelled corpus")
    test.add_argument("--mode", choices=("fanotify", "psutil", "both"), default="both")
    test.add_argument("--json", action="store_true")
    test.add_argument("--verbose", action="store_true", help="list excluded cases")
    test.set_defaults(func=cmd_test)

    for name, command in CTL_COMMANDS.items():
        sub.add_parser(name, add_help=False,
                       help=f"actorctl {command} (see gitsieve {name} --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CTL_COMMANDS:
        from gitsieve.common.tools import ctl
        return ctl.main([CTL_COMMANDS[argv[0]], *argv[1:]], prog=f"gitsieve {argv[0]}")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"gitsieve: {exc}", file=sys.stderr)
        return 2
    except ResourceMissing as exc:
        print(f"gitsieve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
