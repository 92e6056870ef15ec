"""The one place gitsieve spawns git, through the ``sh`` package.

Every git child runs in the work tree as the work tree's owner (when gitsieve runs as root
on someone else's tree: their uid, primary and supplementary groups (``initgroups``), HOME,
USER, and none of this process's per-user locations such as ``XDG_CONFIG_HOME``, so git
reads their configuration and no object or ref is ever left owned by anyone else; files
get this process's umask, adjusted by git for ``core.sharedRepository``), with
``GITSIEVE_GIT=1`` in its environment (process attribution knows it as gitsieve's own) and
``LC_ALL=C`` (git's messages are parsed in a few places).  :func:`discover` finds whose
tree it is from the directory holding ``.git`` and refuses, in one line naming the cause
and the fix, what cannot work (someone else's repository when not root, an owner with no
account, a git directory owned by someone else than the work tree).
Read-only calls pass ``--no-optional-locks`` so that watching never contends with the
user's own git commands for ``index.lock``.

Paths never travel on git's command line: a Linux file name need not be UTF-8, and ``sh``
encodes arguments strictly.  They go on stdin (``--pathspec-from-file``, ``--stdin``,
``cat-file --batch``), NUL-separated and encoded with ``surrogateescape``.

Persistent children (``cat-file --batch``, and :class:`LineChild`'s ``hash-object`` of
trees and ``update-ref --stdin``) get plain pipes as stdin and stdout (:meth:`Git.spawn`):
``sh``'s streaming callbacks deliver binary output a byte at a time when unbuffered, and a
request/response protocol cannot wait for a buffer to fill.
"""
from __future__ import annotations

import logging
import os
import pwd
import select
import signal
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.git.head import common_dir

log = logging.getLogger(__name__)

# git status's words (LC_ALL=C) before a directory it leaves out ("'PATH': REASON" follow).
_UNOPENED_DIRECTORY = "warning: could not open directory '"
# work tree -> the directories git status left out that this process has warned about (once
# while they last, whichever Git object asked: a command asks through several)
_UNSEEN_SAID: dict[str, set[str]] = {}
# Inputs larger than this reach git through an in-memory file instead of sh's feeder.
_FEED_LIMIT = 64 * 1024
# Every git child of gitsieve carries this, so process attribution recognises our own git.
GITSIEVE_ENV_MARK = "GITSIEVE_GIT"
# Every actor process carries its actor id in this variable from its start (the runner sets
# it; an actor started by hand re-executes itself with it), so attribution recognises
# gitsieve's own processes by their environment, never by their command line.
ACTOR_ENV_MARK = "GITSIEVE_ACTOR"


class NotARepository(Exception):
    pass


class RepositoryRefused(NotARepository):
    """A repository git cannot be run on as it should (someone else's, no account, no
    access): ``str()`` names the cause and the fix in one line."""


class GitError(Exception):
    """A git command failed; ``str()`` holds the command and git's own stderr."""

    def __init__(self, args, exit_code: int, stderr: str, stdout: bytes = b""):
        self.args_, self.exit_code, self.stderr, self.stdout = list(args), exit_code, stderr, stdout
        super().__init__(f"git {' '.join(map(str, args))} exited {exit_code}: {stderr.strip()}")


@dataclass(frozen=True)
class Owner:
    """Whom git runs as: None fields mean "as this process"."""

    uid: int | None = None
    home: str | None = None
    name: str | None = None  # None with a uid: the uid has no account

    @classmethod
    def of(cls, root: Path) -> "Owner":
        """The work tree's owner when this process is root and someone else owns it."""
        if os.geteuid() != 0:
            return cls()
        try:
            uid = os.stat(root).st_uid
        except OSError:
            return cls()
        if uid == 0:
            return cls()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:  # a uid with no passwd entry: discover() refuses such a tree
            return cls(uid, "/", None)
        return cls(uid, entry.pw_dir, entry.pw_name)


def account_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid} (no account)"


