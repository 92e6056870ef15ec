"""A commit's files hashed and written by one long-lived ``git hash-object -w
--stdin-paths``: a request through a pipe instead of a process (about 8 ms through ``sh``
on the path from a person's edit to the remote).

Such a git applies each file's clean filters (autocrlf, LFS, ``filter.*.clean``) as `git
add` does, but reads its configuration once and keeps the ``.gitattributes`` of the
directories it worked in.  So before each request the files those come from are looked
at (stat, no git): the repository's, the user's and the system's configuration,
``info/attributes``, the user's attributes file and the ``.gitattributes`` of every
directory above the paths asked about.  When one of them changed since this git last
worked with it, or appeared, a new git is started; and after ``MAX_AGE`` whatever
changed (an included configuration file, which no stat here sees).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from gitsieve.common.git.gateway import Git, GitError, LineChild, config_files, user_config_dirs
from gitsieve.common.git.head import common_dir, file_signature

MAX_AGE = 30.0  # seconds: a bound on staleness from what the stat checks cannot see
ATTRIBUTES = ".gitattributes"


class BlobWriter:
    """Object ids of work-tree files, each written unless it exists (:meth:`write`)."""

    def __init__(self, git: Git, git_dir: Path, max_age: float = MAX_AGE):
        self.git, self.git_dir, self.max_age = git, Path(git_dir), max_age
        self.lines = LineChild(git, "hash-object", "-w", "--stdin-paths")
        self.read_as: dict[str, tuple | None] = {}  # source file -> signature when read
        self.started = 0.0
        self.starts = 0
        self._settings: tuple[str, ...] | None = None

    def write(self, paths: list[str]) -> list[str] | None:
        """Each path's object id, in order (GitError when git cannot hash one: the kept
        git then ends); None when the request is not for the kept git (too long, or a name
        hash-object would read otherwise: a newline in it, a leading quote)."""
        if not paths or any("\n" in path or path.startswith('"') for path in paths):
            return None
        request = b"".join(os.fsencode(path) + b"\n" for path in paths)
        if len(request) > LineChild.MAX_REQUEST:
            return None
        now = time.monotonic()
        sources = self._sources(paths)
        changed = {name for name, seen in sources.items()
                   if self.read_as.get(name, seen) != seen}
        if changed & set(self._setting_files()):
            self._settings = None  # core.attributesFile may name another file now
        if changed or self.lines.child is None or not self.lines.child.alive() \
                or now - self.started > self.max_age:
            self.close()
            self.started = now
            self.starts += 1
        self.read_as.update(sources)
        oids = [line.decode("ascii", "replace").strip()
                for line in self.lines.ask(request, len(paths))]
        if len(oids) != len(paths):
            raise GitError(self.lines.args, 128, f"{len(oids)} ids for {len(paths)} paths")
        return oids

    def close(self) -> None:
        self.lines.close()
        self.read_as = {}

    def _sources(self, paths: list[str]) -> dict[str, tuple | None]:
        """Signature of every file the answers for ``paths`` depend on (None: absent)."""
        names = set(self._setting_files())
        for path in paths:
            directory = os.path.dirname(path)
            while True:
                names.add(os.path.join(self.git.root, directory, ATTRIBUTES))
                if not directory:
                    break
                directory = os.path.dirname(directory)
        return {name: file_signature(name) for name in names}

    def _setting_files(self) -> tuple[str, ...]:
        """Configuration and attributes files outside the work tree that git reads."""
        if self._settings is None:
            _, xdg = user_config_dirs(self.git.owner)  # git's own: the owner's
            code, out, _ = self.git.result("config", "--path", "--get", "core.attributesFile")
            configured = os.fsdecode(out.strip()) if code == 0 and out.strip() else None
            self._settings = (*config_files(self.git_dir, self.git.owner),
                              os.path.join(common_dir(os.fspath(self.git_dir)), "info",
                                           "attributes"),
                              os.path.join(xdg, "git", "attributes"),
                              *((configured,) if configured else ()))
        return self._settings
