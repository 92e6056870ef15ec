"""The supervisor of ``gitsieve agent -- CMD``: runs CMD under the filter and records what it
and every descendant does to workspace names, before each call proceeds.

The supervisor forks; the child installs the filter (no_new_privs, a new listener), sends
the listener fd back over a socketpair (SCM_RIGHTS) and execs CMD.  The supervisor is a
child subreaper, so daemonised grandchildren stay its descendants, and serves in one poll
loop: the listener (one notification at a time: read the path arguments, check the
notification is still valid, append to the journal, let the call continue), a signalfd
(SIGCHLD and the forwarded signals; no Python signal handlers at all) and the socketpair
(an exec failure report).  Between notifications it checks which recorded write-opens
are still open (:mod:`.holds`) and records when they close.

It must not die: while it runs every watched call of the tree waits for it, and once its
listener is closed the kernel fails those calls with ENOSYS.  So one bad notification is
logged and counted, never raised out of the loop, and the call still continues.
"""
from __future__ import annotations

import collections
import ctypes
import enum
import errno
import logging
import os
import select
import shutil
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping

from gitsieve.common.agent.decode import ExecProbe, decoders_for
from gitsieve.common.agent.holds import HoldTracker
from gitsieve.common.agent.journal import (
    OPENS,
    JournalWriteError,
    JournalWriter,
    Op,
    process_start_ticks,
)
from gitsieve.common.agent.resolve import Resolver
from gitsieve.common.agent.seccomp import (
    AT_FDCWD,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    HostTables,
    Listener,
    MemoryReader,
    Notification,
    UnsupportedArchitecture,
    build_filter,
    host_tables,
    install_filter,
    prctl,
)

log = logging.getLogger(__name__)

ENV_WORKSPACE = "GITSIEVE_AGENT_WORKSPACE"
ENV_JOURNAL = "GITSIEVE_AGENT_JOURNAL"
ENV_SUPERVISOR = "GITSIEVE_AGENT_SUPERVISOR"  # "<pid>:<start ticks>"

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
# signals that, once CMD is gone, cut the grace of the remaining descendants short
_HASTENING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the terminal sent to its foreground process group
DEFAULT_GRACE = 2.0
KILL_SWEEP_INTERVAL = 0.1
IDLE_POLL_MS = 1000
LISTENER_HANDOVER_TIMEOUT_MS = 30_000

EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
_CHILD_SETUP_FAILED = 125  # the forked child died before exec for another reason


class Refusal(enum.Enum):
    """Why ``gitsieve agent`` does not run CMD: its exit status and one line for a person."""

    NO_COMMAND = (EXIT_USAGE, "usage: gitsieve agent [--workspace DIR] -- CMD [ARGS...]")
    NOT_FOUND = (EXIT_NOT_FOUND, "{detail}: command not found")
    NOT_EXECUTABLE = (EXIT_NOT_EXECUTABLE, "{detail}: not an executable file")
    NO_WORKSPACE = (EXIT_USAGE, "workspace {detail} is not a directory")
    BAD_WORKSPACE = (EXIT_USAGE, "{detail}")  # not a repository, a bad config or runtime dir
    NESTED_OTHER_WORKSPACE = (EXIT_USAGE, "already inside gitsieve agent for {detail}; a nested "
                              "one for another workspace cannot record (one seccomp "
                              "listener per process tree)")
    LISTENER_BUSY = (EXIT_USAGE, "another seccomp supervisor already watches this process "
                     "tree (a container runtime or sandbox?); gitsieve agent cannot record "
                     "here")
    SECCOMP_UNAVAILABLE = (EXIT_USAGE, "seccomp user notification is unavailable: {detail}")
    UNSUPPORTED_ARCHITECTURE = (EXIT_USAGE, "unsupported architecture {detail}")

    @property
    def exit_status(self) -> int:
        return self.value[0]

    def render(self, detail: str = "") -> str:
        return self.value[1].format(detail=detail)


class AgentRefused(Exception):
    def __init__(self, reason: Refusal, detail: str = ""):
        super().__init__(reason.render(detail))
        self.reason = reason
        self.detail = detail


