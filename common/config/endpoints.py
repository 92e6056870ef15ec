"""Every ZeroMQ address, derived from the runtime directory.

ipc socket paths must fit ``sun_path`` (108 bytes).  A runtime directory too deep for that
is reached through a short alias: a symlink in a directory only this user owns
(``$XDG_RUNTIME_DIR``, else ``/tmp/gitsieve-UID``), never a predictable name another user
could create first.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux; keep room for the socket file name.
MAX_IPC_DIR = 80


@dataclass(frozen=True)
class Endpoints:
    ipc_dir: str

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.ipc_dir}/{name}.sock"

    def stage_in(self, stage: str) -> str:
        """Producers PUSH here; the router's PULL binds it."""
        return self._ipc(f"{stage}-in")

    def stage_out(self, stage: str) -> str:
        """The router's ROUTER binds it; the stage's workers DEALER-connect."""
        return self._ipc(f"{stage}-out")

    @property
    def decisions(self) -> str:
        return self._ipc("decisions")

    @property
    def batches(self) -> str:
        return self._ipc("batches")

    @property
    def commits(self) -> str:
        return self._ipc("commits")

    @property
    def health(self) -> str:
        return self._ipc("health")

    @property
    def heartbeat(self) -> str:
        return self._ipc("heartbeat")

    @property
    def feed(self) -> str:
        """Live decision stream (``actorctl tail``): PUB bound by the debouncer."""
        return self._ipc("feed")

    def control(self, actor_id: str) -> str:
        return self._ipc(f"ctl-{actor_id}")

    def control_dir_glob(self) -> str:
        return os.path.join(self.ipc_dir, "ctl-*.sock")


# what an alias adds to its base directory: "/gitsieve-" and 12 hex digits
_ALIAS_LENGTH = 22


def private_base() -> Path:
    """A directory only this user owns, for short socket aliases: ``$XDG_RUNTIME_DIR`` if it
    is ours, private and short enough, else ``/tmp/gitsieve-UID`` (made 0700; it must not
    be a symlink and must be ours and private when it exists already)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and len(xdg) + _ALIAS_LENGTH <= MAX_IPC_DIR and _private(Path(xdg)):
        return Path(xdg)
    return Path(f"/tmp/gitsieve-{os.getuid()}")


def _private(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and info.st_mode & 0o077 == 0)


def ipc_dir_for(runtime_dir: Path) -> str:
    """The runtime dir itself when short enough, else its alias in :func:`private_base`."""
    text = str(runtime_dir)
    if len(text) <= MAX_IPC_DIR:
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return str(private_base() / f"gitsieve-{digest}")