def nul_joined(paths) -> bytes:
    """Paths for a NUL-separated pathspec or stdin list, whatever their encoding."""
    return b"".join(os.fsencode(path) + b"\0" for path in paths)


def split_nul(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0") if item]


# This process's per-user locations: git run as another user reads that user's instead.
_PER_USER_ENV = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
                 "GIT_CONFIG_GLOBAL", "SSH_AUTH_SOCK", "GNUPGHOME")


def git_env(extra: dict | None = None, owner: Owner = Owner()) -> dict:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", GITSIEVE_ENV_MARK: "1",
                "GIT_LITERAL_PATHSPECS": "1"})
    if owner.uid is not None:
        for name in _PER_USER_ENV:
            env.pop(name, None)
        env["HOME"] = owner.home or "/"
        if owner.name:
            env["USER"] = env["LOGNAME"] = owner.name
    if extra:
        env.update(extra)
    return env


def user_config_dirs(owner: Owner = Owner()) -> tuple[str, str]:
    """(HOME, XDG config directory) as the git run for ``owner`` sees them: where its
    ``~/.gitconfig`` and its ``git/config``, ``git/ignore`` and ``git/attributes`` lie."""
    return _config_dirs_in(git_env(owner=owner))


def _config_dirs_in(env: dict) -> tuple[str, str]:
    home = env.get("HOME", "/")
    return home, env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")