class Notice(enum.Enum):
    """Something a person should know before CMD runs."""

    PRIVILEGE_DROPPED = "{detail}: under no_new_privs it runs without its {what}"

    def render(self, detail: str, what: str) -> str:
        return self.value.format(detail=detail, what=what)


class Tally(enum.IntEnum):
    """The supervisor's counters (an IntEnum: counted in C on the hot path)."""

    NOTIFIED = 1
    RECORDED = 2
    OUTSIDE = 3
    STALE = 4
    UNREADABLE = 5
    GONE = 6
    FAILED = 7
    JOURNAL_FAILED = 8

    @property
    def describe(self) -> str:
        return _TALLY_DESCRIPTION[self]


_TALLY_DESCRIPTION = {
    Tally.NOTIFIED: "notifications served",
    Tally.RECORDED: "records written",
    Tally.OUTSIDE: "names outside the workspace (or in .git), not recorded",
    Tally.STALE: "notifications no longer valid after reading, dropped",
    Tally.UNREADABLE: "path arguments that could not be read",
    Tally.GONE: "callers gone before the answer",
    Tally.FAILED: "notifications that raised (logged; the call continued)",
    Tally.JOURNAL_FAILED: "journal appends that failed (records lost)",
}


class Nesting(enum.Enum):
    NONE = "not inside gitsieve agent"
    SAME_WORKSPACE = "inside gitsieve agent recording this workspace into this journal"
    OTHER_WORKSPACE = "inside gitsieve agent recording another workspace or journal"


@dataclass(frozen=True)
class Command:
    path: str
    argv: tuple[str, ...]
    notices: tuple[str, ...] = ()


@dataclass
class Outcome:
    exit_status: int
    exec_error: int | None = None  # errno of a failed exec in the child
    tally: collections.Counter = field(default_factory=collections.Counter)


