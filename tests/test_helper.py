"""``gitsieve helper`` as a real root process on a temporary socket, clients as real ordinary
users (useradd, runuser, the system python with gitsieve installed for them): authorisation,
events with pids and lineage, scoping, the Sync barrier, malformed requests, slow clients,
restarts, refusal to start unprivileged; and the HelperAttributor on top of it (gaps are
UNKNOWN, never USER; it reconnects by itself)."""
from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

from conftest import ROOT, USER_PYTHON, OrdinaryUser, temporary_user, wait_for
from gitsieve.common.helper.client import HelperClient, HelperUnavailable
from gitsieve.common.helper.protocol import (
    HEADER,
    MAX_EVENT,
    PROTOCOL_VERSION,
    REPLIES_AND_EVENTS,
    ErrorCode,
    FrameReader,
    Hello,
    Subscribe,
    decode,
    encode,
)
from gitsieve.common.judge.attribution.base import SYSTEM, UNKNOWN, USER
from gitsieve.common.judge.attribution.events import (
    LineageEntry,
    Overflow,
    OverflowSource,
    Write,
)
from gitsieve.common.judge.attribution.exact import WriterRules
from gitsieve.common.judge.attribution.helper import HelperAttributor
from gitsieve.common.judge.attribution.write_history import Missed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the helper runs as root")

PROBE = ROOT / "tests" / "helper_probe.py"
PARENT_MARK = "gsattrib-distinctive-parent"
# As the user: a parent with a distinctive command line runs sh -c 'date > f' and prints
# the child's pid.
PARENT = r"""
import subprocess, sys
child = subprocess.Popen(["sh", "-c", "date > " + sys.argv[2]])
child.wait()
print(child.pid, flush=True)
"""


class Helper:
    """``gitsieve helper`` as a real root process on ``socket_path``."""

    def __init__(self, socket_path: Path, *args: str):
        self.socket_path = socket_path
        self.log = socket_path.parent / f"helper-{time.monotonic_ns()}.log"
        self.log_handle = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitsieve.common.tools.cli", "helper", "--socket",
             str(socket_path), *args], cwd=ROOT, stdout=self.log_handle,
            stderr=subprocess.STDOUT)
        try:
            wait_for(self._listening, 20, message=f"the helper listening on {socket_path}")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"helper exited {self.proc.returncode}: "
                                 f"{self.log.read_text()}")
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(self.socket_path)) == 0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_handle.close()
        return self.proc.returncode


