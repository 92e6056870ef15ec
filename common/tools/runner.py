"""Embedded supervisor behind ``gitsieve run``: starts every actor as a child process,
restarts one that dies (with back-off), and stops them all within 5 s on SIGINT/SIGTERM.

Each child runs in its own session (process group) so a terminal's Ctrl-C reaches only the
runner, which then stops the children in order and kills any group (git children included)
still alive at the deadline: no orphans, no git lock left behind by a half-stopped actor.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gitsieve.common.config import Config, prepare_runtime_dir
from gitsieve.common.config.runtime import give_to_directory_owner
from gitsieve.common.git.gateway import ACTOR_ENV_MARK

log = logging.getLogger(__name__)

ACTORS = "gitsieve.actors"
STOP_DEADLINE = 4.5  # seconds; the promise is "all stopped within 5 s"
_MAX_BACKOFF = 10.0


class AlreadyRunning(Exception):
    pass


@dataclass
class Child:
    module: str
    name: str
    instance: int | None
    proc: subprocess.Popen | None = None
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


class Runner:
    def __init__(self, config: Config, config_file: str | None = None):
        self.config = config
        self.config_file = config_file
        self.children = [Child(*spec) for spec in actor_modules(config)]
        self.stopping = False
        self.lock = InstanceLock(config.lock_file)

    def _spawn(self, child: Child) -> None:
        args = [sys.executable, "-m", child.module, "--workspace", str(self.config.workspace)]
        if self.config_file:
            args += ["--config", str(self.config_file)]
        if child.instance is not None:
            args += ["--instance", str(child.instance)]
        child.proc = subprocess.Popen(args, env={**os.environ, ACTOR_ENV_MARK: child.actor_id},
                                      start_new_session=True,
                                      stdin=subprocess.DEVNULL)
        child.started = time.monotonic()

    def _on_signal(self, *_args) -> None:
        self.stopping = True

    def start(self) -> None:
        prepare_runtime_dir(self.config)
        self.lock.acquire()
        for child in self.children:
            self._spawn(child)
        log.info("gitsieve running on %s: %d actor processes", self.config.workspace,
                 len(self.children))

    def supervise_once(self, now: float) -> None:
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

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not self.stopping:
                self.supervise_once(time.monotonic())
                time.sleep(0.1)
            log.info("stopping %d actors", len(self.children))
        finally:
            self.stop()
            self.lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
