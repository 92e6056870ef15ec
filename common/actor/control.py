"""Client side of every actor's control socket (used by actorctl, the runner and tests)."""
from __future__ import annotations

import glob
import os

import zmq

from gitsieve.common.config.loader import Config
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import ControlReply, ControlRequest


class Unreachable(Exception):
    pass


def request(config: Config, actor_id: str, command: str, args: dict | None = None,
            timeout: float = 2.0) -> ControlReply:
    """Send one control command to ``actor_id``; raise Unreachable on timeout."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(config.endpoints.control(actor_id))
        sock.send(messages.encode(ControlRequest(command=command, args=args or {})))
        if not sock.poll(int(timeout * 1000)):
            raise Unreachable(f"{actor_id} did not answer within {timeout}s")
        reply = messages.decode(sock.recv())
        if not isinstance(reply, ControlReply):
            raise Unreachable(f"{actor_id} answered with {type(reply).__name__}")
        return reply
    finally:
        sock.close(linger=0)


def known_actors(config: Config) -> list[str]:
    """Actor ids with a control socket file in the runtime directory."""
    names = []
    for path in sorted(glob.glob(config.endpoints.control_dir_glob())):
        names.append(os.path.basename(path)[len("ctl-"):-len(".sock")])
    return names