# ----- before running ------------------------------------------------------------------------
def privilege_lost(path: str) -> str | None:
    """What a program at ``path`` would gain at exec that no_new_privs withholds, where it
    matters for the current user (a setuid-root program run by root loses nothing)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    lost = []
    if info.st_mode & stat.S_ISUID and info.st_uid != os.geteuid():
        lost.append("setuid bit")
    if info.st_mode & stat.S_ISGID and info.st_gid not in (os.getegid(), *os.getgroups()):
        lost.append("setgid bit")
    if os.geteuid() != 0:
        try:
            os.getxattr(path, "security.capability")
            lost.append("file capabilities")
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                log.debug("cannot read the capabilities of %s: %s", path, exc)
    return " and ".join(lost) or None


def prepare_command(argv: list[str], search_path: str | None) -> Command:
    """Resolve CMD as execvp would; raise AgentRefused when it cannot run."""
    if not argv:
        raise AgentRefused(Refusal.NO_COMMAND)
    name = argv[0]
    if "/" in name:
        path = name if os.path.exists(name) else None
    else:
        path = shutil.which(name, path=search_path)
        if path is None and shutil.which(name, mode=os.F_OK, path=search_path):
            raise AgentRefused(Refusal.NOT_EXECUTABLE, name)
    if path is None:
        raise AgentRefused(Refusal.NOT_FOUND, name)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise AgentRefused(Refusal.NOT_EXECUTABLE, name)
    lost = privilege_lost(path)
    notices = (Notice.PRIVILEGE_DROPPED.render(path, lost),) if lost else ()
    return Command(path, tuple(argv), notices)


def _is_ancestor(pid: int) -> bool:
    current = os.getpid()
    while current > 1:
        try:
            with open(f"/proc/{current}/stat", "rb") as stat_file:
                text = stat_file.read()
        except OSError:
            return False
        current = int(text[text.rindex(b")") + 2:].split()[1])
        if current == pid:
            return True
    return False


def _filtered() -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Seccomp:"):
                return line.split()[1] == "2"
    return False


def nesting(workspace: Path, journal_dir: Path, environ: Mapping[str, str]) -> tuple[Nesting, str]:
    """Whether this process runs under a live gitsieve agent supervisor, and for which
    workspace.  The marker counts only when its supervisor is alive, is an ancestor of
    this process, and a seccomp filter is in force (a copied environment is not enough)."""
    outer_workspace = environ.get(ENV_WORKSPACE)
    supervisor = environ.get(ENV_SUPERVISOR, "")
    pid_text, _, start_text = supervisor.partition(":")
    if not outer_workspace or not pid_text.isdigit() or not start_text.isdigit():
        return Nesting.NONE, ""
    pid = int(pid_text)
    if process_start_ticks(pid) != int(start_text) or not _is_ancestor(pid) or not _filtered():
        return Nesting.NONE, ""
    same_journal = os.path.realpath(environ.get(ENV_JOURNAL, "")) == os.path.realpath(journal_dir)
    if os.path.realpath(outer_workspace) == os.path.realpath(workspace) and same_journal:
        return Nesting.SAME_WORKSPACE, outer_workspace
    return Nesting.OTHER_WORKSPACE, outer_workspace


def restore_signal_defaults() -> None:
    """What an exec'd program expects: Python ignores SIGPIPE and SIGXFSZ, and ignored
    dispositions survive exec."""
    for signo in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signo, signal.SIG_DFL)


# ----- signals --------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_SIGINFO_SIZE = 128


class SignalFd:
    """The watched signals, blocked and read as signalfd_siginfo (signo, code, sender)."""

    def __init__(self, signals: tuple[int, ...]):
        mask = (ctypes.c_ulong * 16)()
        bits = ctypes.sizeof(ctypes.c_ulong) * 8
        for signo in signals:
            mask[(signo - 1) // bits] |= 1 << ((signo - 1) % bits)
        self.previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        fd = _libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            signal.pthread_sigmask(signal.SIG_SETMASK, self.previous_mask)
            raise OSError(err, os.strerror(err))
        self.fd = fd

    def read(self) -> list[tuple[int, int, int]]:
        try:
            data = os.read(self.fd, _SIGINFO_SIZE * 16)
        except BlockingIOError:
            return []
        infos = []
        for offset in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
            signo, _errno, code, sender = struct.unpack_from("=IiiI", data, offset)
            infos.append((signo, code, sender))
        return infos

    def close(self) -> None:
        os.close(self.fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.previous_mask)


# ----- the descendants ---------------------------------------------------------------------------
def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (one /proc scan)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat_file:
                text = stat_file.read()
        except OSError:
            continue  # exited meanwhile
        parent = int(text[text.rindex(b")") + 2:].split()[1])
        children[parent].append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        below = children.get(pending.pop(), [])
        found.extend(below)
        pending.extend(below)
    return found


class Phase(enum.Enum):
    RUNNING = "CMD runs"
    TERMINATING = "CMD ended; the remaining descendants got SIGTERM"
    KILLING = "the grace ran out; SIGKILL until none remains"


# ----- the supervisor ----------------------------------------------------------------------------
_NO_DECODERS: tuple[dict, int] = ({}, 0)
_NEVER = float("inf")


class Supervisor:
    """Runs one command under the filter; :meth:`run` returns when it and every descendant
    are gone."""

    def __init__(self, workspace: str | os.PathLike, journal: JournalWriter, *,
                 grace: float = DEFAULT_GRACE, tables: HostTables | None = None):
        self.workspace = Path(os.path.realpath(workspace))
        if not self.workspace.is_dir():
            raise AgentRefused(Refusal.NO_WORKSPACE, str(workspace))
        try:
            self.tables = tables or host_tables()
        except UnsupportedArchitecture as exc:
            raise AgentRefused(Refusal.UNSUPPORTED_ARCHITECTURE, str(exc)) from exc
        self.journal = journal
        self.grace = grace
        self.program = build_filter(self.tables)
        # audit arch -> (syscall number -> decoder, pointer mask)
        self.dispatch = {table.audit_arch: (decoders_for(table), table.pointer_mask)
                         for table in self.tables.all}
        self.resolver = Resolver(self.workspace)
        self.holds = HoldTracker(os.fsencode(self.workspace))
        self.memory = MemoryReader()
        self.tally: collections.Counter = collections.Counter()
        self._warned_exec: set[bytes] = set()
        self._unreadable_pids: set[int] = set()
        self.child_pid = 0
        self.child_status: int | None = None
        self.exec_error: int | None = None
        self.phase = Phase.RUNNING
        self._deadline = 0.0
        self._next_sweep = 0.0

    # ----- running -----------------------------------------------------------------------
    def child_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env[ENV_WORKSPACE] = str(self.workspace)
        env[ENV_JOURNAL] = os.path.realpath(self.journal.directory)
        env[ENV_SUPERVISOR] = f"{os.getpid()}:{process_start_ticks(os.getpid())}"
        return env

    def run(self, command: Command, environ: Mapping[str, str] | None = None) -> Outcome:
        env = self.child_environment(os.environ if environ is None else environ)
        # CMD's own privilege notice is the caller's (Command.notices), before it runs
        self._warned_exec.add(os.fsencode(os.path.normpath(os.path.abspath(command.path))))
        signals = SignalFd((*FORWARDED_SIGNALS, signal.SIGCHLD))
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        ours, theirs = socket.socketpair()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._child(theirs, command, env, signals.previous_mask, parent_pid)
        self.child_pid = pid
        theirs.close()
        listener = None
        try:
            listener = self._receive_listener(ours)
            self._serve_until_done(listener, signals, ours)
        finally:
            if listener is not None:
                listener.close()
            ours.close()
            signals.close()
        return Outcome(self._exit_status(), self.exec_error, self.tally)

    def _child(self, channel: socket.socket, command: Command, env: dict[str, str],
               mask: set, parent_pid: int) -> None:
        """In the forked child: filter, hand the listener over, exec.  Never returns."""
        status = _CHILD_SETUP_FAILED
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:
                os._exit(status)
            try:
                listener_fd = install_filter(self.program, self.tables)
            except OSError as exc:
                channel.sendall(b"E" + struct.pack("=i", exc.errno))
                os._exit(status)
            socket.send_fds(channel, [b"L"], [listener_fd])
            os.close(listener_fd)
            restore_signal_defaults()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                os.execve(command.path, command.argv, env)
            except OSError as exc:
                channel.sendall(b"X" + struct.pack("=i", exc.errno))
                status = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        finally:
            os._exit(status)

    def _receive_listener(self, channel: socket.socket) -> Listener:
        poller = select.poll()
        poller.register(channel, select.POLLIN)
        if not poller.poll(LISTENER_HANDOVER_TIMEOUT_MS):
            self._reap_failed_child()
            raise AgentRefused(Refusal.SECCOMP_UNAVAILABLE, "the child did not hand over the "
                               "listener")
        message, fds, _flags, _address = socket.recv_fds(channel, 16, 1)
        if message[:1] == b"L" and fds:
            return Listener(fds[0])
        for fd in fds:
            os.close(fd)
        self._reap_failed_child()
        if message[:1] == b"E":
            err = struct.unpack("=i", message[1:5])[0]
            if err == errno.EBUSY:
                raise AgentRefused(Refusal.LISTENER_BUSY)
            raise AgentRefused(Refusal.SECCOMP_UNAVAILABLE, os.strerror(err))
        raise AgentRefused(Refusal.SECCOMP_UNAVAILABLE, "the child exited during setup")

    def _reap_failed_child(self) -> None:
        try:
            os.kill(self.child_pid, signal.SIGKILL)
        except ProcessLookupError:
            log.debug("the child %d already exited", self.child_pid)
        os.waitpid(self.child_pid, 0)

    def _serve_until_done(self, listener: Listener, signals: SignalFd,
                          channel: socket.socket) -> None:
        poller = select.poll()
        poller.register(listener.fd, select.POLLIN)
        poller.register(signals.fd, select.POLLIN)
        poller.register(channel, select.POLLIN)
        listener_fd, signal_fd, channel_fd = listener.fd, signals.fd, channel.fileno()
        serve = partial(self.serve_one, listener)
        holds = self.holds
        while True:
            for fd, events in poller.poll(self._poll_timeout_ms()):
                if fd == listener_fd:
                    if events & select.POLLIN:
                        serve()
                    else:  # POLLHUP: no process of the tree is left to notify
                        poller.unregister(listener_fd)
                elif fd == signal_fd:
                    self._on_signals(signals.read())
                elif fd == channel_fd:
                    self._on_exec_report(channel)
                    poller.unregister(channel_fd)
            if holds.next_check != _NEVER and holds.next_check <= time.monotonic():
                self._record_holds(holds.check)
            if self.phase is not Phase.RUNNING:
                if self._advance_shutdown():
                    self._record_holds(holds.close_all)
                    return

    def _poll_timeout_ms(self) -> int:
        if self.phase is Phase.RUNNING:
            timeout = IDLE_POLL_MS
        elif self.phase is Phase.TERMINATING:
            timeout = max(0, int((self._deadline - time.monotonic()) * 1000)) + 1
        else:
            timeout = int(KILL_SWEEP_INTERVAL * 1000)
        check = self.holds.due_in()
        return timeout if check is None else min(timeout, int(check * 1000) + 1)

    def _record_holds(self, check) -> None:
        """Record what a hold check found.  Never raises: a failed check closes every
        hold (their windows end now) rather than stop the supervisor."""
        try:
            entries = check()
        except Exception:
            self.tally[Tally.FAILED] += 1
            log.exception("checking which recorded files are still open failed")
            entries = self.holds.close_all()
        if entries:
            self._append(entries)

    def _on_exec_report(self, channel: socket.socket) -> None:
        message = channel.recv(16)
        if message[:1] == b"X" and len(message) >= 5:
            self.exec_error = struct.unpack("=i", message[1:5])[0]

    # ----- notifications ---------------------------------------------------------------------
    def serve_one(self, listener: Listener) -> None:
        """Receive one notification, record it, let the call continue.  Never raises."""
        try:
            note = listener.receive()
        except OSError as exc:
            self.tally[Tally.FAILED] += 1
            log.error("receiving a notification failed: %s", exc)
            return
        if note is None:
            self.tally[Tally.GONE] += 1
            return
        self.tally[Tally.NOTIFIED] += 1
        try:
            entries = self.examine(note)
        except PermissionError as exc:
            entries = ()
            self.tally[Tally.UNREADABLE] += 1
            if note.pid not in self._unreadable_pids:
                self._unreadable_pids.add(note.pid)
                log.warning("%s: its writes cannot be recorded", exc)
        except Exception:
            entries = ()
            self.tally[Tally.FAILED] += 1
            log.exception("notification %d (pid %d, syscall %d) failed", note.id, note.pid,
                          note.nr)
        try:
            if not listener.id_valid(note.id):
                self.tally[Tally.STALE] += 1
                return
            if entries:
                self._append(entries)
        except Exception:
            self.tally[Tally.FAILED] += 1
            log.exception("notification %d (pid %d) failed after reading", note.id, note.pid)
        try:
            if not listener.let_continue(note.id):
                self.tally[Tally.GONE] += 1
        except OSError as exc:
            self.tally[Tally.FAILED] += 1
            log.error("answering notification %d failed: %s", note.id, exc)

    def _append(self, entries: list[tuple[Op, bytes, int]]) -> None:
        try:
            self.journal.append(entries)
        except JournalWriteError as exc:
            self.tally[Tally.JOURNAL_FAILED] += 1
            failures = self.tally[Tally.JOURNAL_FAILED]
            if failures == 1 or failures % 1000 == 0:  # the first, then now and then
                log.error("%s (%d appends lost so far)", exc, failures)
            return
        self.tally[Tally.RECORDED] += len(entries)
        for op, path, pid in entries:
            if op in OPENS:
                self.holds.opened(pid, path)

    def examine(self, note: Notification) -> list[tuple[Op, bytes, int]]:
        """The journal entries for one notification (workspace paths only)."""
        decoders, pointer_mask = self.dispatch.get(note.arch, _NO_DECODERS)
        decoder = decoders.get(note.nr)
        if decoder is None:
            return []
        pid = note.pid
        decoded = decoder(note.args, pointer_mask, self.memory, pid)
        if decoded.unreadable:
            self.tally[Tally.UNREADABLE] += decoded.unreadable
        if decoded.exec_probe is not None:
            # the exec replaces an address space that cached /proc/TID/mem fds may hold
            self.memory.forget_all()
            self._probe_exec(pid, decoded.exec_probe)
            return []
        entries = []
        for target in decoded.targets:
            relative = self.resolver.resolve(pid, target)
            if relative is None:
                self.tally[Tally.OUTSIDE] += 1
            else:
                entries.append((target.op, relative, pid))
        return entries

    def _probe_exec(self, pid: int, probe: ExecProbe) -> None:
        """One line, once per program, when a program the tree execs loses privilege."""
        path = probe.path
        if not path.startswith(b"/"):
            where = (f"/proc/{pid}/cwd" if probe.dirfd == AT_FDCWD
                     else f"/proc/{pid}/fd/{probe.dirfd}")
            try:
                path = os.readlink(where.encode()) + b"/" + path
            except OSError:
                return  # the caller is gone
        path = os.path.normpath(path)
        if path in self._warned_exec:
            return
        lost = privilege_lost(os.fsdecode(path))
        if lost:
            self._warned_exec.add(path)
            log.warning(Notice.PRIVILEGE_DROPPED.render(os.fsdecode(path), lost))

    # ----- processes -------------------------------------------------------------------------
    def _on_signals(self, infos: list[tuple[int, int, int]]) -> None:
        for signo, code, sender in infos:
            if signo == signal.SIGCHLD:
                self._reap()
            else:
                self._forward(signo, code, sender)

    @staticmethod
    def forwards(code: int, same_process_group: bool) -> bool:
        """Whether a signal received with si_code ``code`` goes on to CMD: not when the
        terminal sent it to the foreground process group that CMD shares with us (CMD has
        it already; a second SIGINT would read as a second Ctrl-C)."""
        return not (code == SI_KERNEL and same_process_group)

    def _forward(self, signo: int, code: int, sender: int) -> None:
        if self.phase is Phase.RUNNING:
            if not self.forwards(code, self._shares_our_process_group()):
                return
            try:
                os.kill(self.child_pid, signo)
            except ProcessLookupError:
                log.debug("signal %d from %d: CMD already gone", signo, sender)
        elif signo in _HASTENING and self.phase is Phase.TERMINATING:
            self._deadline = time.monotonic()

    def _shares_our_process_group(self) -> bool:
        try:
            return os.getpgid(self.child_pid) == os.getpgrp()
        except ProcessLookupError:
            return False

    def _reap(self) -> bool:
        """Reap every exited child; True when no child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if pid == self.child_pid:
                self.child_status = status
                self._begin_shutdown()

    def _begin_shutdown(self) -> None:
        self.phase = Phase.TERMINATING
        self._deadline = time.monotonic() + self.grace
        self._signal_descendants(signal.SIGTERM)

    def _advance_shutdown(self) -> bool:
        """Move the shutdown on; True when CMD and every descendant are gone."""
        if self._reap():
            return True
        if self.phase is Phase.TERMINATING and time.monotonic() >= self._deadline:
            self.phase = Phase.KILLING
        if self.phase is Phase.KILLING and time.monotonic() >= self._next_sweep:
            # again and again: a descendant may fork while the first sweep runs
            self._next_sweep = time.monotonic() + KILL_SWEEP_INTERVAL
            self._signal_descendants(signal.SIGKILL)
        return False

    def _signal_descendants(self, signo: int) -> None:
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                continue  # exited meanwhile

    def _exit_status(self) -> int:
        if self.exec_error is not None:
            return EXIT_NOT_FOUND if self.exec_error == errno.ENOENT else EXIT_NOT_EXECUTABLE
        if self.child_status is None:
            return _CHILD_SETUP_FAILED
        code = os.waitstatus_to_exitcode(self.child_status)
        return 128 - code if code < 0 else code
