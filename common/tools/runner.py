"""Embedded supervisor behind ``gitsieve run``: starts every actor as a child process,
restarts one that dies (with back-off), and stops them all within 5 s on SIGINT/SIGTERM.

The runner is a fork server: it imports every actor module once (then ``gc.freeze()``, so
the collector never writes to the shared pages) and forks each actor from that preloaded
state, so the actors share the interpreter's and the libraries' pages.  Each fork runs its
actor on the config the runner loaded (loading it again, or setting the log level again,
would write to pages the forks share), so a config file broken while gitsieve runs never
keeps a restarted actor down: a changed config takes effect when ``gitsieve run`` restarts.  The runner never
creates a ZeroMQ context or a thread before forking; each actor makes its own after the
fork.  Attribution knows gitsieve's own processes by ``GITSIEVE_ACTOR`` in
``/proc/PID/environ``, which shows the environment a process was exec'd with: ``gitsieve
run`` therefore re-executes itself with the mark (and ``SPT_NOENV``, so that setting the
process title never overwrites that environment), and every forked actor inherits it.
Each actor's title is ``gitsieve: ACTOR WORKSPACE``.

Each child runs in its own session (process group) so a terminal's Ctrl-C reaches only the
runner, which then stops the children in order and kills any group (git children included)
still alive at the deadline: no orphans, no git lock left behind by a half-stopped actor.
A workspace that vanishes (deleted or moved away) stops the runner with one log line.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import importlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import inotify_simple

from gitsieve.common.actor.base import TITLE_ENV, set_title
from gitsieve.common.actor.heap import (empty_method_cache, fill_malloc_free_chunks,
                                         fill_small_object_pools, trim_heap)
from gitsieve.common.config import Config, prepare_runtime_dir
from gitsieve.common.config.runtime import give_to_directory_owner
from gitsieve.common.git.gateway import ACTOR_ENV_MARK

log = logging.getLogger(__name__)

ACTORS = "gitsieve.actors"
STOP_DEADLINE = 4.5  # seconds; the promise is "all stopped within 5 s"
_MAX_BACKOFF = 10.0
WORKSPACE_CHECK_EVERY = 5.0  # seconds between checks that the workspace still exists
# The actor class of each actor module.
ACTOR_CLASSES = {"health": "Health", "router": "Router", "debouncer": "Debouncer",
                 "executor": "Executor", "pattern_layer": "PatternLayer",
                 "process_layer": "ProcessLayer", "content_layer": "ContentLayer",
                 "watcher": "Watcher"}


class AlreadyRunning(Exception):
    pass


class Forked:
    """A forked actor, with the part of subprocess.Popen's interface the runner uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already: nothing more to learn
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


def marked() -> bool:
    """Whether this process was executed with the actor mark and SPT_NOENV."""
    return bool(os.environ.get(ACTOR_ENV_MARK) and os.environ.get(TITLE_ENV))


def reexec_marked(argv: list[str], workspace: Path) -> None:
    """Run ``gitsieve run`` again with the actor mark and SPT_NOENV in its environment
    (no return), unless it already has them.  ``--workspace`` is repeated as an absolute
    path: the title of every actor lives in the room of this command line.  The entry point
    is marked_run, which keeps OpenSSL out of the fork server before importing anything."""
    if marked():
        return
    env = {**os.environ, ACTOR_ENV_MARK: os.environ.get(ACTOR_ENV_MARK) or "runner",
           TITLE_ENV: "1"}
    os.execve(sys.executable, [sys.executable, "-m", "gitsieve.common.tools.marked_run", *argv,
                               "--workspace", str(workspace)], env)


@dataclass
class Child:
    module: str
    name: str
    instance: int | None
    proc: Forked | subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    next_start: float = 0.0
    exits: list = field(default_factory=list)

    @property
    def actor_id(self) -> str:
        return self.name if self.instance is None else f"{self.name}-{self.instance:02d}"


def actor_modules(config: Config) -> list[tuple[str, str, int | None]]:
    """(module, actor name, instance) of every actor process, binders first (ZeroMQ does not
    mind the order, but it spares the first second of back-pressure)."""
    modules: list[tuple[str, str, int | None]] = [
        (f"{ACTORS}.health", "health", None), (f"{ACTORS}.router", "router", None),
        (f"{ACTORS}.debouncer", "debouncer", None), (f"{ACTORS}.executor", "executor", None),
        (f"{ACTORS}.pattern_layer", "l1", None)]
    modules += [(f"{ACTORS}.process_layer", "l2", i) for i in range(1, config.l2_workers + 1)]
    modules += [(f"{ACTORS}.content_layer", "l3", i) for i in range(1, config.l3_workers + 1)]
    modules.append((f"{ACTORS}.watcher", "watcher", None))
    return modules


def actor_ids(config: Config) -> list[str]:
    return [Child(*spec).actor_id for spec in actor_modules(config)]


class InstanceLock:
    """flock on the runtime directory's lock file; the holder's pid is written inside."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(f"gitsieve is already running on this workspace "
                                     f"(pid {holder}; lock {self.path})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        give_to_directory_owner(fd, self.path.parent)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    def leave(self) -> None:
        """In a forked child: close the descriptor without touching the lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# Imported by actors as they start, not by their modules (L2's attribution choice; the
# codec git's ASCII output is decoded with).
_STARTUP_IMPORTS = ("gitsieve.common.helper.client", "gitsieve.common.judge.attribution.helper",
                    "encodings.ascii")


