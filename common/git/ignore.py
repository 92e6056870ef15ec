"""Which paths git ignores, answered by one long-lived ``git check-ignore --stdin``.

L1 asks once per poll round.  A process per round was most of L1's CPU in a dirty start
(70 % of its samples were spawning ``check-ignore``), so :class:`IgnoreChecker` keeps one
child and streams the paths through it (``-v -n``: a record per path, so the answers are
framed).  The child reads the index and each directory's ``.gitignore`` once, so it is
replaced whenever that could be stale: the index, ``info/exclude`` or the global excludes
file changed (stat), a ``.gitignore`` is among the paths asked about, or it is older than
``max_age``.  When it fails (a path beyond a symbolic link makes git exit) the batch is
answered by a one-shot ``check-ignore``, exactly as before, so errors read the same.
"""
from __future__ import annotations

import logging
import os
import re
import select
import time
from pathlib import Path

from gitsieve.common.git.gateway import Git, GitChild, GitError, KeptChild, user_config_dirs
from gitsieve.common.git.head import common_dir, file_signature

log = logging.getLogger(__name__)

MAX_AGE = 30.0  # seconds: a bound on staleness from what the stat checks cannot see
ANSWER_TIMEOUT = 10.0  # seconds without a byte from the child: it is stuck
_PIPE_CHUNK = 4096
_READ_CHUNK = 256 * 1024
_FIELDS = 4  # source, line number, pattern, path
# git's words (LC_ALL=C) refusing a request for a path inside a submodule, which it names.
_IN_SUBMODULE = re.compile(r"^fatal: Pathspec '.*' is in submodule '(.*)'$", re.MULTILINE)


