"""``gitsieve`` command line.

- ``run``, ``init``, ``release``, ``bench``, ``test``, ``helper``: here.
- ``agent`` and ``mark``: :mod:`gitsieve.common.agent.command`.
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
from gitsieve.common.git.head import checked_out_branch
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
        rules.RuleSet.load(config.patterns_file, config.workspace)
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


def warn_of_held_start(config: config_mod.Config) -> None:
    """One line for each setting that keeps what gitsieve would commit local or held, as it
    starts, rather than a silent hold found later in ``gitsieve status``."""
    log = logging.getLogger(__name__)
    if config.remote:
        remotes = gateway.Git(config.workspace).text("remote").split()
        if config.remote not in remotes:
            log.warning("remote %r is not configured in %s: commits stay local until it is",
                        config.remote, config.workspace)
    try:
        branch = checked_out_branch(config.git_dir)
    except OSError:
        return  # HEAD mid-rewrite: the executor's own check reports a wrong branch
    if config.branch and branch != config.branch:
        shown = f"branch {branch!r} is" if branch else "a detached HEAD is"
        log.warning("%s checked out, but [git] branch is %r: changes are held until %r is "
                    "checked out (set [git] branch = \"\" to commit on any branch)",
                    shown, config.branch, config.branch)


def cmd_run(args) -> int:
    from gitsieve.common.actor.base import setup_logging
    from gitsieve.common.tools.runner import AlreadyRunning, Runner, marked, reexec_marked
    if not marked():
        # Re-executed with the marks before anything else is read (the config, the rules,
        # the allowlist): once, by the process that runs, not twice (0.1 s of every start).
        try:
            root, _ = gateway.discover(Path(config_mod.workspace_argument(args)))
        except gateway.NotARepository:
            root = None  # loading the config says why, below
        if root is not None:
            reexec_marked(args.argv, root)
    config = load_config(args)
    validate_rules(config)
    validate_guard(config)
    try:
        config_mod.prepare_runtime_dir(config)
    except config_mod.RuntimeDirError as exc:
        raise UsageError(str(exc)) from None
    setup_logging(config.log_level, "gitsieve")
    for warning in config_mod.start_warnings(config):
        logging.getLogger(__name__).warning("%s", warning)
    warn_of_held_start(config)
    runner = Runner(config)
    try:
        return runner.run()
    except AlreadyRunning as exc:
        raise UsageError(str(exc)) from None


def cmd_init(args) -> int:
    from gitsieve.common.judge import rules
    try:
        root, git_dir = gateway.discover(Path(args.directory or os.getcwd()))
    except gateway.NotARepository as exc:
        raise UsageError(str(exc)) from None
    profile = None if args.profile == "default" else args.profile
    try:
        branch = checked_out_branch(git_dir)
    except OSError:
        branch = None
    chosen = {"branch": branch} if branch else {}
    files = ((config_mod.default_config_path(root), schema.render_toml(profile, chosen)),
             (root / PATTERNS_PATH, rules.DEFAULT_PATTERNS))
    for path, _ in files:  # before writing either: never half an init
        if path.exists() and not path.is_file():
            raise UsageError(f"{path} exists and is not a file (a directory?): move it away "
                             f"for gitsieve init to write its file there")
    for path, text in files:
        if path.exists() and not args.force:
            print(f"kept existing {path} (use --force to overwrite)")
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
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
        ReleaseStore(config.runtime_dir).add(released)
    except GuardStoreError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_bench(args) -> int:
    from gitsieve.common.tools import bench, bench_git
    if args.agent:
        return cmd_bench_agent(args)
    if args.guard:
        from gitsieve.common.tools import bench_guard
        return bench_guard.run_guard(edits=args.edits, debounce=args.debounce,
                                     files=args.files or 10_000)
    if args.dirty < 0 or args.burst < 0:
        raise UsageError("--dirty and --burst take a number of files, at least 1")
    if args.dirty and args.burst:
        raise UsageError("--dirty and --burst are separate scenarios: give one")
    if args.dirty or args.burst:
        return bench_git.run_dirty(args.dirty or args.burst, args.repeats or 3,
                                   burst=bool(args.burst))
    if args.tree:
        return bench_git.run_tree(args.tree, edits=min(args.edits, 20), debounce=args.debounce)
    if args.large:
        return bench_git.run_large(args.large)
    if args.new_files and args.storm is None:
        raise UsageError("--new-files goes with --storm RATE")
    if args.storm is not None:
        return bench.storm(args.storm, seconds=args.seconds, files=args.files or 200,
                           debounce=args.debounce, new=args.new_files)
    if args.idle is not None:
        return bench.idle(args.idle, files=args.files or 500, spawn_rate=args.spawns)
    return bench.run(edits=args.edits, debounce=args.debounce, churn=not args.no_churn,
                     rest=args.rest)


def cmd_bench_agent(args) -> int:
    from gitsieve.common.tools import bench
    if args.root is not None and not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    return bench.run_agent(args.repeats or 5, args.files or 10_000, args.megabytes, args.root)


def cmd_test(args) -> int:
    from gitsieve.common.tools import accuracy
    return accuracy.run(args.mode, args.json, args.verbose, args.helper_socket)


def cmd_helper(args) -> int:
    from gitsieve.common.helper import server
    if os.geteuid() != 0:
        raise UsageError(server.ROOT_ONLY)
    return server.run(args)


def cmd_agent(args) -> int:
    from gitsieve.common.agent import command
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    return command.agent(args, argv, args.grace, args.verbose)


def cmd_mark(args) -> int:
    from gitsieve.common.agent import command
    return command.mark(args, args.paths)


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
    bench.add_argument("--rest", type=float, default=60.0,
                       help="then seconds without edits before measuring PSS (default 60)")
    bench.add_argument("--storm", type=float, metavar="RATE",
                       help="an autonomous process rewrites files at RATE writes/s while a "
                            "person edits: latency, recovery, RSS, CPU, overflows")
    bench.add_argument("--new-files", action="store_true",
                       help="--storm: the autonomous process writes a new file each time "
                            "(a burst that unprivileged attribution cannot name)")
    bench.add_argument("--seconds", type=float, default=10.0,
                       help="how long the storm lasts (default 10)")
    bench.add_argument("--idle", type=float, metavar="SECONDS",
                       help="CPU and wakeups of an untouched workspace while the machine "
                            "writes elsewhere")
    bench.add_argument("--spawns", type=float, default=0.0, metavar="RATE",
                       help="--idle: the other process also starts RATE short processes a "
                            "second (a busy machine; exact attribution follows every one)")
    bench.add_argument("--files", type=int, default=0,
                       help="files in the workspace (storm: 200, idle: 500) or written per "
                            "run (agent, guard: 10000)")
    bench.add_argument("--dirty", type=int, default=0, metavar="N",
                       help="scenario: N untracked files at start; time until all are on the "
                            "remote, against git add -A && git commit && git push")
    bench.add_argument("--burst", type=int, default=0, metavar="N",
                       help="scenario: N new files written while gitsieve runs (a person's "
                            "unpack or build); time from the first until all are on the "
                            "remote, against git add -A && git commit && git push")
    bench.add_argument("--tree", type=int, default=0, metavar="N",
                       help="scenario: edits on a committed tree of N files; per-edit time "
                            "beyond the debounce, against git add && commit and git push")
    bench.add_argument("--large", type=int, default=0, metavar="MB",
                       help="scenario: one file of MB random bytes; executor RSS and control "
                            "latency while it is committed and pushed")
    bench.add_argument("--guard", action="store_true",
                       help="the guard's cost instead: per file scanned, its share of "
                            "edit-to-commit latency, a dirty start with and without it "
                            "(--files: 10000)")
    bench.set_defaults(func=cmd_bench)
    bench.add_argument("--agent", action="store_true",
                       help="instead: what gitsieve agent costs the processes it wraps")
    bench.add_argument("--repeats", type=int, default=0,
                       help="--agent: interleaved bare/wrapped runs (default 5); --dirty, "
                            "--burst: alternating floor and gitsieve runs (default 3)")
    bench.add_argument("--megabytes", type=int, default=100,
                       help="--agent: 1 MB files written per run (default 100)")
    bench.add_argument("--root", help="--agent: where the files go (default: the temp "
                                      "directory; /dev/shm shows the cost without a disk)")

    release = sub.add_parser(
        "release", help="let a path the guard holds (a secret, too large) be committed and "
                        "pushed as it is now, once")
    release.add_argument("paths", nargs="+", metavar="PATH",
                         help="file path (absolute, or relative to here or to the workspace)")
    config_mod.add_location_arguments(release)
    release.set_defaults(func=cmd_release)

    test = sub.add_parser("test", help="measure L1-L3 accuracy on the labelled corpus")
    test.add_argument("--mode", choices=("fanotify", "helper", "psutil", "agent", "both", "all"),
                      default="all", help="attribution modes to measure; 'both': fanotify "
                      "and psutil; 'agent': psutil with the simulated agent run under "
                      "gitsieve agent; 'all' (default): fanotify, helper, psutil and agent")
    test.add_argument("--helper-socket", default="/run/gitsieve/helper.sock",
                      help="helper mode when not root: the running helper's socket (as "
                           "root, a temporary helper on a private socket is started)")
    test.add_argument("--json", action="store_true")
    test.add_argument("--verbose", action="store_true", help="list excluded cases")
    test.set_defaults(func=cmd_test)

    helper = sub.add_parser("helper", help="serve exact attribution to unprivileged gitsieve "
                                           "instances (run as root; see "
                                           "scripts/gitsieve-helper.service)")
    from gitsieve.common.helper import server as helper_server
    helper_server.add_arguments(helper)
    helper.set_defaults(func=cmd_helper)
    agent = sub.add_parser(
        "agent", usage="gitsieve agent [--workspace DIR] -- CMD [ARGS...]",
        help="run CMD so that every change it or a descendant makes is known as the "
             "system's (no privilege needed)")
    config_mod.add_location_arguments(agent)
    agent.add_argument("--grace", type=float, default=2.0,
                       help="seconds between SIGTERM and SIGKILL for descendants left when "
                            "CMD ends (default 2)")
    agent.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging, and the supervisor's counters at the end")
    agent.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    agent.set_defaults(func=cmd_agent)

    mark = sub.add_parser("mark", help="declare the current versions of paths the system's "
                                       "(for an agent's post-write hook)")
    config_mod.add_location_arguments(mark)
    mark.add_argument("--system", action="store_true", required=True,
                      help="the paths' current versions are the system's")
    mark.add_argument("paths", nargs="+", metavar="PATH")
    mark.set_defaults(func=cmd_mark)

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
    args.argv = argv
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
