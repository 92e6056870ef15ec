"""What ``gitsieve run`` re-executes into (see runner.reexec_marked): the fork server's
first lines, run before anything is imported.

No actor speaks TLS, yet hashlib prefers OpenSSL's ``_hashlib`` (and asyncio, which
``sh`` imports, would import ``ssl``): they map libcrypto and libssl into the fork server,
and every actor copied part of their pages (about 0.4 MiB each) as OpenSSL initialised.
Both are refused here, in this process only: hashlib uses Python's own sha1/sha256, which
is all gitsieve asks of it.  asyncio and importlib.metadata are replaced by stand-ins
(below).  Other commands, and the in-process CLI, keep the real modules.
"""
import sys
import types

for _unused_by_actors in ("ssl", "_ssl", "_hashlib"):
    sys.modules.setdefault(_unused_by_actors, None)


# sh imports asyncio (3.5 MiB of objects, with ssl refused) only to ask, at each command,
# whether an event loop is running, and importlib.metadata (1.8 MiB, the email package
# with it) only to read its own version once.  No actor runs an event loop or asks a
# version: the fork server holds these two stand-ins instead, and shares 5 MiB less with
# every fork.  The answers are the real ones here: no running loop; sh's version unknown.
def _no_running_loop():
    raise RuntimeError("no running event loop")


class _LoopOnly:
    """asyncio.Queue and asyncio.Event: sh makes them only inside a running event loop."""

    def __init__(self, *_args, **_kwargs):
        raise RuntimeError("gitsieve's actors run no asyncio event loop")


class _PackageNotFoundError(ModuleNotFoundError):
    pass


def _no_version(name: str) -> str:
    raise _PackageNotFoundError(name)


_asyncio = types.ModuleType("asyncio", "gitsieve's fork server: no event loop runs here")
_asyncio.get_running_loop = _no_running_loop
_asyncio.Queue = _asyncio.Event = _LoopOnly
_metadata = types.ModuleType("importlib.metadata", "gitsieve's fork server: no versions")
_metadata.version, _metadata.PackageNotFoundError = _no_version, _PackageNotFoundError
sys.modules.setdefault("asyncio", _asyncio)
sys.modules.setdefault("importlib.metadata", _metadata)

from gitsieve.common.actor.heap import share_one_malloc_arena  # noqa: E402

# Before the first thread (sh's, as git runs while the config loads): glibc would give it
# an arena of its own, and every fork would inherit that arena and copy its pages.
share_one_malloc_arena()

from gitsieve.common.tools.cli import main  # noqa: E402  (after the refusals, on purpose)

if __name__ == "__main__":
    raise SystemExit(main())
