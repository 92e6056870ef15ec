"""Slow or process-table checks the health monitor runs beside its cheap stat checks.

- :class:`FsckRunner`: ``git fsck --connectivity-only`` every ``fsck_interval`` seconds in
  a background thread (the health loop stays responsive); a failure pauses commits until a
  later run passes.
- :func:`stale_index_lock`: a ``.git/index.lock`` older than ``stale_lock_age`` with no live
  git process of someone else's in the workspace; removed only when ``remove_stale_locks``
  says so.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import psutil

from gitsieve.common.git.gateway import GITSIEVE_ENV_MARK, BackgroundGit, Git

log = logging.getLogger(__name__)

FSCK_RETRY_AFTER_FAILURE = 30.0  # seconds: a failed fsck is re-run sooner than the interval


class FsckRunner:
    """Runs ``git fsck --connectivity-only`` on a schedule, one run at a time, off-thread."""

    def __init__(self, git: Git, interval: float):
        self.git = git
        self.interval = interval
        self.next_run = 0.0  # monotonic; the first run starts at once
        self.ok: bool | None = None  # None: no run has finished yet
        self.message = ""
        self.last_finished = 0.0  # wall clock
        self.last_duration = 0.0
        self.runs = 0
        self._thread: threading.Thread | None = None
        self._proc: BackgroundGit | None = None
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failure(self) -> str:
        """The reason commits must pause ('' while fsck passes or has not run yet)."""
        with self._lock:
            return f"git fsck failed: {self.message}" if self.ok is False else ""

    def maybe_start(self, now: float) -> None:
        if self.interval <= 0 or self._stopping or self.running or now < self.next_run:
            return
        self._thread = threading.Thread(target=self._run, name="fsck", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._proc = self.git.background("fsck", "--connectivity-only", "--no-progress",
                                             "--no-dangling")
            code, output = self._proc.wait()
            text = " ".join(output.decode("utf-8", "replace").split())[:500]
        except OSError as exc:
            code, text = -1, f"cannot run git fsck: {exc}"
        finally:
            self._proc = None
        duration = time.monotonic() - started
        if self._stopping:
            return  # killed by stop(): not a verdict on the repository
        ok = code == 0
        with self._lock:
            self.ok, self.runs = ok, self.runs + 1
            self.message = "" if ok else (text or f"exit {code}")
            self.last_finished, self.last_duration = time.time(), duration
        delay = self.interval if ok else min(self.interval, FSCK_RETRY_AFTER_FAILURE)
        self.next_run = time.monotonic() + delay
        if ok:
            log.info("git fsck passed in %.2fs", duration)
        else:
            log.error("git fsck failed (exit %s): %s", code, self.message)

    def status(self) -> dict:
        with self._lock:
            return {"ok": self.ok, "message": self.message, "runs": self.runs,
                    "last_finished": self.last_finished,
                    "last_duration": round(self.last_duration, 3), "running": self.running,
                    "interval": self.interval}

    def stop(self) -> None:
        """Kill a run in progress (stopping must stay prompt) and wait for the thread."""
        self._stopping = True
        proc = self._proc
        if proc is not None:
            try:
                proc.kill()
            except ProcessLookupError:  # raced with its normal end
                log.debug("fsck already exited")
        if self._thread is not None:
            self._thread.join(5)


def git_processes_in(root: Path) -> list[int]:
    """Pids of live git processes working in ``root`` (their cwd lies inside it), gitsieve's
    own (``GITSIEVE_GIT`` in their environment) left out: those never hold a lock for long,
    and counting them would hide a stale lock for as long as gitsieve works."""
    prefix = str(root)
    found = []
    for proc in psutil.process_iter(["pid", "name", "cwd"]):
        try:
            if proc.info["name"] != "git" and not (proc.info["name"] or "").startswith("git-"):
                continue
            cwd = proc.info["cwd"] or ""
            if not (cwd == prefix or cwd.startswith(prefix + os.sep)):
                continue
            if proc.environ().get(GITSIEVE_ENV_MARK) == "1":
                continue
        except psutil.Error:
            continue  # gone, or not ours to inspect
        found.append(proc.info["pid"])
    return found


def stale_index_lock(root: Path, git_dir: Path, max_age: float,
                     remove: bool) -> tuple[str, bool]:
    """(reason, removed): reason is '' when there is no stale index.lock, else a sentence
    for status; the lock is removed (removed=True, reason '') only when ``remove``.
    A lock that a live git process in the workspace may hold is never touched."""
    lock = git_dir / "index.lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return "", False
    if age < max_age or git_processes_in(root):
        return "", False  # young, or a git command is running: probably its own lock
    if remove:
        try:
            lock.unlink()
        except FileNotFoundError:
            return "", False  # its owner finished meanwhile
        log.warning("removed stale %s (%.0fs old, no git process alive)", lock, age)
        return "", True
    return (f"stale .git/index.lock ({age:.0f}s old, no git process alive); remove it, "
            f"or set [git] remove_stale_locks = true"), False