def config_files(git_dir: str | os.PathLike, owner: Owner = Owner()) -> tuple[str, ...]:
    """The configuration files the git run for ``owner`` in ``git_dir`` reads (some may be
    absent): the repository's, its worktree's, the user's and the system's."""
    env = git_env(owner=owner)
    home, xdg = _config_dirs_in(env)
    return tuple(name for name in (
        os.path.join(common_dir(os.fspath(git_dir)), "config"),
        os.path.join(git_dir, "config.worktree"), os.path.join(home, ".gitconfig"),
        os.path.join(xdg, "git", "config"), env.get("GIT_CONFIG_GLOBAL"),
        env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig") if name)


def _fork_failure(exc: BaseException) -> str:
    """The last line of sh's ForkException, which carries the child's whole traceback
    (``FileNotFoundError: [Errno 2] No such file or directory: '/ws'``)."""
    lines = str(exc).strip().splitlines()
    return lines[-1].strip() if lines else type(exc).__name__


def _sh():
    import sh  # imported on first use: actors that never run git do not pay for it
    return sh


class _Deadline:
    """Kills a git that is still running ``seconds`` from now (as sh's own timeout does,
    with SIGKILL), and says whether it did."""

    def __init__(self, seconds: float, process):
        self.passed = False
        self._process = process
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        if self._process.exit_code is not None:
            return  # reaped just now: its pid may be someone else's already
        self.passed = True
        try:
            self._process.signal(signal.SIGKILL)
        except ProcessLookupError:
            self.passed = False  # it ended just now: not killed

    def cancel(self) -> None:
        self._timer.cancel()


class Git:
    """git in one work tree."""

    def __init__(self, root: Path | str, owner: Owner | None = None):
        self.root = Path(root)
        self.owner = Owner.of(self.root) if owner is None else owner

    @staticmethod
    def _git():
        # Looked up on PATH at every call, as a shell would: PATH may change meanwhile.
        return _sh().Command("git")

    def _options(self, env: dict | None) -> dict:
        options = {"_cwd": str(self.root), "_env": git_env(env, self.owner),
                   "_tty_out": False, "_decode_errors": "replace"}
        if self.owner.uid is not None:
            options["_uid"] = self.owner.uid
        return options

    def result(self, *args: str, input: bytes | None = None, env: dict | None = None,
               timeout: float | None = None) -> tuple[int, bytes, str]:
        """(exit code, stdout, stderr) whatever the exit code; GitError only when git could
        not run or timed out."""
        sh = _sh()
        stdin = input
        if input is not None and len(input) > _FEED_LIMIT:
            # sh feeds bytes through a thread in small pieces; a large input goes faster as
            # an in-memory file given to git as its stdin (open already: whoever git runs
            # as can read it).
            fd = os.memfd_create("git-stdin", os.MFD_CLOEXEC)
            view = memoryview(input)
            while view:
                view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)
            stdin = os.fdopen(fd, "rb")
        deadline = None
        try:
            if timeout:
                # Not sh's _timeout: its thread looks every 0.1 s, and the call returned
                # only after its next look, 0.1 s after git ended (every push).
                done = self._git()(*args, _in=stdin, _bg=True, _bg_exc=False,
                                   _return_cmd=True, _ok_code=range(256),
                                   **self._options(env))
                deadline = _Deadline(timeout, done.process)
                done.wait()
            else:
                done = self._git()(*args, _in=stdin, _return_cmd=True, _ok_code=range(256),
                                   **self._options(env))
        except sh.SignalException as exc:  # killed: its work may or may not be done
            if deadline is not None and deadline.passed:
                raise GitError(args, -1, f"timed out after {timeout}s") from None
            return exc.exit_code, exc.stdout, f"killed by signal {-exc.exit_code}"
        except OSError as exc:
            raise GitError(args, -1, f"cannot run git: {exc}") from None
        except sh.ForkException as exc:
            raise GitError(args, -1, f"cannot run git: {_fork_failure(exc)}") from None
        finally:
            if deadline is not None:
                deadline.cancel()
            if stdin is not input:
                stdin.close()
        stderr = done.stderr.decode("utf-8", "replace") if done.stderr else ""
        return done.exit_code, done.stdout, stderr

    def run(self, *args: str, input: bytes | None = None, env: dict | None = None,
            timeout: float | None = None) -> bytes:
        """stdout of a git command that must succeed, else GitError."""
        code, stdout, stderr = self.result(*args, input=input, env=env, timeout=timeout)
        if code != 0:
            raise GitError(args, code, stderr, stdout)
        return stdout

    def text(self, *args: str, **kwargs) -> str:
        return os.fsdecode(self.run(*args, **kwargs)).strip()

    def spawn(self, *args: str, env: dict | None = None) -> "GitChild":
        """A long-lived git child whose stdin and stdout are plain pipes."""
        in_read, in_write = os.pipe2(os.O_CLOEXEC)
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        try:
            running = self._git()(*args, _bg=True, _bg_exc=False, _in=in_read,
                                  _out=out_write, _err=os.devnull, _ok_code=range(256),
                                  **self._options(env))
        except BaseException as exc:
            for fd in (in_write, out_read):
                os.close(fd)
            if isinstance(exc, _sh().ForkException):  # e.g. the work tree is gone
                raise OSError(f"cannot start git {args[0]}: {_fork_failure(exc)}") from None
            raise
        finally:
            os.close(in_read)
            os.close(out_write)
        return GitChild(running, in_write, out_read)

    def background(self, *args: str) -> "BackgroundGit":
        """A git command running on while the caller goes on (``git fsck``)."""
        running = self._git()(*args, _bg=True, _bg_exc=False, _ok_code=range(256),
                              _err_to_out=True, **self._options(None))
        return BackgroundGit(running)

    # ----- queries every actor needs ---------------------------------------------------
    def head(self) -> str | None:
        """HEAD's commit, None on an unborn branch."""
        code, stdout, _ = self.result("rev-parse", "--verify", "-q", "HEAD")
        return stdout.decode().strip() or None if code == 0 else None

    def dirty_paths(self) -> list[str]:
        """Workspace-relative paths that differ from HEAD or are untracked (not ignored).
        A directory git cannot look into (a path longer than the system allows, no
        permission) is left out by git with a warning: logged, once while it lasts."""
        args = ("--no-optional-locks", "status", "--porcelain=v1", "-z",
                "--untracked-files=all", "--no-renames")
        code, out, stderr = self.result(*args)
        if code != 0:
            raise GitError(args, code, stderr, out)
        unseen = {}
        for line in stderr.splitlines():
            if line.startswith(_UNOPENED_DIRECTORY):
                directory, quote, reason = line[len(_UNOPENED_DIRECTORY):].rpartition("': ")
                # git cuts its messages at 4 KiB: a name that long loses its end and reason
                unseen[directory if quote else line[len(_UNOPENED_DIRECTORY):]] = \
                    reason if quote else "a name too long for git to show whole"
        said = _UNSEEN_SAID.setdefault(str(self.root), set())
        for directory in unseen.keys() - said:
            shown = directory if len(directory) <= 200 else \
                f"{directory[:100]}...{directory[-60:]} ({len(directory)} characters or more)"
            log.warning("git cannot look into %s (%s): nothing below it is seen or synced "
                        "while it cannot", shown, unseen[directory])
        said.intersection_update(unseen)
        said.update(unseen)
        # "XY path"; with --no-renames there are no "orig" entries.
        return [entry[3:] for entry in split_nul(out)]

    def tracked_under(self, rel: str) -> list[str]:
        """Paths at or below the directory ``rel`` that the index or HEAD holds: `git mv`
        of a directory may have updated the index before this is asked, and HEAD still
        has the old paths whose removal is to be committed."""
        try:
            os.fsencode(rel).decode("utf-8")
            pathspec: tuple[str, ...] = ("--", rel)
        except UnicodeDecodeError:
            # Not expressible as an argument (see the module docstring): list everything.
            pathspec = ()
        found = dict.fromkeys(split_nul(self.run("--no-optional-locks", "ls-files", "-z",
                                                 *pathspec)))
        code, out, _ = self.result("--no-optional-locks", "ls-tree", "-r", "-z", "--name-only",
                                   "HEAD", *pathspec)
        if code == 0:  # else no commit yet: HEAD holds nothing
            found.update(dict.fromkeys(split_nul(out)))
        if not pathspec:
            prefix = rel + "/"
            return [path for path in found if path.startswith(prefix)]
        return list(found)

    def ignored(self, paths: list[str]) -> set[str]:
        """The subset of ``paths`` that git ignores (tracked files are never reported)."""
        if not paths:
            return set()
        # check-ignore rejects every pathspec magic, the literal one included, so literal
        # mode is off here; the "./" prefix keeps a name starting with ":" from reading as
        # magic.
        data = b"".join(b"./" + os.fsencode(p) + b"\0" for p in paths)
        code, out, stderr = self.result("check-ignore", "-z", "--stdin", input=data,
                                        env={"GIT_LITERAL_PATHSPECS": "0"})
        if code == 1:  # none ignored
            return set()
        if code != 0:
            raise GitError(("check-ignore", "-z", "--stdin"), code, stderr)
        return {path[2:] if path.startswith("./") else path for path in split_nul(out)}


class GitChild:
    """A running git process fed through pipes (see :meth:`Git.spawn`)."""

    def __init__(self, running, stdin: int, stdout: int):
        self.running, self.stdin, self.stdout = running, stdin, stdout
        self.pid = running.pid

    def write(self, data: bytes) -> None:
        while data:  # a pipe may take a long request in parts
            data = data[os.write(self.stdin, data):]

    def read(self, deadline: float, size: int = 256 * 1024) -> bytes:
        """What the child wrote next, waiting until ``deadline`` (monotonic); b"" at EOF;
        TimeoutError when nothing came in time."""
        ready, _, _ = select.select([self.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("git gave no answer in time")
        return os.read(self.stdout, size)

    def alive(self) -> bool:
        return self.running.process.is_alive()[0]

    def close(self) -> None:
        """Kill the child if it still runs, reap it and close the pipes."""
        if self.alive():
            try:
                self.running.process.kill()
            except ProcessLookupError:  # it ended, and sh reaped it, since alive() said so
                log.debug("git child %d ended before the kill", self.pid)
        try:
            self.running.wait()
        except _sh().SignalException as exc:  # the kill above: expected
            log.debug("git child %d ended: %s", self.pid, exc)
        for fd in (self.stdin, self.stdout):
            os.close(fd)


# A long-lived git (cat-file, check-ignore, the commit path's) ends after this many seconds
# without a request: kept through a burst of work, it costs about a megabyte at rest.
LONG_LIVED_IDLE = 30.0


class KeptChild:
    """A holder of one long-lived git child (``child``, ``close()``) that ends it after a
    rest; ``used`` is the ``time.monotonic()`` of its last request."""

    used = 0.0

    def close_if_idle(self, now: float, idle: float = LONG_LIVED_IDLE) -> None:
        """End the child when it has had no request for ``idle`` s (``now``: monotonic);
        the next request starts another."""
        if self.child is not None and now - self.used >= idle:
            self.close()


class LineChild(KeptChild):
    """A long-lived git command answering each request with lines (``hash-object
    --stdin-paths``, ``update-ref --stdin``): spawned on first use, and again when it has
    ended, so a request costs a pipe round trip instead of a process (about 5 ms through
    ``sh`` on top of git's own time, on the path from a person's edit to the remote).

    A request must fit ``MAX_REQUEST``: the child answers while it is written to, and both
    sides fit in the pipes only while they are small.  Any failure ends the child and raises
    GitError; what the request did is for the caller to find out."""

    MAX_REQUEST = 16 * 1024

    def __init__(self, git: "Git", *args: str, timeout: float = 10.0):
        self.git, self.args, self.timeout = git, args, timeout
        self._slot: list[GitChild] = []  # the running child, if any
        self.answered = b""  # what the last request got, complete or not
        # a LineChild dropped without close() (a test's committer) still ends its git
        weakref.finalize(self, LineChild._end, self._slot)

    @property
    def child(self) -> "GitChild | None":
        return self._slot[0] if self._slot else None

    @staticmethod
    def _end(slot: list) -> None:
        while slot:
            slot.pop().close()

    def ask(self, request: bytes, lines: int) -> list[bytes]:
        """The first ``lines`` lines git answers to ``request``."""
        if len(request) > self.MAX_REQUEST:
            raise ValueError(f"request of {len(request)} bytes over {self.MAX_REQUEST}")
        self.answered = b""
        self.used = time.monotonic()
        for fresh in (False, True):
            try:
                if fresh or self.child is None or not self.child.alive():
                    self.close()
                    self._slot.append(self.git.spawn(*self.args))
                self.child.write(request)
                break
            except BrokenPipeError:  # it ended while idle: nothing of this request was read
                if fresh:
                    self.close()
                    raise GitError(self.args, -1, "ended before reading the request") from None
            except (OSError, _sh().ForkException) as exc:
                self.close()
                raise GitError(self.args, -1, f"cannot run git: {exc}") from None
        answer = b""
        deadline = time.monotonic() + self.timeout
        try:
            while answer.count(b"\n") < lines:
                chunk = self.child.read(deadline)
                if not chunk:
                    raise GitError(self.args, 128, "ended after " + os.fsdecode(answer[-300:]))
                answer += chunk
                self.answered = answer
        except (TimeoutError, OSError) as exc:
            self.close()
            raise GitError(self.args, -1, str(exc)) from None
        except GitError:
            self.close()
            raise
        return answer.split(b"\n")[:lines]

    def close(self) -> None:
        self._end(self._slot)


class BackgroundGit:
    """A git command started by :meth:`Git.background`."""

    def __init__(self, running):
        self.running = running

    def wait(self) -> tuple[int, bytes]:
        """(exit code, stdout and stderr together); -signal when it was killed."""
        try:
            self.running.wait()
        except _sh().SignalException as exc:  # killed by kill() or by someone else
            return -abs(exc.exit_code), b""
        return self.running.exit_code, self.running.stdout

    def kill(self) -> None:
        if self.running.process.is_alive()[0]:
            self.running.process.kill()


def _repository_top(path: Path) -> Path | None:
    """The nearest directory at or above ``path`` holding ``.git``: whose tree it is decides
    whom git runs as, before git can be asked (found without running git)."""
    for candidate in (path, *path.parents):
        try:
            if os.path.lexists(candidate / ".git"):
                return candidate
        except OSError:
            return None
    return None


def _refusal(path: Path, top: Path, stderr: str, owner: Owner) -> str | None:
    """The cause and the fix, when git refused for a reason a person can act on."""
    me = account_name(os.geteuid() if owner.uid is None else owner.uid)
    if "dubious ownership" in stderr:
        return (f"git refuses the repository at {top}: it belongs to "
                f"{account_name(os.stat(top).st_uid)}, not to you ({me}) ('dubious "
                f"ownership'); run gitsieve as its owner (or as root, which runs git as the "
                f"owner), or trust it: git config --global --add safe.directory {top}")
    if "Permission denied" in stderr:
        return f"permission denied: {path} (for {me}): {' '.join(stderr.split())[:200]}"
    return None


def discover(path: Path) -> tuple[Path, Path]:
    """(work tree root, absolute git dir) of the repository holding ``path``.

    Git runs as the owner of the work tree (the directory holding ``.git``, whatever
    directory below it was named).  A repository git cannot run on as it should raises
    :class:`RepositoryRefused` naming the cause and the fix: someone else's repository
    when not root, a tree whose owner has no account, a git directory owned by someone
    other than the work tree, no access."""
    path = Path(path)
    try:
        info = os.stat(path)
    except PermissionError:
        parent = next((p for p in path.parents if os.access(p, os.F_OK)), path.parent)
        owner = account_name(os.stat(parent).st_uid) if parent.exists() else "someone else"
        raise RepositoryRefused(f"permission denied: {path} (for {account_name(os.geteuid())}"
                                f"; {parent} belongs to {owner})") from None
    except OSError:
        raise NotARepository(f"not a directory: {path}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise NotARepository(f"not a directory: {path}")
    for needed in (path, path / ".git"):
        if os.path.isdir(needed) and not os.access(needed, os.R_OK | os.X_OK):
            raise RepositoryRefused(
                f"permission denied: {needed} (mode {stat.S_IMODE(os.stat(needed).st_mode):o}, "
                f"owner {account_name(os.stat(needed).st_uid)}) cannot be read by "
                f"{account_name(os.geteuid())}")
    top = _repository_top(path.absolute()) or path
    owner = Owner.of(top)
    if owner.uid is not None and owner.name is None:
        raise RepositoryRefused(f"{top} belongs to uid {owner.uid}, which has no account: "
                                f"git cannot run as the work tree's owner; give the tree to "
                                f"an existing user (chown -R)")
    if owner.uid is not None:
        _refuse_mixed(top / ".git", top, owner)
    code, stdout, stderr = Git(path, owner).result("rev-parse", "--show-toplevel",
                                                   "--absolute-git-dir")
    if code != 0:
        refusal = _refusal(path, top, stderr, owner)
        if refusal:
            raise RepositoryRefused(refusal)
        raise NotARepository(f"not a git repository: {path}")
    lines = os.fsdecode(stdout).splitlines()
    if len(lines) != 2:
        raise NotARepository(f"not a git work tree (bare repository?): {path}")
    root, git_dir = Path(lines[0]), Path(lines[1])
    if owner.uid is not None:
        _refuse_mixed(git_dir, root, owner)
    return root, git_dir


def _refuse_mixed(git_dir: Path, root: Path, owner: Owner) -> None:
    """A git directory someone else owns: git, run as the work tree's owner, could not
    write there (and calls it 'dubious ownership')."""
    try:
        info = os.lstat(git_dir)
    except OSError:
        return  # git says what is wrong
    if stat.S_ISDIR(info.st_mode) and info.st_uid != owner.uid:
        raise RepositoryRefused(
            f"{git_dir} belongs to {account_name(info.st_uid)}, the work tree {root} to "
            f"{account_name(owner.uid)}: gitsieve runs git as the work tree's owner, who "
            f"could not write there; chown -R {owner.name} {git_dir}")
