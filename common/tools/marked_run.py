"""What ``gitsieve run`` re-executes into (see runner.reexec_marked): the fork server's
first lines, run before anything is imported.

No actor speaks TLS, yet ``sh`` imports asyncio, which imports ``ssl`` when it can, and
hashlib prefers OpenSSL's ``_hashlib``: together they map libcrypto and libssl into the
fork server, and every actor copies part of their pages (about 0.4 MiB each) as OpenSSL
initialises.  Both are refused here, in this process only: asyncio then runs without ssl,
and hashlib uses Python's own sha1/sha256, which is all gitsieve asks of it.  Other
commands, and the in-process CLI, keep them.
"""
import sys

for _unused_by_actors in ("ssl", "_ssl", "_hashlib"):
    sys.modules.setdefault(_unused_by_actors, None)

from gitsieve.common.tools.cli import main  # noqa: E402  (after the refusals, on purpose)

if __name__ == "__main__":
    raise SystemExit(main())
