"""Property-based fuzzing (hypothesis) of every socket a running ``gitsieve run`` binds, with
every message type of the protocol, well-formed and not (issue 14).

Any process of the same uid can reach these sockets; the 0700 runtime directory is the
boundary, so this is about robustness: no frame may crash or wedge an actor.  For each bound
socket the fuzzer sends generated frames: each protocol message built from its field types
(valid, or with a field's value, name or type mangled), raw msgpack, random bytes and
multipart messages.  Afterwards: no actor crashed or was restarted (same pids), bad frames
were counted, RSS growth is reported, and a person's edit still reaches the remote; the
time that takes after each socket's fuzz is reported as the time to recover.  Bounded to
about a minute: ``FRAMES_PER_SOCKET`` (100) examples per socket (``GITSIEVE_FUZZ_FRAMES`` to
change it), no shrinking.

A fake worker on a stage's ROUTER that announces credit is handed real changes and drops
them; the router forgets it once it is gone, and the watcher's periodic reconcile
(``reconcile_interval``, 10 s here, 60 s by default) finds those changes again: that socket's
recovery time shows it.

Sockets the fuzzer leaves alone: ``batches`` (a PUSH: a peer can only take batches away,
which the watcher's reconcile repairs) and commands that legitimately change what gitsieve
does (``stop``, ``pause``)."""
from __future__ import annotations

import dataclasses
import enum
import os
import time
import types
import typing
from collections import Counter

import msgpack
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import Gitsieve, create_workspace, wait_for
from gitsieve.common.actor import control
from gitsieve.common.protocol import messages, trail
from gitsieve.common.protocol.messages import MESSAGE_TYPES, PROTOCOL_VERSION
from gitsieve.common.tools.runner import actor_ids

# Minutes of real time by design (issue 8 and 14 ask for them), more on a loaded machine.
pytestmark = pytest.mark.timeout(900)
FRAMES_PER_SOCKET = int(os.environ.get("GITSIEVE_FUZZ_FRAMES", "100"))
HARMFUL_COMMANDS = {"stop", "pause"}
COMMANDS = sorted({"status", "pending", "explain", "flush", "learned", "forget", "held",
                   "resume", "reconcile"})

# ----- strategies -----------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
wire_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=12)
paths = st.one_of(st.sampled_from(["README.md", "docs/a.md", ".git/hooks/post-commit",
                                   "../outside", "/etc/passwd", "a//b", "d/" + "n" * 256,
                                   "x" * 5000, ""]),
                  st.text(min_size=1, max_size=60).filter(lambda p: "\0" not in p))


