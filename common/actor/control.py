"""Client side of every actor's control socket (used by actorctl, the runner and tests)."""
from __future__ import annotations

import glob
import os
import socket

import zmq

from gitsieve.common.config.loader import Config
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import ControlReply, ControlRequest


class Unreachable(Exception):
    pass


def request(config: Config, actor_id: str, command: str, args: dict | None = None,
            timeout: float = 2.0, listening: bool = False) -> ControlReply:
    """Send one control command to ``actor_id``; raise Unreachable on timeout, BadMessage
    when the reply cannot be decoded.  With ``listening`` raise Unreachable at once when
    nothing listens on the socket now (a person asking); without, an actor still starting
    has ``timeout`` to bind it."""
    endpoint = config.endpoints.control(actor_id)
    if listening and endpoint.startswith("ipc://"):
        _check_listening(endpoint[len("ipc://"):], actor_id)
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        sock.send(messages.encode(ControlRequest(command=command, args=args or {})))
        if not sock.poll(int(timeout * 1000)):
            raise Unreachable(f"{actor_id} did not answer within {timeout}s")
        reply = messages.decode(sock.recv())
        if not isinstance(reply, ControlReply):
            raise Unreachable(f"{actor_id} answered with {type(reply).__name__}")
        return reply
    finally:
        sock.close(linger=0)


def _check_listening(path: str, actor_id: str) -> None:
    """A socket file left by a killed actor refuses connections: say so without waiting
    out the timeout (ZeroMQ would queue the request and wait)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unreachable(f"{actor_id} is not listening ({exc.strerror})") from None
    except OSError:
        return  # e.g. no permission: the request itself tells
    finally:
        probe.close()


def listening(config: Config, actor_id: str) -> bool:
    """Whether ``actor_id``'s control socket accepts connections now: a socket file alone
    does not say, a stopped or killed gitsieve leaves them behind."""
    endpoint = config.endpoints.control(actor_id)
    if not endpoint.startswith("ipc://"):
        return True  # tcp: only a request can tell
    try:
        _check_listening(endpoint[len("ipc://"):], actor_id)
    except Unreachable:
        return False
    return True


def any_listening(config: Config) -> bool:
    """Whether any actor's control socket accepts connections."""
    return any(listening(config, actor_id) for actor_id in known_actors(config))


def known_actors(config: Config) -> list[str]:
    """Actor ids with a control socket file in the runtime directory."""
    names = []
    for path in sorted(glob.glob(config.endpoints.control_dir_glob())):
        names.append(os.path.basename(path)[len("ctl-"):-len(".sock")])
    return names