class IgnoreChecker(KeptChild):
    """``git check-ignore`` through one long-lived child, restarted when the index or the
    excludes change, after ``max_age``, and ended after a rest by ``close_if_idle``."""

    def __init__(self, git: Git, git_dir: Path, max_age: float = MAX_AGE,
                 timeout: float = ANSWER_TIMEOUT):
        self.git = git
        self.git_dir = Path(git_dir)
        self.max_age = max_age
        self.timeout = timeout
        self.child: GitChild | None = None
        self.started = 0.0
        self.basis: tuple = ()
        self.starts = 0
        self.fallbacks = 0
        self._excludes: tuple[Path | None, ...] | None = None
        self._workspace_gone_logged = False

    def ignored(self, paths: list[str]) -> set[str]:
        """The subset of ``paths`` that git ignores (tracked files never are); GitError
        when git cannot say; nothing, logged once, when the workspace is gone."""
        if not paths:
            return set()
        try:
            found = self._ask(paths)
        except (GitError, OSError):
            if os.path.isdir(self.git.root):
                raise
            self.close()
            if not self._workspace_gone_logged:
                # expected while `gitsieve run` notices and stops: no error, no traceback
                log.warning("the workspace %s is gone: git check-ignore not asked",
                            self.git.root)
                self._workspace_gone_logged = True
            return set()
        self._workspace_gone_logged = False
        return found

    def _ask(self, paths: list[str]) -> set[str]:
        seen: dict[str, bool] = {}
        paths = [path for path in paths if not self._beyond_work_tree(path, seen)]
        if not paths:
            return set()
        try:
            return self._exchange(paths)
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("check-ignore child failed (%s): one-shot for %d paths", exc, len(paths))
            self.close()
            self.fallbacks += 1
            return self._one_shot(paths)

    def _one_shot(self, paths: list[str]) -> set[str]:
        """A one-shot check-ignore.  A path in a submodule that is not checked out (``git
        submodule deinit`` left no ``.git`` for :meth:`_beyond_work_tree` to see) makes git
        refuse the whole request: such paths are answered not ignored, as those are, and
        the rest asked again."""
        while True:
            try:
                return self.git.ignored(paths)
            except GitError as exc:
                named = _IN_SUBMODULE.search(exc.stderr)
                inside = [] if named is None else [
                    path for path in paths if path.startswith(named.group(1) + "/")]
                if not inside:
                    raise
                paths = [path for path in paths if path not in inside]
                if not paths:
                    return set()

    def _beyond_work_tree(self, path: str, seen: dict[str, bool]) -> bool:
        """Whether ``path`` lies beyond a symbolic link or inside a submodule or nested
        repository (``seen``: the answers per directory in this request).  check-ignore
        refuses a whole request for one such path ("fatal: pathspec ... is beyond a
        symbolic link", "... is in submodule"), and none is a file git could ignore here:
        they go on as not ignored (a directory replaced by a link still has its tracked
        files' deletions committed)."""
        directory = ""
        for part in path.split("/")[:-1]:
            directory = f"{directory}/{part}" if directory else part
            beyond = seen.get(directory)
            if beyond is None:
                full = os.path.join(self.git.root, directory)
                beyond = seen[directory] = os.path.islink(full) or os.path.lexists(
                    os.path.join(full, ".git"))
            if beyond:
                return True
        return False

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None

    # ----------------------------------------------------------------------------------
    def _basis(self) -> tuple:
        common = Path(common_dir(os.fspath(self.git_dir)))
        return (file_signature(self.git_dir / "index"), file_signature(common / "info" / "exclude"),
                *(file_signature(path) for path in self._excludes_files()))

    def _excludes_files(self) -> tuple[Path | None, ...]:
        if self._excludes is None:
            code, out, _ = self.git.result("config", "--path", "--get", "core.excludesFile")
            configured = Path(os.fsdecode(out.strip())) if code == 0 and out.strip() else None
            _, xdg = user_config_dirs(self.git.owner)  # git's own: the work tree owner's
            self._excludes = (configured, Path(xdg) / "git" / "ignore")
        return self._excludes

    def refresh(self) -> None:
        """Replace a running child whose index or excludes changed now, while nothing
        waits for it (after a commit: the next edit's round then finds a child that has
        read the new index, which on a large tree takes tens of milliseconds)."""
        if self.child is not None:
            basis = self._basis()
            if basis != self.basis:
                self._start(time.monotonic(), basis)

    def _running(self, paths: list[str]) -> GitChild:
        now = self.used = time.monotonic()
        basis = self._basis()
        stale = (self.child is None or not self.child.alive() or basis != self.basis
                 or now - self.started > self.max_age
                 or any(os.path.basename(path) == ".gitignore" for path in paths))
        if stale:
            self._start(now, basis)
        return self.child

    def _start(self, now: float, basis: tuple) -> None:
        self.close()
        # check-ignore rejects every pathspec magic, the literal one included, so literal
        # mode is off; the "./" prefix keeps a leading ":" from reading as magic.
        self.child = self.git.spawn("check-ignore", "-z", "--stdin", "-v", "-n",
                                    env={"GIT_LITERAL_PATHSPECS": "0"})
        self.started, self.basis = now, basis
        self.starts += 1

    def _exchange(self, paths: list[str]) -> set[str]:
        child = self._running(paths)
        pending = bytearray(b"".join(b"./" + os.fsencode(path) + b"\0" for path in paths))
        buffer = bytearray()
        fields: list[bytes] = []
        found: set[str] = set()
        answered = 0
        deadline = time.monotonic() + self.timeout
        while answered < len(paths):
            writers = [child.stdin] if pending else []
            readable, writable, _ = select.select([child.stdout], writers, [],
                                                  max(0.0, deadline - time.monotonic()))
            if not readable and not writable:
                raise TimeoutError(f"git check-ignore gave no answer within {self.timeout}s")
            if writable:
                del pending[:os.write(child.stdin, pending[:_PIPE_CHUNK])]
            if not readable:
                continue
            chunk = os.read(child.stdout, _READ_CHUNK)
            if not chunk:
                raise OSError("git check-ignore exited")
            deadline = time.monotonic() + self.timeout
            buffer += chunk
            *complete, rest = bytes(buffer).split(b"\0")
            buffer = bytearray(rest)
            for field in complete:
                fields.append(field)
                if len(fields) < _FIELDS:
                    continue
                source, _, pattern, path = fields
                fields = []
                expected = b"./" + os.fsencode(paths[answered])
                if path != expected:
                    raise ValueError(f"check-ignore answered {path[:200]!r} for {expected[:200]!r}")
                if source and not pattern.startswith(b"!"):
                    found.add(paths[answered])
                answered += 1
        return found
