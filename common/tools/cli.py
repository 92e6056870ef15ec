"""``gitsieve`` command line: run, init, status, bench.

Bad input (not a repository, invalid config, bad rule) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gitsieve.common import config as config_mod
from gitsieve.common.git import gateway as gitutil
from gitsieve.common.tools.resources import ResourceMissing

DEFAULT_CONFIG = '''\
# gitsieve configuration (TOML).  Every key is optional; shown are the defaults.

[filter]
# Rules file, one rule a line: ACTION:REGEX[:DESCRIPTION] (BLOCK / ALLOW / ANALYZE).
patterns_file = ".claude/sync-filter/system-patterns.conf"  # relative to the workspace
default = "ANALYZE"             # action for paths no rule matches
# Command-line regexes (re.search) of the autonomous processes whose writes are never synced.
autonomous_processes = ["claude-autonomous", "claude-.*-monitor"]
# JSON keys (at any depth) whose changes alone are not worth a commit.
volatile_keys = ["last_update", "timestamp", "session_id"]
process_cache_ttl = 30          # seconds between scans for autonomous processes

[debounce]                      # seconds of quiet before a path is committed; fractions allowed
allow = 2                       # paths an ALLOW rule matched
default = 30                    # everything else, unless a rule below matches first
rules = [ { pattern = "\\\\.claude/autonomous/.*", seconds = 300 },
          { pattern = ".*\\\\.(sh|py|js|ts)", seconds = 5 } ]
max_wait = 10                   # a path written continuously is still committed after
                                # max(its quiet period, max_wait) seconds

[limits]                        # reaching a limit delays and coalesces; nothing is dropped
max_commits_per_hour = 10
max_commits_per_day = 50
cooldown_seconds = 300          # minimum time between two commits
runaway_commits_per_hour = 30  # one path committed this often in an hour is held; 0: off

[git]
remote = "origin"               # empty: commit only, never push
branch = "main"                 # commit only while this branch is checked out; empty: any
retry_attempts = 3
retry_backoff = 2               # seconds; attempt n waits n * retry_backoff

[health]
min_free_mb = 100               # commits pause below this much free disk
interval = 2                    # seconds between health checks

[watcher]
reconcile_interval = 60         # seconds between re-reads of `git status` (0: only at start)
modify_interval = 1             # a file written without being closed is reported this often

[workers]
l2 = 2                          # process-layer workers (gitsieve run)
l3 = 2                          # content-layer workers

[runtime]
dir = ""                        # default: .git/gitsieve inside the repository
heartbeat_interval = 1
log_level = "INFO"
'''


class UsageError(Exception):
    """Bad input from the user: one line, exit 2."""


def load_config(workspace: str | None, config_file: str | None) -> config_mod.Config:
    try:
        return config_mod.load(workspace or os.getcwd(), config_file)
    except config_mod.ConfigError as exc:
        raise UsageError(str(exc)) from None


def validate_rules(config: config_mod.Config) -> None:
    from gitsieve.common.judge import rules
    try:
        rules.RuleSet.load(config.patterns_file)
    except rules.RulesError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args) -> int:
    from gitsieve.common.actor.base import setup_logging
    from gitsieve.common.tools.runner import AlreadyRunning, Runner
    config = load_config(args.workspace, args.config)
    validate_rules(config)
    setup_logging(config.log_level, "gitsieve")
    if config.remote:
        remotes = gitutil.run(config.workspace, "remote").decode().split()
        if config.remote not in remotes:
            logging.getLogger(__name__).warning(
                "remote %r is not configured in %s: commits stay local until it is",
                config.remote, config.workspace)
    runner = Runner(config, args.config)
    try:
        return runner.run()
    except AlreadyRunning as exc:
        raise UsageError(str(exc)) from None


def cmd_init(args) -> int:
    from gitsieve.common.judge import rules
    try:
        root, _ = gitutil.discover(Path(args.directory or os.getcwd()))
    except gitutil.NotARepository as exc:
        raise UsageError(str(exc)) from None
    config_path = config_mod.default_config_path(root)
    patterns_path = root / ".claude/sync-filter/system-patterns.conf"
    written = []
    for path, text in ((config_path, DEFAULT_CONFIG), (patterns_path, rules.DEFAULT_PATTERNS)):
        if path.exists() and not args.force:
            print(f"kept existing {path} (use --force to overwrite)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
        print(f"wrote {path}")
    return 0


def cmd_status(args) -> int:
    from gitsieve.common.tools import ctl
    return ctl.main(["--workspace", args.workspace or os.getcwd(),
                     *(["--config", args.config] if args.config else []),
                     *(["--json"] if args.json else []), "status"])


def cmd_bench(args) -> int:
    from gitsieve.common.tools import bench
    return bench.run(edits=args.edits, debounce=args.debounce, churn=not args.no_churn)


def _debug(argv: list[str]) -> int:
    from gitsieve.common.tools import ctl
    return ctl.debug_main(argv)


def _learned(argv: list[str]) -> int:
    from gitsieve.common.tools import learned
    return learned.learned_main(argv)


def _accuracy(argv: list[str]) -> int:
    from gitsieve.common.tools import accuracy
    return accuracy.accuracy_main(argv)


# Subcommands whose own modules parse their arguments: {name: (entry point, help)}.
DELEGATED = {
    "debug": (_debug, "live stream of decisions (actorctl tail)"),
    "learned": (_learned, "list or forget learned BLOCK paths"),
    "test": (_accuracy, "measure L1-L3 accuracy on the labelled corpus"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitsieve",
        description="Commit and push a person's edits; never an autonomous process's churn.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start every actor on a workspace (Ctrl-C stops)")
    run.add_argument("--workspace", help="the git work tree (default: current directory)")
    run.add_argument("--config", help="TOML config (default: WORKSPACE/.gitsieve.toml)")
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write a commented default config and rules file")
    init.add_argument("directory", nargs="?", help="the git work tree (default: here)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(func=cmd_init)

    status = sub.add_parser("status", help="state of every actor of a running gitsieve")
    status.add_argument("--workspace")
    status.add_argument("--config")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    bench = sub.add_parser("bench", help="measure edit-to-commit latency and actor memory")
    bench.add_argument("--edits", type=int, default=60, help="edits to time (default 60)")
    bench.add_argument("--debounce", type=float, default=0.5,
                       help="quiet period for the edited paths, seconds (default 0.5)")
    bench.add_argument("--no-churn", action="store_true",
                       help="without the simulated autonomous process")
    bench.set_defaults(func=cmd_bench)

    for name, (_entry, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (see gitsieve {name} --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][0](argv[1:])
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
