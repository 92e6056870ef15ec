"""Fixtures shared by every test tier: a real workspace with a bare remote, config files,
and actor processes started for real and always reaped."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gitsieve.common import config as config_mod  # noqa: E402

GIT_ENV = {"GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "user@example.com",
           "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "user@example.com"}


def git(cwd, *args, check=True) -> str:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


# Sync within a fraction of a second and never wait on limits: what pipeline tests want.
FAST_CONFIG = """
[debounce]
allow = 0.2
default = 0.3
rules = []
[limits]
cooldown_seconds = 0
max_commits_per_hour = 100000
max_commits_per_day = 100000
[health]
interval = 0.5
"""


class Workspace:
    """A git work tree with a bare ``origin`` on branch main."""

    def __init__(self, root: Path, remote: Path):
        self.root, self.remote = root, remote

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str) -> Path:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def config(self, text: str = "", **_) -> Path:
        """Write ``.gitsieve.toml``; the text is dedented TOML."""
        target = self.root / config_mod.CONFIG_NAME
        target.write_text(textwrap.dedent(text))
        return target

    def fast_config(self, extra: str = "") -> None:
        """FAST_CONFIG plus ``extra`` sections, committed (so the config is no edit)."""
        self.config(FAST_CONFIG + textwrap.dedent(extra))
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "config")

    def patterns(self, text: str, rel: str = ".claude/sync-filter/system-patterns.conf") -> Path:
        return self.write(rel, textwrap.dedent(text))

    def load(self):
        return config_mod.load(self.root)

    def git(self, *args, check=True) -> str:
        return git(self.root, *args, check=check)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def remote_head(self, branch: str = "main") -> str:
        return git(self.remote, "rev-parse", branch).strip()

    def commit_count(self) -> int:
        return int(self.git("rev-list", "--count", "HEAD").strip())

    def files_at(self, rev: str = "HEAD") -> set[str]:
        out = git(self.root, "ls-tree", "-r", "-z", "--name-only", rev)
        return {p for p in out.split("\0") if p}

    def show(self, rev_path: str) -> str:
        return self.git("show", rev_path)

    def committed_paths_since(self, rev: str) -> set[str]:
        out = self.git("log", "--format=", "--name-only", "-z", f"{rev}..HEAD")
        return {p.strip("\n") for p in out.split("\0") if p.strip("\n")}


def create_workspace(base: Path, branch: str = "main") -> Workspace:
    remote = base / "remote.git"
    root = base / "ws"
    git(base, "init", "-q", "--bare", "-b", branch, str(remote))
    git(base, "init", "-q", "-b", branch, str(root))
    for key, value in (("user.name", "Test User"), ("user.email", "user@example.com")):
        git(root, "config", key, value)
    git(root, "remote", "add", "origin", str(remote))
    (root / "README.md").write_text("workspace\n")
    (root / ".gitignore").write_text("ignored/\n*.ignored\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    git(root, "push", "-q", "-u", "origin", branch)
    return Workspace(root, remote)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return create_workspace(tmp_path)


class FakeSocket:
    """Stands in for a sending ZeroMQ socket in handler tests: records every frame.
    ``refuse`` makes sends fail like a PUSH with no peer."""

    def __init__(self):
        self.frames: list[bytes] = []
        self.refuse = False

    def send(self, frame: bytes, flags: int = 0) -> None:
        if self.refuse:
            import zmq
            raise zmq.Again()
        self.frames.append(frame)

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        """A Change into a stage queue: its route frame is dropped, its body kept (each
        one's, for a bundle)."""
        from gitsieve.common.protocol import messages
        if self.refuse:
            import zmq
            raise zmq.Again()
        parts = messages.unbundle(frames) if frames[0] == messages.BUNDLE else [frames]
        for part in parts:
            self.send(part[-1], flags)

    def poll(self, timeout: int = 0) -> int:
        return 0

    def messages(self) -> list:
        from gitsieve.common.protocol import messages
        return [messages.decode(frame) for frame in self.frames]


def faulty_git(tmp_path: Path, rules: str = "") -> tuple[dict, Path]:
    """(environment whose ``git`` is scripts/faulty-git, its rules file); every injection
    is logged to the rules file's name + ".log"."""
    bin_dir = tmp_path / "faulty-bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(ROOT / "scripts" / "faulty-git")
    rules_file = tmp_path / "git-faults.rules"
    rules_file.write_text(rules)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAULTY_GIT_RULES": str(rules_file), "FAULTY_GIT_REAL": "/usr/bin/git"}
    return env, rules_file


class StageReader:
    """A test's stand-in for a stage's workers: a DEALER on the router's stage queue, read
    like a PULL.  Its window defaults to wide enough for every change; it announces itself
    again while it is polled, as a live worker does every heartbeat interval."""

    def __init__(self, context, cfg, stage: str, window: int = 1_000_000, name: str = ""):
        import zmq
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(cfg.endpoints.stage_out(stage))
        self.name, self.window = name or f"test-{stage}", window
        self.received = 0
        self.announced_at = 0.0
        self.pending: list[bytes] = []  # bodies of a bundle not yet taken
        self.announce()

    def announce(self, received: int | None = None) -> None:
        from gitsieve.common.protocol import messages
        self.received = self.received if received is None else received
        self.sock.send(messages.encode(messages.Ready(
            worker=self.name, received=self.received, window=self.window)))
        self.announced_at = time.monotonic()

    def poll(self, timeout: int = 0) -> int:
        if self.pending:
            return 1
        if time.monotonic() - self.announced_at > 1.0:
            self.announce()
        return self.sock.poll(timeout)

    def recv(self) -> bytes:
        """A change's body (a merged change's third frame, its earliest observation, is
        left out); the router sends what goes to one worker in a round as a bundle."""
        from gitsieve.common.protocol import messages
        if not self.pending:
            frames = self.sock.recv_multipart()
            parts = messages.unbundle(frames) if frames[0] == messages.BUNDLE else [frames]
            self.pending.extend(part[0] for part in parts)
        return self.pending.pop(0)

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger)


