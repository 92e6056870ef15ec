"""Git access through the ``sh`` package, shared by every actor that reads or writes git.

Read-only calls pass ``--no-optional-locks`` so that watching never contends with the
user's own git commands for ``index.lock``.
"""
from __future__ import annotations

import logging
import os
import subprocess
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

    def __init__(self, args, exit_code: int, stderr: str):
        self.args_, self.exit_code, self.stderr = list(args), exit_code, stderr
        super().__init__(f"git {' '.join(map(str, args))} exited {exit_code}: {stderr.strip()}")


def git_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", GITSIEVE_ENV_MARK: "1",
                "GIT_LITERAL_PATHSPECS": "1"})
    if extra:
        env.update(extra)
    return env


def run(cwd: Path | str, *args, input: bytes | str | None = None,
        env: dict | None = None, timeout: float | None = None) -> bytes:
    """Run git in ``cwd``; return stdout bytes or raise GitError.

    ``timeout`` is for calls that may hang (network); sh polls every 0.1 s while one is
    set, which would cost local calls ten times their run time.
    """
    import sh  # imported on first use: it costs ~10 MiB, and actors that never run git skip it
    options = {"_timeout": timeout} if timeout else {}
    try:
        result = sh.git(*args, _cwd=str(cwd), _env=git_env(env), _in=input,
                        _return_cmd=True, _decode_errors="replace", _tty_out=False,
                        **options)
    except sh.ErrorReturnCode as exc:
        raise GitError(args, exc.exit_code, exc.stderr.decode("utf-8", "replace")) from None
    except sh.TimeoutException:
        raise GitError(args, -1, f"timed out after {timeout}s") from None
    return result.stdout


def discover(path: Path) -> tuple[Path, Path]:
    """(work tree root, absolute git dir) of the repository holding ``path``.

    Every actor calls this once at start; plain subprocess keeps ``sh`` unimported in
    actors that never run git otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotARepository(f"not a directory: {path}")
    result = subprocess.run(["git", "rev-parse", "--show-toplevel", "--absolute-git-dir"],
                            cwd=path, env=git_env(), capture_output=True)
    lines = result.stdout.decode("utf-8", "surrogateescape").splitlines()
    if result.returncode != 0:
        raise NotARepository(f"not a git repository: {path}")
    if len(lines) != 2:
        raise NotARepository(f"not a git work tree (bare repository?): {path}")
    return Path(lines[0]), Path(lines[1])


def split_nul(data: bytes) -> list[str]:
    return [item.decode("utf-8", "surrogateescape") for item in data.split(b"\0") if item]


def dirty_paths(root: Path) -> list[str]:
    """Workspace-relative paths that differ from HEAD or are untracked (not ignored)."""
    out = run(root, "--no-optional-locks", "status", "--porcelain=v1", "-z",
              "--untracked-files=all", "--no-renames")
    paths = []
    for entry in split_nul(out):
        # "XY path"; with --no-renames there are no "orig" entries.
        paths.append(entry[3:])
    return paths


def head_commit(root: Path) -> str | None:
    try:
        return run(root, "rev-parse", "--verify", "-q", "HEAD").decode().strip() or None
    except GitError:
        return None


def ignored(root: Path, paths: list[str]) -> set[str]:
    """The subset of ``paths`` that git ignores (tracked files are never reported)."""
    if not paths:
        return set()
    # check-ignore rejects every pathspec magic, the literal one included, so literal mode
    # is off here; the "./" prefix keeps a name starting with ":" from reading as magic.
    data = b"".join(b"./" + p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
    # Plain subprocess, not sh: L1 asks this every poll round, ahead of the debounce timer,
    # and sh's per-call overhead (~6 ms) would add to every edit's latency.
    args = ("check-ignore", "-z", "--stdin")
    result = subprocess.run(["git", *args], cwd=root, input=data, capture_output=True,
                            env=git_env({"GIT_LITERAL_PATHSPECS": "0"}))
    if result.returncode == 1:  # none ignored
        return set()
    if result.returncode != 0:
        raise GitError(args, result.returncode, result.stderr.decode("utf-8", "replace"))
    out = result.stdout
    return {path[2:] if path.startswith("./") else path for path in split_nul(out)}