def value_for(hint) -> st.SearchStrategy:
    """A strategy for a field of the protocol, from its annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(value_for(option) for option in typing.get_args(hint)))
    if hint is type(None):
        return st.none()
    if origin is tuple:
        args = typing.get_args(hint)
        item = value_for(args[0]) if args else wire_values
        return st.lists(item, max_size=4).map(tuple)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if dataclasses.is_dataclass(hint):
        return builds(hint)
    if hint is str:
        return st.text(max_size=40)
    if hint is int:
        return st.integers(-2 ** 63, 2 ** 63 - 1)
    if hint is float:
        return st.floats(allow_nan=True)
    if hint is bool:
        return st.booleans()
    if hint is dict:
        return st.dictionaries(st.text(max_size=12), wire_values, max_size=4)
    return wire_values


def builds(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        if field.name == "path" or field.name == "paths":
            fields[field.name] = paths if field.name == "path" else st.lists(
                paths, max_size=3).map(tuple)
        elif cls is messages.ControlRequest and field.name == "command":
            fields[field.name] = st.sampled_from(COMMANDS) | st.text(max_size=20).filter(
                lambda c: c not in HARMFUL_COMMANDS)
        else:
            fields[field.name] = value_for(hints[field.name])
    return st.builds(cls, **fields)


STEP = st.one_of(*(builds(cls) for cls in trail.STEP_TYPES.values()))


def encoded(message) -> bytes:
    return messages.encode(message)


def mangled(draw, message) -> bytes:
    """The message's wire form with one field's value replaced, one dropped or one added."""
    body = messages._fields_to_wire(message)
    how = draw(st.sampled_from(["value", "drop", "add", "version", "type"]))
    if how == "value" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(wire_values)
    elif how == "drop" and body:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif how == "add":
        body[draw(st.text(max_size=10))] = draw(wire_values)
    name, version = type(message).__name__, PROTOCOL_VERSION
    if how == "version":
        version = draw(wire_values)
    elif how == "type":
        name = draw(st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=12))
    return msgpack.packb([version, name, body], use_bin_type=True,
                         unicode_errors="surrogateescape")


@st.composite
def frames(draw, favourite: type | None):
    """(label, frames): one generated message for a socket that expects ``favourite``."""
    kind = draw(st.sampled_from(["message", "message", "mangled", "raw-msgpack", "bytes",
                                 "multipart"]))
    cls = favourite if favourite and draw(st.booleans()) else draw(
        st.sampled_from(list(MESSAGE_TYPES.values())))
    if kind in ("message", "mangled"):
        message = draw(builds(cls))
        frame = encoded(message) if kind == "message" else mangled(draw, message)
        return f"{cls.__name__}{'' if kind == 'message' else ' (mangled)'}", [frame]
    if kind == "raw-msgpack":
        return "raw msgpack", [msgpack.packb(draw(wire_values), use_bin_type=True)]
    if kind == "bytes":
        return "random bytes", [draw(st.binary(max_size=300))]
    parts = draw(st.lists(st.binary(max_size=60), min_size=2, max_size=4))
    return "multipart", parts


# ----- the running gitsieve ---------------------------------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    ws = create_workspace(base)
    ws.config("""
        [debounce]
        allow = 0.2
        default = 0.3
        [limits]
        cooldown_seconds = 0
        [health]
        interval = 0.5
        [watcher]
        reconcile_interval = 10
        [runtime]
        log_level = "ERROR"
    """)
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(ws, base / "gitsieve.log")
    try:
        gitsieve.wait_running()
        yield ws, gitsieve
    finally:
        gitsieve.stop()


def actor_processes(cfg) -> dict[str, int]:
    return {actor_id: control.request(cfg, actor_id, "status", timeout=5).data["pid"]
            for actor_id in actor_ids(cfg)}


def rss_mb(pids) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / (1024 * 1024)


def remote_has(ws, rel: str, text: str) -> bool:
    out = ws.git("--git-dir", str(ws.remote), "show", f"main:{rel}", check=False)
    return out == text


def test_fuzz_every_bound_socket(running):
    ws, gitsieve = running
    cfg = ws.load()
    ids = actor_ids(cfg)
    pids = actor_processes(cfg)
    rss_before = rss_mb(pids.values())
    ep = cfg.endpoints
    # (label, endpoint, socket type to connect with, message type the socket expects)
    targets = [("decisions (debouncer PULL)", ep.decisions, zmq.PUSH, messages.Decision),
               ("heartbeat (health PULL)", ep.heartbeat, zmq.PUSH, messages.Heartbeat)]
    for stage in ("l1", "l2", "l3"):
        targets.append((f"stage_in {stage} (router PULL)", ep.stage_in(stage), zmq.PUSH,
                        messages.Change))
        targets.append((f"stage_out {stage} (router ROUTER)", ep.stage_out(stage),
                        zmq.DEALER, messages.Ready))
    for actor_id in ids:
        targets.append((f"control {actor_id} (REP)", ep.control(actor_id), zmq.REQ,
                        messages.ControlRequest))
    for name, endpoint in (("commits (executor PUB)", ep.commits),
                           ("health (health PUB)", ep.health), ("feed (debouncer PUB)",
                                                                ep.feed)):
        targets.append((name, endpoint, zmq.XSUB, None))

    sent: Counter = Counter()
    recovery: dict[str, float] = {}
    context = zmq.Context()
    try:
        for number, (label, endpoint, kind, favourite) in enumerate(targets):
            fuzz_socket(context, label, endpoint, kind, favourite, sent)
            # recovery: a person's edit made now reaches the remote
            rel, text = f"after-fuzz/{number:02d}.md", f"edited after fuzzing {label}\n"
            started = time.monotonic()
            ws.write(rel, text)
            wait_for(lambda: remote_has(ws, rel, text), 60, 0.05, f"an edit after {label}")
            recovery[label] = time.monotonic() - started
    finally:
        context.destroy(linger=0)

    after = actor_processes(cfg)
    crashed = sorted(a for a in ids if after.get(a) != pids.get(a))
    restarts = control.request(cfg, "health", "status").data.get("restarts") or {}
    bad = {a: control.request(cfg, a, "status").data.get("bad_frames", 0) for a in ids}
    rss_after = rss_mb(after.values())
    per_socket = Counter()
    for (label, _), count in sent.items():
        per_socket[label] += count
    print(f"\nfuzzed {sum(sent.values())} frames over {len(targets)} sockets:")
    for label, count in per_socket.items():
        kinds = ", ".join(f"{kind} {n}" for (lab, kind), n in sorted(sent.items())
                          if lab == label)
        print(f"  {label}: {count} ({kinds}); an edit synced {recovery[label]:.2f}s after")
    print(f"actor crashes: {len(crashed)} {crashed}; restarts seen: {restarts}; bad frames "
          f"counted: {bad}; RSS of all actors {rss_before:.1f} -> {rss_after:.1f} MB "
          f"({rss_after - rss_before:+.1f})")
    assert not crashed and not restarts
    assert bad["debouncer"] > 0 and bad["health"] > 0 and bad["router"] > 0
    assert all(bad[a] > 0 for a in ids)  # every control socket counted its bad frames


def fuzz_socket(context, label, endpoint, kind, favourite, sent: Counter) -> None:
    sock = context.socket(kind)
    sock.linger = 0
    sock.sndtimeo = 1000
    sock.rcvtimeo = 2000
    sock.connect(endpoint)
    time.sleep(0.05)

    @settings(max_examples=FRAMES_PER_SOCKET, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(frames(favourite))
    def send_one(example):
        nonlocal sock
        name, parts = example
        if kind == zmq.XSUB:
            parts = [b"\x01" + parts[0]] + parts[1:]  # subscriptions, and garbage as such
        elif favourite is messages.Change and name == "Change" and len(parts) == 1:
            change = messages.decode(parts[0]) if _decodes(parts[0]) else None
            if change is not None:  # a well-formed stage frame pair: route, then body
                parts = messages.stage_frames(change, priority=False)
        try:
            sock.send_multipart(parts)
        except zmq.ZMQError:
            return
        sent[(label, name)] += 1
        if kind == zmq.REQ:  # REP answers every request, bad ones with an error
            try:
                sock.recv()
            except zmq.Again:
                pytest.fail(f"{label} did not answer a {name} frame")
        elif kind == zmq.DEALER:
            while sock.poll(0):
                sock.recv_multipart()  # changes the router hands a fake worker

    try:
        send_one()
    finally:
        sock.close(linger=0)


def _decodes(frame: bytes) -> bool:
    try:
        messages.decode(frame)
    except messages.BadMessage:
        return False
    return True
