"""A helper client as an unprivileged gitsieve runs it, for tests/test_helper.py: run as an
ordinary user (``runuser -u USER -- /usr/bin/python3 helper_probe.py SOCKET WORKSPACE``),
it prints one JSON line per outcome and event until its stdin closes.

Lines: ``{"kind": "unavailable", "text"}``, ``{"kind": "refused", "reason", "text"}``,
``{"kind": "subscribed", "workspace", "path"}``, then ``write`` / ``name_op`` /
``overflow`` / ``unmarked`` / ``gap`` events.  A write also says whether the identity the
helper sent equals the identity this unprivileged process computes for the path now.  A
line ``sync`` on stdin asks for a Sync and prints ``{"kind": "synced"}`` after the events
it brought.
"""
from __future__ import annotations

import json
import logging
import os
import select
import sys

from gitsieve.common.helper.client import (
    Gap,
    HelperClient,
    HelperUnavailable,
    SubscriptionRefused,
)
from gitsieve.common.judge.attribution.events import NameOp, Overflow, Unmarked, Write
from gitsieve.common.judge.attribution.file_identity import FileIdentifier, FileIdentity


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def describe(event, workspace: str, identify: FileIdentifier) -> dict:
    if isinstance(event, Gap):
        return {"kind": "gap", "since": event.since_mono, "until": event.until_mono,
                "reason": event.reason.name}
    if isinstance(event, Overflow):
        return {"kind": "overflow", "source": event.source.name, "dropped": event.dropped}
    path = os.fsdecode(event.path)
    if isinstance(event, Unmarked):
        return {"kind": "unmarked", "path": path}
    found = {"kind": "write" if isinstance(event, Write) else "name_op", "path": path,
             "op": event.op.name, "pid": event.pid, "mono": event.mono,
             "lineage": [{"pid": e.pid, "ppid": e.ppid, "cmdline": e.cmdline, "uid": e.uid,
                          "inherited": e.inherited, "exec_lost": e.exec_lost}
                         for e in event.lineage]}
    if isinstance(event, Write):
        now = identify.of_path(os.path.join(workspace, path))
        found["identity_matches"] = now == FileIdentity.decode(event.identity)
    elif isinstance(event, NameOp):
        found["is_dir"] = event.is_dir
    return found


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    socket_path, workspace = sys.argv[1], sys.argv[2]
    client = HelperClient(socket_path, timeout=float(os.environ.get("PROBE_TIMEOUT", "2")))
    try:
        client.connect()
        subscribed = client.subscribe(workspace)
    except HelperUnavailable as exc:
        emit(kind="unavailable", text=str(exc))
        return 0
    except SubscriptionRefused as exc:
        emit(kind="refused", reason=exc.reason.name, text=exc.text)
        return 0
    emit(kind="subscribed", workspace=subscribed.workspace,
         path=os.fsdecode(subscribed.path), uid=os.getuid())
    identify = FileIdentifier()
    commands = os.fdopen(sys.stdin.fileno(), "rb", buffering=0)
    while True:
        fds = [commands.fileno()] + ([client.fileno()] if client.fileno() >= 0 else [])
        ready, _, _ = select.select(fds, [], [], min(client.wakeup_in(), 0.5))
        synced = False
        if commands.fileno() in ready:
            line = commands.readline()
            if not line:
                return 0
            if line.strip() == b"sync":
                try:
                    client.sync()
                    synced = True
                except HelperUnavailable as exc:
                    emit(kind="sync_failed", text=str(exc))
        for event in client.read_events():
            emit(**describe(event, workspace, identify))
        if synced:
            emit(kind="synced")


if __name__ == "__main__":
    sys.exit(main())