class Unbundled:
    """A receiving socket read one message at a time: an actor's PUSH socket sends a burst
    as one bundle (messages.bundle), whose messages come out here in turn."""

    def __init__(self, sock):
        self.sock = sock
        self.pending: list[list[bytes]] = []

    def poll(self, timeout: int = 0) -> int:
        return 1 if self.pending else self.sock.poll(timeout)

    def recv_multipart(self) -> list[bytes]:
        from gitsieve.common.protocol import messages
        if not self.pending:
            frames = self.sock.recv_multipart()
            self.pending = messages.unbundle(frames) if frames[0] == messages.BUNDLE \
                else [frames]
        return self.pending.pop(0)

    def recv(self) -> bytes:
        """A one-frame message's frame."""
        frames = self.recv_multipart()
        assert len(frames) == 1, f"{len(frames)} frames: read it with recv_multipart"
        return frames[0]

    def close(self, linger: int = 0) -> None:
        self.sock.close(linger)


def stage_reader(context, cfg, stage: str, window: int = 1_000_000,
                 name: str = "") -> StageReader:
    return StageReader(context, cfg, stage, window, name)


class ActorProcess:
    """One real actor process (``python -m gitsieve.actors.NAME``), stopped and reaped on close."""

    def __init__(self, name: str, workspace: Path, instance: int | None = None,
                 env: dict | None = None):
        args = [sys.executable, "-m", f"gitsieve.actors.{name}", "--workspace", str(workspace)]
        if instance is not None:
            args += ["--instance", str(instance)]
        self.name = name
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, "GITSIEVE_ACTOR": name, **(env or {})},
            start_new_session=True)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def actors():
    """Start actors with ``actors(name, workspace, ...)``; all are stopped at teardown."""
    started: list[ActorProcess] = []

    def start(name: str, workspace: Path, **kwargs) -> ActorProcess:
        proc = ActorProcess(name, workspace, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll ``predicate`` until truthy; fail (not hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{message or getattr(predicate, '__name__', 'condition')}")
        time.sleep(interval)


class Gitsieve:
    """``gitsieve run`` as a real process; its stderr goes to a log file shown on failure."""

    def __init__(self, workspace: Workspace, log_path: Path, extra_args: tuple = ()):
        self.workspace = workspace
        self.log_path = log_path
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitsieve.common.tools.cli", "run", "--workspace", str(workspace.root),
             *extra_args], cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_running(self, timeout: float = 30.0) -> None:
        from gitsieve.common.actor import control
        from gitsieve.common.tools.runner import actor_ids
        cfg = self.workspace.load()
        expected = set(actor_ids(cfg))

        def all_running():
            if self.proc.poll() is not None:
                raise AssertionError(f"gitsieve exited {self.proc.returncode}:\n{self.log()}")
            running = set()
            for actor_id in control.known_actors(cfg):
                try:
                    if control.request(cfg, actor_id, "status", timeout=0.5).data.get(
                            "state") == "running":
                        running.add(actor_id)
                except control.Unreachable:
                    continue
            return expected <= running
        wait_for(all_running, timeout, 0.2, "every actor running")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode, time.monotonic() - started


def processes_mentioning(text: str) -> list:
    """Live processes (other than this one) whose command line mentions ``text``."""
    import psutil
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and text in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


# ----- ordinary users ------------------------------------------------------------------------
# CI runs as root; unprivileged operation is tested by creating a user and running gitsieve
# as that user.  /root is 0700, so root's interpreter is out of their reach: they run the
# system python3 with gitsieve and its dependencies installed (pip --target) into a
# world-readable directory, built once per test session from this checkout.
USER_PYTHON = "/usr/bin/python3"


# Test workers (pytest-xdist) share one such directory and one lock: the install costs
# about 18 s, and useradd/userdel running at once fail on the locked /etc/passwd.
SHARED_LOCK = Path("/tmp/gitsieve-tests.lock")


@contextlib.contextmanager
def tests_lock():
    """Serialise a step across the test workers of this machine."""
    import fcntl
    with open(SHARED_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def user_site():
    """A directory holding gitsieve and its dependencies for USER_PYTHON, built once per
    test run and removed by the last worker that used it."""
    import shutil
    import uuid
    if os.geteuid() != 0:
        pytest.skip("creating an ordinary user needs root")
    if not os.access(USER_PYTHON, os.X_OK):
        pytest.skip(f"{USER_PYTHON} is not installed")
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
    site = Path(f"/tmp/gitsieve-user-site-{run_id}")
    users = site.with_name(site.name + ".users")
    with tests_lock():
        if not (site / "gitsieve").is_dir():
            shutil.rmtree(site, ignore_errors=True)
            site.mkdir(mode=0o755)
            os.chmod(site, 0o755)
            result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                                     "--disable-pip-version-check", "--target", str(site),
                                     str(ROOT)], capture_output=True, text=True)
            if result.returncode != 0:
                shutil.rmtree(site, ignore_errors=True)
                raise AssertionError(f"pip install --target failed:\n{result.stderr}")
        holders = int(users.read_text()) if users.exists() else 0
        users.write_text(str(holders + 1))
    yield site
    with tests_lock():
        remaining = int(users.read_text()) - 1
        if remaining > 0:
            users.write_text(str(remaining))
        else:
            users.unlink(missing_ok=True)
            shutil.rmtree(site, ignore_errors=True)