class Runner:
    def __init__(self, config: Config):
        self.config = config
        self.children = [Child(*spec) for spec in actor_modules(config)]
        self.stopping = False
        self.exit_code = 0
        self.lock = InstanceLock(config.lock_file)
        self.workspace_identity = self._identity()
        self._wake: tuple[int, ...] = ()  # the runner's signal wake-up pipe
        self._next_workspace_check = 0.0

    def preload(self) -> None:
        """Import every actor module once, before any fork (no socket, no thread), and the
        modules actors import only when they start (each would be a private copy).  Then
        what every fork would do again at its start: the configured regexes compiled (each
        actor finds them in bounded_regex's table) and libc found."""
        for module in {child.module for child in self.children} | set(_STARTUP_IMPORTS):
            importlib.import_module(module)
        from gitsieve.common.judge.content import compile_volatile
        from gitsieve.common.judge.rules import RulesError, RuleSet
        compile_volatile(self.config.text_volatile_patterns)
        try:
            RuleSet.load(self.config.patterns_file, self.config.workspace)
        except RulesError as exc:  # refused again, and reported, by each actor reading it
            log.debug("rules file not compiled ahead: %s", exc)
        # inotify_simple finds libc at its first INotify, by running ldconfig: once, here.
        inotify_simple.INotify().close()
        gc.collect()
        gc.freeze()
        empty_method_cache()
        fill_small_object_pools()
        # What importing freed (about 3 MiB) goes back to the kernel, not into every fork,
        # and then is taken here, so no fork's malloc lands on a page the forks share.
        trim_heap()
        fill_malloc_free_chunks()

    def _spawn(self, child: Child) -> None:
        pid = os.fork()
        if pid == 0:
            self._become(child)  # never returns
        child.proc = Forked(pid)
        child.started = time.monotonic()

    def _become(self, child: Child) -> None:
        """The forked child: its own session, default signals, the actor's mark and title,
        then the actor's main; it never returns into the runner's code."""
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            self.lock.leave()
            signal.set_wakeup_fd(-1)
            for fd in self._wake:
                os.close(fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.environ[ACTOR_ENV_MARK] = child.actor_id
            set_title(f"gitsieve: {child.actor_id} {self.config.workspace}")
            from gitsieve.common.actor.base import run_actor
            module = sys.modules[child.module]
            actor_class = getattr(module, ACTOR_CLASSES[child.module.rsplit(".", 1)[1]])
            code = run_actor(actor_class, self.config, child.instance)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # whatever happens, the child must not return into the runner
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def _identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.config.workspace)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def workspace_vanished(self) -> str:
        """Why the workspace is gone ('' while it is there)."""
        if self._identity() != self.workspace_identity:
            return "deleted or moved away"
        if not os.path.isdir(self.config.git_dir):
            return f"its git directory {self.config.git_dir} is gone"
        return ""

    def _on_signal(self, *_args) -> None:
        self.stopping = True

    def start(self) -> None:
        prepare_runtime_dir(self.config)
        self.lock.acquire()
        self.preload()
        set_title(f"gitsieve: run {self.config.workspace}")
        for child in self.children:
            self._spawn(child)
        log.info("gitsieve running on %s: %d actor processes", self.config.workspace,
                 len(self.children))

    def supervise_once(self, now: float) -> None:
        if now >= self._next_workspace_check:
            self._next_workspace_check = now + WORKSPACE_CHECK_EVERY
            gone = self.workspace_vanished()
            if gone:
                log.error("the workspace %s vanished (%s): stopping", self.config.workspace,
                          gone)
                self.stopping, self.exit_code = True, 1
                return
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started > 30:
                    child.exits.clear()  # it has been stable: forget old crashes
                continue
            child.exits.append(now)
            child.restarts += 1
            backoff = min(_MAX_BACKOFF, 0.5 * 2 ** (len(child.exits) - 1))
            log.warning("%s exited with %s; restarting in %.1fs (restart #%d)",
                        child.actor_id, code, backoff, child.restarts)
            child.proc = None
            child.next_start = now + backoff

    def stop(self) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        # The watcher first, so nothing new enters while the rest drain.
        for child in sorted(live, key=lambda c: c.name != "watcher"):
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + STOP_DEADLINE
        for child in live:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing its process group", child.actor_id)
        for child in live:
            # Kill the whole group: an actor's git child must not outlive it.
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue  # group already gone: nothing to reap
            child.proc.wait()

    def next_wait(self, now: float) -> float:
        """Seconds until the runner has something to do (a child's exit or a signal wakes
        it sooner)."""
        moments = [self._next_workspace_check] + [child.next_start for child in self.children
                                                  if child.proc is None]
        return max(0.0, min(moments) - now)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        # A child's exit or a stop signal wakes the loop through this pipe; otherwise it
        # sleeps until the next workspace check (every WORKSPACE_CHECK_EVERY), so idling costs
        # nothing.
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        wake_read, wake_write = self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        try:
            self.start()
            while not self.stopping:
                self.supervise_once(time.monotonic())
                if self.stopping:
                    break
                ready, _, _ = select.select([wake_read], [], [],
                                            self.next_wait(time.monotonic()))
                if ready:
                    os.read(wake_read, 512)
            log.info("stopping %d actors", len(self.children))
        finally:
            self.stop()
            self.lock.release()
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code
