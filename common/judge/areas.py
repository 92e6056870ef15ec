"""Areas: a workspace path's first component (the top-level files are one area).

An agent's storm fills its own area (``.claude/``, ``out/``, ``logs/``), often before any
attribution could name its writer.  The stage queues serve areas in turn and the executor
commits the quiet areas' paths ahead of a busy area's backlog, so a person's edit elsewhere
never waits behind the storm.  Socket-free.
"""
from __future__ import annotations

from typing import AnyStr, Iterable

# The executor splits off the quiet areas only when it holds more paths than this (a
# smaller commit is quick anyway) ...
SPLIT_ABOVE = 256
# ... and an area holding more than this many paths is busy: its paths wait their turn.
BUSY_AREA = 32


def area_of(path: AnyStr) -> AnyStr:
    """The first component of a workspace-relative path (empty for a top-level file)."""
    head, separator, _ = path.partition("/" if isinstance(path, str) else b"/")
    return head if separator else path[:0]


def quiet_areas_first(paths: list[str], yours: set[str]) -> list[str]:
    """The paths to commit first when ``paths`` (sorted) are many: those of areas holding at
    most BUSY_AREA of them, and those positively written by you; every path when the split
    would leave either side empty."""
    if len(paths) <= SPLIT_ABOVE:
        return paths
    counts: dict[str, int] = {}
    for path in paths:
        area = area_of(path)
        counts[area] = counts.get(area, 0) + 1
    first = [path for path in paths
             if counts[area_of(path)] <= BUSY_AREA or path in yours]
    return first if 0 < len(first) < len(paths) else paths


def smallest_areas_first(paths: Iterable[str]) -> list[str]:
    """``paths`` with the areas holding the fewest of them first, each area's paths in
    their order: a reconcile during a storm reaches a person's few changes before the tens
    of thousands of files an agent wrote in its own area."""
    by_area: dict[str, list[str]] = {}
    for path in paths:
        by_area.setdefault(area_of(path), []).append(path)
    return [path for group in sorted(by_area.values(), key=len) for path in group]
