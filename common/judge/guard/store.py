"""What the guard keeps in the runtime directory: the installation's fingerprint key and
the release records ``gitsieve release`` writes.

Both files are private to the work tree's owner (0600, in the 0700 runtime directory),
owned by them when gitsieve runs as root on someone else's tree. Releases are recorded
by blob id (a release covers exactly that content, wherever it is), written atomically
under a lock so two ``gitsieve release`` commands never lose each other's record, and
read by the running executor whenever the file changes. ``gitsieve release`` works
whether or not gitsieve is running: the file is the only channel.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from gitsieve.common.config.runtime import give_to_directory_owner, write_atomic
from gitsieve.common.judge.guard.findings import MIN_KEY_BYTES

log = logging.getLogger(__name__)

KEY_FILE = "guard.key"
RELEASES_FILE = "guard-releases.json"
KEY_BYTES = 32
# Release records kept (oldest go first): a record is ~100 bytes, and a release older
# than thousands of later ones concerns content long gone from the work tree.
MAX_RELEASES = 20_000


class GuardStoreError(Exception):
    """A key or release file that cannot be read or written; ``str()`` says which and why."""


def installation_key(runtime_dir: Path) -> bytes:
    """The fingerprint key of this installation, made (32 random bytes, 0600) on first use."""
    path = runtime_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        key = os.urandom(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # made meanwhile by another process: use theirs
            return installation_key(runtime_dir)
        except OSError as exc:
            raise GuardStoreError(f"{path}: cannot create the fingerprint key: "
                                  f"{exc.strerror}") from None
        with os.fdopen(fd, "wb") as handle:
            give_to_directory_owner(handle.fileno(), runtime_dir)
            handle.write(key)
        return key
    except OSError as exc:
        raise GuardStoreError(f"{path}: cannot read the fingerprint key: {exc.strerror}") \
            from None
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            os.fchmod(handle.fileno(), 0o600)  # ours, loosened by someone: private again
        key = handle.read(4096)
    if len(key) < MIN_KEY_BYTES:
        raise GuardStoreError(f"{path}: the fingerprint key is damaged (under "
                              f"{MIN_KEY_BYTES} bytes); remove it to make a new one "
                              "(fingerprints in allowlists then change)")
    return key


class ReleaseStore:
    """The release records: ``{blob id: {"path": path, "released": unix time}}``."""

    def __init__(self, runtime_dir: Path):
        self.path = runtime_dir / RELEASES_FILE
        self.lock_path = runtime_dir / (RELEASES_FILE + ".lock")
        self._signature: tuple | None = None
        self._records: dict[str, dict] = {}

    def signature(self) -> tuple | None:
        """Changes whenever the file is rewritten; None while there is none."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def records(self) -> dict[str, dict]:
        """The current records, re-read only when the file changed."""
        signature = self.signature()
        if signature != self._signature:
            self._records = self._read() if signature is not None else {}
            self._signature = signature
        return self._records

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_bytes())
            records = data["releases"]
            if not isinstance(records, dict):
                raise TypeError("releases is not a map")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable releases release nothing: the guard stays on the safe side.
            log.error("ignoring the release records in %s: %s", self.path, exc)
            return {}
        return {oid: record for oid, record in records.items()
                if isinstance(oid, str) and isinstance(record, dict)}

    def add(self, released: dict[str, str]) -> int:
        """Record ``{blob id: path}``; the number of new records."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise GuardStoreError(f"{self.lock_path}: {exc.strerror}") from None
        try:
            give_to_directory_owner(fd, self.lock_path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            now = round(time.time(), 3)
            new = 0
            for oid, path in released.items():
                new += oid not in records
                records.pop(oid, None)
                records[oid] = {"path": path, "released": now}  # newest last
            while len(records) > MAX_RELEASES:
                records.pop(next(iter(records)))
            write_atomic(self.path, json.dumps({"version": 1, "releases": records},
                                               indent=1).encode(), durable=True)
            return new
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise GuardStoreError(f"{self.path}: no space left to record the release") \
                    from None
            raise GuardStoreError(f"{self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