@pytest.fixture
def run_dir():
    """A root directory every user may traverse, for the helper's socket."""
    path = Path(tempfile.mkdtemp(prefix="gitsieve-helper-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_helper():
    started: list[Helper] = []

    def start(socket_path: Path, *args: str) -> Helper:
        helper = Helper(socket_path, *args)
        started.append(helper)
        return helper
    yield start
    for helper in started:
        helper.stop()


@pytest.fixture
def helper(run_dir, start_helper) -> Helper:
    return start_helper(run_dir / "helper.sock")


@pytest.fixture
def another_user(user_site):
    """A second ordinary user (removed afterwards, with every process of theirs)."""
    with temporary_user(user_site, "gsv") as user:
        yield user


class Probe:
    """``helper_probe.py`` run as ``user``: its JSON lines, read with a deadline."""

    def __init__(self, user: OrdinaryUser, socket_path: Path, workspace: Path,
                 timeout: float = 2.0):
        self.proc = user.popen(USER_PYTHON, str(PROBE), str(socket_path), str(workspace),
                               env={"PROBE_TIMEOUT": str(timeout)}, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.seen: list[dict] = []
        self._buffer = b""

    def next(self, matches, within: float = 15.0) -> dict:
        """The next line for which ``matches(line)`` is true (lines before it are kept in
        ``seen``); AssertionError if none comes within ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = json.loads(raw)
                self.seen.append(line)
                if matches(line):
                    return line
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError(f"no matching line within {within}s; seen {self.seen}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"probe ended; seen {self.seen}; "
                                     f"stderr {self.proc.stderr.read().decode()}")
            self._buffer += chunk

    def sync(self) -> None:
        self.proc.stdin.write(b"sync\n")
        self.proc.stdin.flush()

    def close(self) -> str:
        """Stop the probe; its stderr."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # runuser and the probe under it
                self.proc.wait()
        return self.proc.stderr.read().decode()


@pytest.fixture
def probes():
    made: list[Probe] = []

    def make(*args, **kwargs) -> Probe:
        probe = Probe(*args, **kwargs)
        made.append(probe)
        return probe
    yield make
    for probe in made:
        probe.close()


def is_path(kind, path):
    return lambda line: line["kind"] == kind and line.get("path") == path


def first(line) -> bool:
    return True


def test_owner_gets_writes_with_pid_and_lineage_and_nothing_else(
        helper, ordinary_user, user_workspace, probes, run_dir):
    ws = user_workspace.root
    probe = probes(ordinary_user, helper.socket_path, ws)
    subscribed = probe.next(first)
    assert subscribed["kind"] == "subscribed" and subscribed["path"] == str(ws)
    outside = ws.parent / "elsewhere.txt"
    for path in (ws / ".git" / "index", outside):
        ordinary_user.run("sh", "-c", f"date > {path}").check_returncode()
    run = ordinary_user.run(USER_PYTHON, "-c", PARENT, PARENT_MARK, str(ws / "f"))
    writer_pid = int(run.stdout)
    write = probe.next(lambda line: line["kind"] == "write" and line["pid"] == writer_pid)
    assert write["path"] == "f"
    assert write["identity_matches"]  # the unprivileged client finds the file by handle
    lineage = write["lineage"]
    assert lineage[0]["pid"] == writer_pid and lineage[0]["uid"] == ordinary_user.uid
    parent = next(entry for entry in lineage if PARENT_MARK in entry["cmdline"])
    assert lineage.index(parent) >= 1 and parent["uid"] == ordinary_user.uid
    # the helper does not classify; the client does, with its own rules
    entries = [LineageEntry(e["pid"], e["ppid"], e["cmdline"], e["uid"], "", False,
                            e["exec_lost"], e["inherited"]) for e in lineage]
    assert WriterRules([re.escape(PARENT_MARK)]).classify(entries).writer == SYSTEM
    assert WriterRules(["some-agent"]).classify(entries).writer == USER
    assert not [line for line in probe.seen if line.get("path", "").startswith(".git")]
    assert not [line for line in probe.seen if "elsewhere" in line.get("path", "")]


def test_sync_returns_after_every_write_queued_before_it(
        helper, ordinary_user, user_workspace, probes):
    ws = user_workspace.root
    probe = probes(ordinary_user, helper.socket_path, ws)
    assert probe.next(first)["kind"] == "subscribed"
    for n in range(20):
        ordinary_user.run("sh", "-c", f"echo {n} > {ws}/s{n}").check_returncode()
        probe.sync()
        # the write comes before the barrier's answer, every time
        probe.next(lambda line: line["kind"] in ("write", "synced"))
        assert probe.seen[-1]["kind"] == "write" and probe.seen[-1]["path"] == f"s{n}"
        probe.next(lambda line: line["kind"] == "synced")


def test_another_user_cannot_subscribe_to_the_first_users_workspace(
        helper, ordinary_user, user_workspace, another_user, probes):
    ws = user_workspace.root
    refused = probes(another_user, helper.socket_path, ws).next(first)
    assert refused["kind"] == "refused" and refused["reason"] == "NOT_OWNER"
    assert f"uid {ordinary_user.uid}" in refused["text"] and "not to you" in refused["text"]
    # nor through a symlink of their own pointing at it
    link = another_user.home / "link"
    another_user.run("ln", "-s", str(ws), str(link)).check_returncode()
    refused = probes(another_user, helper.socket_path, link).next(first)
    assert refused["kind"] == "refused" and refused["reason"] == "NOT_A_DIRECTORY"


def test_a_socket_not_owned_by_root_is_ignored_with_a_warning(
        ordinary_user, user_workspace, another_user, probes, run_dir):
    fake_socket = another_user.home / "helper.sock"
    server = another_user.popen(
        USER_PYTHON, "-c", "import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
        "s.bind(sys.argv[1]); s.listen(); print('up', flush=True); time.sleep(60)",
        str(fake_socket), stdout=subprocess.PIPE)
    try:
        assert server.stdout.readline() == b"up\n"
        probe = probes(ordinary_user, fake_socket, user_workspace.root)
        line = probe.next(first)
        assert line["kind"] == "unavailable" and "not root: ignored" in line["text"]
        warnings = [w for w in probe.close().splitlines() if w.startswith("WARNING")]
        assert len(warnings) == 1 and "not root" in warnings[0]
        # moved into a root directory and chowned to root, the file passes; the peer does not
        planted = run_dir / "helper.sock"
        os.rename(fake_socket, planted)
        os.chown(planted, 0, 0)
        planted.chmod(0o666)
        line = probes(ordinary_user, planted, user_workspace.root).next(first)
        assert line["kind"] == "unavailable"
        assert f"runs as uid {another_user.uid}, not root" in line["text"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # runuser and the user's python under it
        server.wait()


def test_a_socket_that_does_not_answer_gives_one_warning(run_dir, caplog):
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(run_dir / "helper.sock"))
    silent.listen()  # connections queue in the backlog; nobody ever answers
    try:
        client = HelperClient(str(run_dir / "helper.sock"), timeout=0.5)
        with caplog.at_level(logging.WARNING), pytest.raises(HelperUnavailable):
            client.connect()
    finally:
        silent.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "did not answer within 0.5 s" in warnings[0].getMessage()


def raw_client(socket_path) -> tuple[socket.socket, FrameReader]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(socket_path))
    return sock, FrameReader(MAX_EVENT)


def replies(sock, reader, count=1):
    found = []
    while len(found) < count:
        data = sock.recv(65536)
        if not data:
            break
        found += [m for m in (decode(b, REPLIES_AND_EVENTS) for b in reader.feed(data))
                  if type(m).__name__ != "Heartbeat"]
    return found


def frame(value) -> bytes:
    body = msgpack.packb(value)
    return HEADER.pack(len(body)) + body


def status(socket_path) -> dict:
    client = HelperClient(str(socket_path))
    client.connect()
    try:
        return client.status()
    finally:
        client.close()


def test_malformed_requests_are_answered_and_the_helper_keeps_serving(
        helper, ordinary_user, user_workspace, probes):
    ws = user_workspace.root
    cases = {
        "garbage": (b"\x00\x00\x00\x05hello", ErrorCode.BAD_FRAME),
        "wrong types": (frame([1, "one", 5]), ErrorCode.BAD_FIELDS),
        "unknown type": (frame([99, 1]), ErrorCode.UNKNOWN_TYPE),
        "a reply type": (frame([2, 1, "x", 5]), ErrorCode.NOT_A_REQUEST),
        "before hello": (encode(Subscribe(str(ws).encode())), ErrorCode.HELLO_FIRST),
        "not an array": (frame({"type": 1}), ErrorCode.BAD_FRAME),
    }
    sock, reader = raw_client(helper.socket_path)
    for name, (data, code) in cases.items():
        sock.sendall(data)
        [error] = replies(sock, reader)
        assert error.code is code, name
    # the same connection still works after all that
    sock.sendall(encode(Hello(PROTOCOL_VERSION, "test")))
    assert type(replies(sock, reader)[0]).__name__ == "Welcome"

    huge, huge_reader = raw_client(helper.socket_path)
    huge.sendall(HEADER.pack(1 << 30) + b"x" * 100)
    [error] = replies(huge, huge_reader)
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert huge.recv(100) == b""  # framing lost: that connection only is closed

    cut, _ = raw_client(helper.socket_path)
    cut.sendall(HEADER.pack(200) + b"\x93\x01")  # half a frame, then gone
    cut.close()

    probe = probes(ordinary_user, helper.socket_path, ws)
    assert probe.next(first)["kind"] == "subscribed"
    ordinary_user.run("sh", "-c", f"echo ok > {ws / 'after'}").check_returncode()
    probe.next(is_path("write", "after"))
    counters = status(helper.socket_path)
    assert counters["bad_frames"] == len(cases) + 1
    assert counters["clients"] == 3  # the first raw client, the probe, this status query
    sock.close()
    huge.close()


def until_seen(client: HelperClient, wanted) -> None:
    while True:
        select.select([client.fileno()], [], [], 1.0)
        if any(wanted(event) for event in client.read_events()):
            return


def test_a_slow_client_gets_an_overflow_and_others_are_still_served(
        run_dir, start_helper, user_workspace):
    ws = user_workspace.root
    helper = start_helper(run_dir / "helper.sock", "--client-buffer", "16384")
    slow, slow_reader = raw_client(helper.socket_path)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(encode(Hello(PROTOCOL_VERSION, "slow")) + encode(Subscribe(str(ws).encode())))
    fast = HelperClient(str(helper.socket_path))
    fast.connect()
    fast.subscribe(ws)
    # 3000 writes by another process: far more than 16 KiB of events plus socket buffers
    subprocess.run([sys.executable, "-c",
                    "import sys\nfor n in range(3000):\n"
                    " open(f'{sys.argv[1]}/f{n % 50}', 'w').write('x')\n"
                    "open(sys.argv[1] + '/storm-end', 'w').write('x')", str(ws)], check=True)
    # the fast client reads everything: the storm's end, or its own overflow notice ...
    until_seen(fast, lambda e: isinstance(e, Write) and e.path == b"storm-end"
               or isinstance(e, Overflow))
    # ... and then it is served as before
    (ws / "after").write_text("x")
    until_seen(fast, lambda e: isinstance(e, Write) and e.path == b"after")
    assert fast.connected
    slow.settimeout(10)
    overflow = None
    while overflow is None:
        data = slow.recv(65536)
        assert data, "the helper closed the slow client instead of dropping its events"
        overflow = next((m for m in (decode(b, REPLIES_AND_EVENTS)
                                     for b in slow_reader.feed(data))
                         if isinstance(m, Overflow)), None)
    assert overflow.source is OverflowSource.CLIENT_BUFFER and overflow.dropped > 0
    assert overflow.since_mono <= overflow.until_mono
    fast.close()
    slow.close()


def test_restart_reconnects_and_reports_the_gap(
        helper, ordinary_user, user_workspace, probes, start_helper):
    ws = user_workspace.root
    probe = probes(ordinary_user, helper.socket_path, ws)
    assert probe.next(first)["kind"] == "subscribed"
    assert helper.stop() == 0
    assert not helper.socket_path.exists()  # a clean stop removes its socket
    opened = probe.next(lambda line: line["kind"] == "gap")
    assert opened["until"] is None
    ordinary_user.run("sh", "-c", f"echo lost > {ws / 'during-gap'}").check_returncode()
    start_helper(helper.socket_path)
    closed = probe.next(lambda line: line["kind"] == "gap")
    assert closed["since"] == opened["since"] and closed["until"] > closed["since"]
    ordinary_user.run("sh", "-c", f"echo back > {ws / 'after-gap'}").check_returncode()
    probe.next(is_path("write", "after-gap"))
    assert not [line for line in probe.seen if line.get("path") == "during-gap"]


def test_a_hung_helper_is_noticed_by_its_silence(
        helper, ordinary_user, user_workspace, probes):
    ws = user_workspace.root
    probe = probes(ordinary_user, helper.socket_path, ws)
    assert probe.next(first)["kind"] == "subscribed"
    os.kill(helper.proc.pid, signal.SIGSTOP)  # alive, socket open, but not answering
    try:
        opened = probe.next(lambda line: line["kind"] == "gap")
        assert opened["reason"] == "HELPER_SILENT" and opened["until"] is None
    finally:
        os.kill(helper.proc.pid, signal.SIGCONT)
    closed = probe.next(lambda line: line["kind"] == "gap", within=30)
    assert closed["since"] == opened["since"] and closed["until"] is not None
    ordinary_user.run("sh", "-c", f"echo back > {ws / 'after'}").check_returncode()
    probe.next(is_path("write", "after"))


def test_writes_elsewhere_wake_nothing_and_marks_go_with_the_last_subscriber(
        helper, user_workspace, run_dir):
    ws = user_workspace.root
    client = HelperClient(str(helper.socket_path))
    client.connect()
    subscribed = client.subscribe(ws)
    assert subscribed.directories == 1  # the top only: .git is never marked
    elsewhere = run_dir / "elsewhere"
    elsewhere.mkdir()
    for n in range(200):
        (elsewhere / f"f{n % 10}").write_text(str(n))
    counters = client.status()
    assert counters["fanotify_events"] == 0 and counters["marked_directories"] == 1
    client.close()
    wait_for(lambda: status(helper.socket_path)["workspaces"] == 0, 10,
             message="marks removed after the last subscriber")
    assert status(helper.socket_path)["marked_directories"] == 0


def test_a_directory_moved_in_is_marked_and_its_files_reported_unmarked(
        helper, ordinary_user, user_workspace, probes):
    ws = user_workspace.root
    probe = probes(ordinary_user, helper.socket_path, ws)
    assert probe.next(first)["kind"] == "subscribed"
    outside = ws.parent / "tree"
    ordinary_user.run("sh", "-c", f"mkdir -p {outside}/deeper && echo 1 > {outside}/a && "
                      f"echo 2 > {outside}/deeper/b && mv {outside} {ws}/tree"
                      ).check_returncode()
    probe.next(is_path("unmarked", "tree/a"))
    probe.next(is_path("unmarked", "tree/deeper/b"), within=5)
    ordinary_user.run("sh", "-c", f"echo 3 >> {ws}/tree/deeper/b").check_returncode()
    probe.next(is_path("write", "tree/deeper/b"))  # marked now


def test_many_clients_at_once(helper):
    clients = [raw_client(helper.socket_path) for _ in range(60)]
    for sock, _ in clients:
        sock.sendall(encode(Hello(PROTOCOL_VERSION, "many")))
    for sock, reader in clients:
        assert type(replies(sock, reader)[0]).__name__ == "Welcome"
        sock.close()


def test_started_as_an_ordinary_user_it_says_so_and_exits_2(ordinary_user, run_dir):
    run = subprocess.run(ordinary_user.gitsieve("helper", "--socket", str(run_dir / "x.sock")),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and "must run as root" in run.stderr
    assert not (run_dir / "x.sock").exists()


# ----- the attributor on top -----------------------------------------------------------------
AGENT_TAG = "gsattrib-helper-agent"


@pytest.fixture
def attributor_for(workspace, run_dir):
    """``attributor_for(helper)``: a HelperAttributor (as root, who may subscribe to any
    workspace) on ``workspace``, closed afterwards."""
    made = []

    def make(helper: Helper) -> HelperAttributor:
        workspace.config(f"""
            [filter]
            attribution = "helper"
            helper_socket = "{helper.socket_path}"
            autonomous_processes = ["{AGENT_TAG}"]
            """)
        made.append(HelperAttributor(workspace.load()))
        return made[-1]
    yield make
    for attributor in made:
        attributor.close()


def user_writes(path) -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; open(sys.argv[1], 'w')"
                             ".write('mine'); print('done', flush=True); sys.stdin.read()",
                             str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "done"
    return proc


def test_the_attributor_names_writers_and_calls_the_helpers_absence_unknown(
        workspace, run_dir, start_helper, attributor_for):
    helper = start_helper(run_dir / "helper.sock")
    attributor = attributor_for(helper)
    editor = user_writes(workspace.path("notes.md"))
    found = attributor.attribute(workspace.path("notes.md"), time.time())
    editor.communicate("")
    assert (found.writer, found.pid, found.technique) == (USER, editor.pid, "helper")
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.run(['sh', "
                    "'-c', 'date > ' + sys.argv[2]])", AGENT_TAG,
                    str(workspace.path("agent.txt"))], check=True)
    found = attributor.attribute(workspace.path("agent.txt"), time.time())
    assert found.writer == SYSTEM and AGENT_TAG in found.ancestor_cmdline

    assert helper.stop() == 0
    wait_for(lambda: attributor.drain() or not attributor.client.connected, 10,
             message="the attributor noticing the helper is gone")
    editor = user_writes(workspace.path("during.md"))  # nobody sees this write
    during = attributor.attribute(workspace.path("during.md"), time.time())
    editor.communicate("")
    assert during.writer == UNKNOWN
    assert Missed.HELPER_AWAY.describe() in during.matched_by
    assert attributor.status()["helper_away"]

    start_helper(run_dir / "helper.sock")
    wait_for(lambda: attributor.drain() or attributor.client.connected, 20,
             message="the attributor reconnecting")
    assert attributor.status()["helper_reconnects"] == 1
    # the gap still covers a change observed within it ...
    assert attributor.attribute(workspace.path("during.md"), time.time()).writer == UNKNOWN
    # ... and writes after it are seen again
    editor = user_writes(workspace.path("after.md"))
    wait_for(lambda: any(e.pid == editor.pid for e in attributor.recorder.writes_to(
        workspace.path("after.md"), 0, time.time() + 1)) or attributor.catch_up(time.time()),
        10, message="the write after the gap")
    editor.communicate("")


# ----- an unprivileged gitsieve choosing its technique ---------------------------------------
CHOOSE = r"""
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(message)s")
logging.getLogger("sh").setLevel(logging.WARNING)
from gitsieve.common import config
from gitsieve.common.judge.attribution import make_attributor
attributor = make_attributor(config.load(Path(sys.argv[1])), "l2-01")
print(attributor.mode)
attributor.close()
"""


@pytest.mark.parametrize("kind", ["silent", "not-root"])
def test_an_unusable_helper_socket_gives_one_warning_then_psutil(
        kind, ordinary_user, user_workspace, run_dir):
    """attribution = "auto" as an ordinary user: no own fanotify, a helper socket that does
    not answer (or is not root's): one warning, then one line saying psutil and why."""
    ws = user_workspace.root
    if kind == "silent":
        path = run_dir / "helper.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen()  # connections queue in the backlog; nobody ever answers
        path.chmod(0o666)
    else:
        path = ordinary_user.home / "helper.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen()
        os.chown(path, ordinary_user.uid, ordinary_user.gid)
    ordinary_user.write(ws / ".gitsieve.toml", f'[filter]\nhelper_socket = "{path}"\n')
    try:
        run = ordinary_user.run(USER_PYTHON, "-c", CHOOSE, str(ws))
    finally:
        server.close()
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "psutil"
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING")]
    expected = "did not answer within 1 s" if kind == "silent" else "not root: ignored"
    assert len(warnings) == 1 and expected in warnings[0], run.stderr
    [chosen] = [line for line in run.stderr.splitlines() if "attribution by" in line]
    assert chosen.startswith("INFO l2-01: attribution by psutil")
    assert "own fanotify:" in chosen and "not permitted" in chosen and expected in chosen
