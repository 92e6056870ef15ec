"""What changed versus HEAD: the content layer's (L3) pure decision functions.

:func:`classify` compares HEAD's bytes of a path with the work tree's and says whether the
change is the user's (commit), the system's (drop) or no change at all (drop).  Nothing
here touches git or the file system except :func:`git_blob_id`, which hashes a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterable

from common.messages import Change

USER, SYSTEM, UNCHANGED = "USER", "SYSTEM", "UNCHANGED"
# Bigger files are compared as bytes only: parsing them would stall a worker.
SIZE_CAP = 5 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ContentVerdict:
    verdict: str
    reason: str

    @property
    def commit(self) -> bool:
        return self.verdict == USER


def strip_volatile(obj, keys: Iterable[str]):
    """A copy of a parsed JSON value without ``keys`` at any depth (dicts in lists too)."""
    drop = keys if isinstance(keys, (set, frozenset)) else frozenset(keys)
    if isinstance(obj, dict):
        return {key: strip_volatile(value, drop) for key, value in obj.items()
                if key not in drop}
    if isinstance(obj, list):
        return [strip_volatile(item, drop) for item in obj]
    return obj


_NOT_JSON = object()


def _parse_json(data: bytes):
    """The parsed document, or ``_NOT_JSON`` (invalid, badly encoded or too deep)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _NOT_JSON


def _json_verdict(head, work, volatile_keys: tuple[str, ...]) -> ContentVerdict | None:
    """SYSTEM when the documents match once volatile keys are gone; None when they differ."""
    if strip_volatile(head, volatile_keys) != strip_volatile(work, volatile_keys):
        return None
    # Name the volatile keys that actually differ: those whose removal was needed.
    changed = [key for key in volatile_keys
               if strip_volatile(head, set(volatile_keys) - {key})
               != strip_volatile(work, set(volatile_keys) - {key})]
    if not changed:
        return ContentVerdict(SYSTEM, "same JSON data, only formatting changed")
    return ContentVerdict(SYSTEM, f"only volatile keys changed: {', '.join(changed)}")


def classify(path: str, head: bytes | None, work: bytes | None,
             volatile_keys: Iterable[str] = (), size_cap: int = SIZE_CAP) -> ContentVerdict:
    """Decide a change from HEAD's bytes (None: not in HEAD) and the work tree's
    (None: deleted)."""
    if work is None:
        if head is None:
            return ContentVerdict(UNCHANGED, "never committed")
        return ContentVerdict(USER, "deleted")
    if head is None:
        return ContentVerdict(USER, "new file")
    if head == work:
        return ContentVerdict(UNCHANGED, "identical to HEAD")
    if len(head) > size_cap or len(work) > size_cap:
        return ContentVerdict(USER, f"content changed (over {size_cap} bytes: "
                              "compared as bytes only)")
    keys = tuple(volatile_keys)
    head_doc = _parse_json(head)
    work_doc = _parse_json(work) if head_doc is not _NOT_JSON else _NOT_JSON
    # Not JSON on one side or both: the text rules below decide.
    if head_doc is not _NOT_JSON and work_doc is not _NOT_JSON:
        structured = isinstance(head_doc, (dict, list)) and isinstance(work_doc, (dict, list))
        if path.endswith(".json") or structured:
            try:
                found = _json_verdict(head_doc, work_doc, keys)
            except RecursionError:  # too deep to compare (json.loads allows more): as text
                found = ContentVerdict(USER, "content changed (JSON too deep to compare)")
            return found or ContentVerdict(USER, "JSON data changed")
    if path.endswith(".log") and work.startswith(head):
        return ContentVerdict(SYSTEM, f"log grew by {len(work) - len(head)} bytes "
                              "(append-only)")
    return ContentVerdict(USER, "content changed")


def git_blob_id(path: str, hex_length: int = 40) -> str:
    """Git's object id for the file at ``path`` as a blob, hashed in chunks (big files).

    ``hex_length`` picks the repository's hash: 40 for SHA-1, 64 for SHA-256.
    """
    digest = hashlib.sha256() if hex_length == 64 else hashlib.sha1()
    with open(path, "rb") as handle:
        digest.update(f"blob {os.fstat(handle.fileno()).st_size}\0".encode())
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ----- helpers for the Change messages both analysis layers (L2, L3) receive -----------
def l1_action(change: Change) -> str:
    """The action L1 gave this change (the debouncer keys its delay on it)."""
    for step in change.trail:
        if isinstance(step, dict) and step.get("layer") == "L1":
            verdict = step.get("verdict")
            if isinstance(verdict, str):
                return verdict
    return "ANALYZE"

