"""The one place gitsieve spawns git, through the ``sh`` package.

Every git child runs in the work tree as the work tree's owner (when gitsieve runs as root
on someone else's tree: their uid, groups and HOME, so no object or ref is ever left owned
by anyone else), with ``GITSIEVE_GIT=1`` in its environment (process attribution knows it
as gitsieve's own) and ``LC_ALL=C`` (git's messages are parsed in a few places).
Read-only calls pass ``--no-optional-locks`` so that watching never contends with the
user's own git commands for ``index.lock``.

Paths never travel on git's command line: a Linux file name need not be UTF-8, and ``sh``
encodes arguments strictly.  They go on stdin (``--pathspec-from-file``, ``--stdin``,
``cat-file --batch``), NUL-separated and encoded with ``surrogateescape``.

Persistent children (``cat-file --batch``) get plain pipes as stdin and stdout
(:meth:`Git.spawn`): ``sh``'s streaming callbacks deliver binary output a byte at a time
when unbuffered, and a request/response protocol cannot wait for a buffer to fill.
"""
from __future__ import annotations

import logging
import os
import pwd
import select
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Every git child of gitsieve carries this, so process attribution recognises our own git.
GITSIEVE_ENV_MARK = "GITSIEVE_GIT"
# Every actor process carries its actor id in this variable from its start (the runner sets
# it; an actor started by hand re-executes itself with it), so attribution recognises
# gitsieve's own processes by their environment, never by their command line.
ACTOR_ENV_MARK = "GITSIEVE_ACTOR"


class NotARepository(Exception):
    pass


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
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:  # a uid with no passwd entry: no home to offer
            home = "/"
        return cls(uid, home)


def nul_joined(paths) -> bytes:
    """Paths for a NUL-separated pathspec or stdin list, whatever their encoding."""
    return b"".join(os.fsencode(path) + b"\0" for path in paths)


def split_nul(data: bytes) -> list[str]:
    return [os.fsdecode(item) for item in data.split(b"\0") if item]


def git_env(extra: dict | None = None, owner: Owner = Owner()) -> dict:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", GITSIEVE_ENV_MARK: "1",
                "GIT_LITERAL_PATHSPECS": "1"})
    if owner.home is not None:
        env["HOME"] = owner.home
    if extra:
        env.update(extra)
    return env


def _sh():
    import sh  # imported on first use: actors that never run git do not pay for it
    return sh


class Git:
    """git in one work tree."""

    def __init__(self, root: Path | str, owner: Owner | None = None):
        self.root = Path(root)
        self.owner = Owner.of(self.root) if owner is None else owner

    @staticmethod
    def _git():
        # Looked up on PATH at every call, as a shell would: PATH may change meanwhile.
        return _sh().Command("git")

    def _options(self, env: dict | None, timeout: float | None) -> dict:
        options = {"_cwd": str(self.root), "_env": git_env(env, self.owner),
                   "_tty_out": False, "_decode_errors": "replace"}
        if self.owner.uid is not None:
            options["_uid"] = self.owner.uid
        if timeout:
            # sh polls every 0.1 s while a timeout is set: only calls that may hang get one.
            options["_timeout"] = timeout
        return options

    def result(self, *args: str, input: bytes | None = None, env: dict | None = None,
               timeout: float | None = None) -> tuple[int, bytes, str]:
        """(exit code, stdout, stderr) whatever the exit code; GitError only when git could
        not run or timed out."""
        sh = _sh()
        try:
            done = self._git()(*args, _in=input, _return_cmd=True, _ok_code=range(256),
                               **self._options(env, timeout))
        except sh.TimeoutException:
            raise GitError(args, -1, f"timed out after {timeout}s") from None
        except sh.SignalException as exc:  # killed: its work may or may not be done
            return exc.exit_code, exc.stdout, f"killed by signal {-exc.exit_code}"
        except (OSError, sh.ForkException) as exc:
            raise GitError(args, -1, f"cannot run git: {exc}") from None
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
                                  **self._options(env, None))
        except BaseException:
            for fd in (in_write, out_read):
                os.close(fd)
            raise
        finally:
            os.close(in_read)
            os.close(out_write)
        return GitChild(running, in_write, out_read)

    def background(self, *args: str) -> "BackgroundGit":
        """A git command running on while the caller goes on (``git fsck``)."""
        running = self._git()(*args, _bg=True, _bg_exc=False, _ok_code=range(256),
                              _err_to_out=True, **self._options(None, None))
        return BackgroundGit(running)

    # ----- queries every actor needs ---------------------------------------------------
    def head(self) -> str | None:
        """HEAD's commit, None on an unborn branch."""
        code, stdout, _ = self.result("rev-parse", "--verify", "-q", "HEAD")
        return stdout.decode().strip() or None if code == 0 else None

    def dirty_paths(self) -> list[str]:
        """Workspace-relative paths that differ from HEAD or are untracked (not ignored)."""
        out = self.run("--no-optional-locks", "status", "--porcelain=v1", "-z",
                       "--untracked-files=all", "--no-renames")
        # "XY path"; with --no-renames there are no "orig" entries.
        return [entry[3:] for entry in split_nul(out)]

    def tracked_under(self, rel: str) -> list[str]:
        """Tracked paths at or below the directory ``rel``."""
        try:
            os.fsencode(rel).decode("utf-8")
        except UnicodeDecodeError:
            # Not expressible as an argument (see the module docstring): list everything.
            prefix = rel + "/"
            return [path for path in split_nul(self.run("--no-optional-locks", "ls-files", "-z"))
                    if path.startswith(prefix)]
        return split_nul(self.run("--no-optional-locks", "ls-files", "-z", "--", rel))

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
            self.running.process.kill()
        try:
            self.running.wait()
        except _sh().SignalException as exc:  # the kill above: expected
            log.debug("git child %d ended: %s", self.pid, exc)
        for fd in (self.stdin, self.stdout):
            os.close(fd)


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


def discover(path: Path) -> tuple[Path, Path]:
    """(work tree root, absolute git dir) of the repository holding ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise NotARepository(f"not a directory: {path}")
    code, stdout, stderr = Git(path).result("rev-parse", "--show-toplevel",
                                            "--absolute-git-dir")
    if code != 0:
        detail = " (git refuses a repository owned by someone else: 'dubious ownership')" \
            if "dubious ownership" in stderr else ""
        raise NotARepository(f"not a git repository: {path}{detail}")
    lines = os.fsdecode(stdout).splitlines()
    if len(lines) != 2:
        raise NotARepository(f"not a git work tree (bare repository?): {path}")
    return Path(lines[0]), Path(lines[1])