class OrdinaryUser:
    """A real unprivileged account; its commands run through ``runuser``."""

    def __init__(self, name: str, site: Path):
        import pwd
        self.name, self.site = name, site
        entry = pwd.getpwnam(name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)

    def env(self, extra: dict | None = None) -> dict:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(self.site),
                "LC_ALL": "C.UTF-8", **(extra or {})}

    def command(self, *args: str, env: dict | None = None) -> list[str]:
        settings = [f"{key}={value}" for key, value in self.env(env).items()]
        return ["runuser", "-u", self.name, "--", "env", "-i", *settings, *args]

    def run(self, *args: str, env: dict | None = None, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args, env=env), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def popen(self, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args, env=env), start_new_session=True,
                                **kwargs)

    def gitsieve(self, *args: str, env: dict | None = None) -> list[str]:
        """The command line of ``gitsieve ARGS`` run as this user."""
        return self.command(USER_PYTHON, "-m", "gitsieve.common.tools.cli", *args, env=env)

    def write(self, path: Path, text: str) -> None:
        """Write a file as this user (so its writer is the user's own process)."""
        self.run(USER_PYTHON, "-c", "import os, sys; os.makedirs(os.path.dirname(sys.argv[1])"
                 " or '.', exist_ok=True); open(sys.argv[1], 'w').write(sys.argv[2])",
                 str(path), text).check_returncode()


@contextlib.contextmanager
def temporary_user(site: Path, prefix: str):
    """A fresh unprivileged user named ``prefix`` + random hex, removed afterwards with
    every process of theirs."""
    import uuid
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    with tests_lock():
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield OrdinaryUser(name, site)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        time.sleep(0.2)
        with tests_lock():
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


@pytest.fixture
def ordinary_user(user_site):
    """A fresh unprivileged user (removed afterwards, with every process of theirs)."""
    with temporary_user(user_site, "gsu") as user:
        yield user


class UserWorkspace(Workspace):
    """A workspace (and its bare remote) owned by an ordinary user; git runs as them."""

    def __init__(self, root: Path, remote: Path, user: OrdinaryUser):
        super().__init__(root, remote)
        self.user = user

    def git(self, *args, check=True) -> str:
        result = self.user.run("git", "-C", str(self.root), *args, env=GIT_ENV)
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def write(self, rel: str, text: str) -> Path:
        target = self.root / rel
        self.user.write(target, text)
        return target

    def remote_head(self, branch: str = "main") -> str:
        return self.user.run("git", "-C", str(self.remote), "rev-parse",
                             branch).stdout.strip()


@pytest.fixture
def user_workspace(ordinary_user) -> UserWorkspace:
    """A workspace with a bare ``origin``, both owned by ``ordinary_user``, in a directory
    that user can reach."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="gitsieve-userws-", dir="/tmp"))
    os.chmod(base, 0o755)
    os.chown(base, ordinary_user.uid, ordinary_user.gid)
    made = create_workspace(base)
    subprocess.run(["chown", "-R", f"{ordinary_user.uid}:{ordinary_user.gid}", str(base)],
                   check=True)
    yield UserWorkspace(made.root, made.remote, ordinary_user)
    subprocess.run(["rm", "-rf", str(base)])
