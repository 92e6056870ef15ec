"""Where HEAD points, read from the git directory's files (no git process)."""
from __future__ import annotations

import time
from pathlib import Path


def head_token(git_dir: Path) -> tuple:
    """Cheap fingerprint of where HEAD points: changes whenever a commit moves it."""
    try:
        head = (git_dir / "HEAD").read_text()
        commondir = git_dir / "commondir"
        # a linked worktree keeps its branch refs in the common dir
        common = ((git_dir / commondir.read_text().strip()).resolve()
                  if commondir.exists() else git_dir)
    except OSError as exc:  # mid-rewrite by git: a token that matches nothing cached
        return ("unreadable", str(exc), time.monotonic())
    parts: list = [head]
    if head.startswith("ref: "):
        ref = head[5:].strip()
        for candidate in (common / ref, common / "packed-refs"):
            try:
                info = candidate.stat()
                parts.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:  # no loose ref / no packed-refs file: absence is part of the token
                parts.append(None)
    return tuple(parts)


