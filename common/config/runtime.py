"""The runtime directory: sockets, lock, logs, learned paths, metrics.

It must be private: a directory (not a symlink) owned by the work tree's owner, mode 0700,
and either empty or holding gitsieve's marker file (so a restart finds its own directory,
and a directory someone else uses, ``/tmp`` say, is refused instead of being taken over).
gitsieve creates it when missing (and, run as root on someone else's tree, gives it to the
tree's owner), and never changes the mode or owner of a directory that is not its own.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from gitsieve.common.config.endpoints import private_base
from gitsieve.common.config.loader import Config, ConfigError

MARKER = ".gitsieve-runtime"


class RuntimeDirError(ConfigError):
    """A runtime directory gitsieve refuses to use; ``str()`` says why and what to do."""


def _owner_of(config: Config) -> int:
    return os.stat(config.workspace).st_uid if os.geteuid() == 0 else os.geteuid()


def give_to_directory_owner(fd: int, directory: Path) -> None:
    """Root writing a file into someone else's (runtime) directory: the file is theirs, so
    their own gitsieve can use it later."""
    if os.geteuid() != 0:
        return
    info = os.stat(directory)
    if info.st_uid != 0 and os.fstat(fd).st_uid != info.st_uid:
        os.fchown(fd, info.st_uid, info.st_gid)


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` through a private temporary file beside it (mode 0600,
    owned as its directory is): a reader sees the old file or the new one, never half.
    ``durable``: the data reaches the disk before the rename (a crash keeps either
    version, never an empty file)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        give_to_directory_owner(fd, path.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _refuse(path: Path, why: str) -> RuntimeDirError:
    return RuntimeDirError(str(path), f"runtime directory refused: {why}; set [runtime] dir "
                                      "to an empty directory of your own, or leave it unset")


def check_private(path: Path, owner: int) -> None:
    """Refuse ``path`` unless it is gitsieve's private directory (see the module doc)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise _refuse(path, exc.strerror) from None
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, "it is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "not a directory")
    if info.st_uid != owner:
        raise _refuse(path, f"owned by uid {info.st_uid}, not {owner}")
    try:
        entries = os.listdir(path)
    except OSError as exc:
        raise _refuse(path, exc.strerror) from None
    if entries and MARKER not in entries:
        raise _refuse(path, "not empty and not gitsieve's")
    if info.st_mode & 0o077:
        if MARKER not in entries:
            raise _refuse(path, f"mode {stat.S_IMODE(info.st_mode):o} lets others in")
        os.chmod(path, 0o700)  # our own directory, loosened by someone: private again


def prepare_runtime_dir(config: Config) -> None:
    """Create or check the runtime directory (and its short ipc alias if one is needed)."""
    path = config.runtime_dir
    owner = _owner_of(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        if owner != os.geteuid():
            os.chown(path, owner, os.stat(config.workspace).st_gid)
    except FileExistsError:
        pass  # checked below
    except OSError as exc:
        raise _refuse(path, exc.strerror) from None
    check_private(path, owner)
    marker = path / MARKER
    if not marker.exists():
        marker.write_text("gitsieve runtime directory: sockets, lock, logs\n")
    for sub in (config.log_dir,):
        sub.mkdir(mode=0o700, exist_ok=True)
    if owner != os.geteuid():  # root on someone else's tree: what stays here is theirs
        group = os.stat(path).st_gid
        for made in (marker, config.log_dir):
            os.chown(made, owner, group)
    _prepare_alias(config)


def _prepare_alias(config: Config) -> None:
    ipc_dir = Path(config.endpoints.ipc_dir)
    if ipc_dir == config.runtime_dir:
        return
    base = ipc_dir.parent
    if base == private_base() and not os.path.lexists(base):
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass  # made meanwhile; checked below
        except OSError as exc:
            raise _refuse(base, f"cannot make a private directory for socket aliases: "
                                f"{exc.strerror}") from None
    info = os.lstat(base)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o077):
        raise _refuse(base, "the directory for socket aliases is not private to this user "
                            "(set XDG_RUNTIME_DIR, or remove it)")
    try:
        os.symlink(config.runtime_dir, ipc_dir)
    except FileExistsError:
        if os.readlink(ipc_dir) != str(config.runtime_dir):
            os.unlink(ipc_dir)  # ours (the base is private): point it here again
            os.symlink(config.runtime_dir, ipc_dir)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise _refuse(ipc_dir, exc.strerror) from None
