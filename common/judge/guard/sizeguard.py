"""The size guard: files too big for a plain git commit are held with a pointer to git-lfs.

- A file that ``.gitattributes`` routes to LFS (``filter=lfs``) is git-lfs's business:
  the commit stores a small pointer, so the guard never holds it.
- A new file (not in HEAD) above the limit is held.
- A tracked file that was within the limit in HEAD and has grown above it is held the
  same way.
- A tracked file that was already above the limit in HEAD (committed before gitsieve
  ran, or released) is not held again on every edit: its history already carries it.

The limit is in bytes; ``[guard] max_new_file_mb`` is meant in MiB (``mb * 2**20``).
"""

import posixpath

from gitsieve.common.judge.guard.findings import Finding, RuleId

MIB = 1 << 20


def oversized(
    path: str, size: int, limit_bytes: int, head_size: int | None, lfs_routed: bool
) -> Finding | None:
    """A SIZE finding if ``path`` (``size`` bytes now, ``head_size`` in HEAD or None if new)
    must be held, else None."""
    if limit_bytes <= 0:
        raise ValueError(f"the size limit must be positive, got {limit_bytes} bytes")
    if lfs_routed or size <= limit_bytes:
        return None
    if head_size is None:
        rule = RuleId.OVERSIZED_NEW_FILE
    elif head_size <= limit_bytes:
        rule = RuleId.OVERSIZED_GROWTH
    else:
        return None
    return Finding(
        rule,
        path,
        0,
        0,
        "",
        f"{rule.description}: {_mib(size)} > {_mib(limit_bytes)}; "
        f"store it with git-lfs ({lfs_track_command(path)}) or raise [guard] max_new_file_mb",
        rule.value,
    )


def lfs_track_command(path: str) -> str:
    """The git-lfs command that would route this kind of file: by extension, else the path."""
    extension = posixpath.splitext(posixpath.basename(path))[1]
    pattern = f"*{extension}" if extension else path
    return f'git lfs track "{pattern}"'


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"
