"""What ``gitsieve agent`` and ``gitsieve mark --system`` do (``common/tools/cli.py`` parses).

The journal is ``<runtime dir>/agent``: the runtime directory is prepared (or refused)
exactly as ``gitsieve run`` does it, so the agent and gitsieve meet in the same private
directory whichever starts first.  Every refusal is one line on stderr and an exit
status (2 for bad input, 126/127 for a command that cannot run, as a shell says).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gitsieve.common import config as config_mod
from gitsieve.common.agent.journal import AGENT_SUBDIR, JournalWriter, ensure_directory
from gitsieve.common.agent.mark import MarkRefused, mark_system
from gitsieve.common.agent.wrapper import (
    EXIT_USAGE,
    AgentRefused,
    Nesting,
    Refusal,
    Supervisor,
    Tally,
    nesting,
    prepare_command,
    restore_signal_defaults,
)

AGENT_PREFIX = "gitsieve agent: "
MARK_PREFIX = "gitsieve mark: "
log = logging.getLogger(__name__)


def journal_directory(config: config_mod.Config) -> Path:
    return config.runtime_dir / AGENT_SUBDIR


def prepare_journal(config: config_mod.Config) -> Path:
    """The journal directory, its runtime directory prepared (RuntimeDirError when refused).
    Made by root on someone's tree, it is theirs, like the runtime directory."""
    config_mod.prepare_runtime_dir(config)
    directory = ensure_directory(journal_directory(config))
    if os.geteuid() == 0:
        owner = os.stat(config.runtime_dir)
        if os.stat(directory).st_uid != owner.st_uid:
            os.chown(directory, owner.st_uid, owner.st_gid)
    return directory


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(AGENT_PREFIX + "%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _load(args) -> config_mod.Config:
    try:
        return config_mod.load_from_arguments(args)
    except config_mod.ConfigError as exc:
        raise AgentRefused(Refusal.BAD_WORKSPACE, str(exc)) from None


def agent(args, argv: list[str], grace: float, verbose: bool) -> int:
    """``gitsieve agent [--workspace DIR] -- CMD ARGS...``: CMD's exit status."""
    _setup_logging(verbose)
    journal = None
    try:
        command = prepare_command(argv, os.environ.get("PATH"))
        config = _load(args)
        try:
            journal_dir = prepare_journal(config)
        except config_mod.RuntimeDirError as exc:
            raise AgentRefused(Refusal.BAD_WORKSPACE, str(exc)) from None
        state, outer = nesting(config.workspace, journal_dir, os.environ)
        for notice in command.notices:
            print(AGENT_PREFIX + notice, file=sys.stderr)
        if state is Nesting.SAME_WORKSPACE:
            # the outer supervisor already records everything this process tree does
            restore_signal_defaults()
            os.execv(command.path, command.argv)
        if state is Nesting.OTHER_WORKSPACE:
            raise AgentRefused(Refusal.NESTED_OTHER_WORKSPACE, outer)
        journal = JournalWriter(journal_dir)
        outcome = Supervisor(config.workspace, journal, grace=grace).run(command)
    except AgentRefused as refusal:
        print(AGENT_PREFIX + str(refusal), file=sys.stderr)
        return refusal.reason.exit_status
    finally:
        if journal is not None:
            journal.close()
    if outcome.exec_error is not None:
        print(f"{AGENT_PREFIX}cannot run {command.path}: {os.strerror(outcome.exec_error)}",
              file=sys.stderr)
    log.debug("; ".join(f"{tally.describe}: {outcome.tally[tally]}" for tally in Tally))
    return outcome.exit_status


MARK_NOTICE_TIMEOUT = 2.0  # seconds a running watcher has to take the marked paths


def mark(args, paths: list[str]) -> int:
    """``gitsieve mark --system PATH...``: 0, or 2 with one line when refused (then nothing
    is recorded)."""
    try:
        config = config_mod.load_from_arguments(args)
        journal_dir = prepare_journal(config)
        marked = mark_system(journal_dir, config.workspace, paths)
    except (config_mod.ConfigError, MarkRefused) as refusal:
        print(MARK_PREFIX + str(refusal), file=sys.stderr)
        return EXIT_USAGE
    judge_again(config, [item.path for item in marked])
    return 0


def judge_again(config, paths: list[str]) -> None:
    """Have a running gitsieve judge the marked paths again: a hook marks a version after
    the write that made it, often after that change was judged, and the mark must still
    keep it from being committed.  When gitsieve is not running, its start's reconcile
    judges them with the marks."""
    from gitsieve.common.actor import control
    from gitsieve.common.protocol.messages import MAX_MARKED_PATHS, BadMessage
    for start in range(0, len(paths), MAX_MARKED_PATHS):
        try:
            reply = control.request(config, "watcher", "judge_again",
                                    {"paths": paths[start:start + MAX_MARKED_PATHS]},
                                    timeout=MARK_NOTICE_TIMEOUT, listening=True)
        except control.Unreachable as exc:
            log.debug("marked paths not sent again (gitsieve not running?): %s", exc)
            return
        except BadMessage as exc:
            log.warning("marked paths not sent again: unreadable answer: %s", exc)
            return
        if not reply.ok:
            log.warning("marked paths not sent again: %s", reply.error)
            return
