"""``gitsieve agent -- CMD`` end to end: real processes under the real filter, each test run
as root and as an ordinary user (conftest's ``ordinary_user``, through ``runuser``)."""
from __future__ import annotations

import errno
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import USER_PYTHON, OrdinaryUser, create_workspace, git
from gitsieve.common.agent.journal import WRITE_WINDOW, Family, JournalReader, Op, Record
from gitsieve.common.agent.wrapper import SI_KERNEL

WAIT_LIMIT = 30.0  # generous: only a failing test ever waits this long


@dataclass
class Space:
    """A workspace (a git repository), a directory outside it, and who runs the agent."""

    workspace: Path
    outside: Path
    user: OrdinaryUser | None

    @property
    def root(self) -> Path:
        return self.workspace.parent

    @property
    def python(self) -> str:
        return USER_PYTHON if self.user else sys.executable

    @property
    def privileged(self) -> bool:
        return self.user is None and os.geteuid() == 0

    @property
    def journal(self) -> Path:
        return self.workspace / ".git" / "gitsieve" / "agent"

    def command(self, argv: list[str]) -> list[str]:
        return self.user.command(*argv) if self.user else argv

    def gitsieve(self, *args: str) -> list[str]:
        return self.command([self.python, "-m", "gitsieve.common.tools.cli", *args])

    def agent_argv(self, cmd: list[str], *options: str) -> list[str]:
        return self.gitsieve("agent", "--workspace", str(self.workspace), *options, "--", *cmd)

    def agent(self, cmd: list[str], *options: str, timeout: float = 60,
              **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.agent_argv(cmd, *options), cwd=self.workspace,
                              capture_output=True, timeout=timeout, **kwargs)

    def popen(self, cmd: list[str], *options: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.agent_argv(cmd, *options), cwd=self.workspace,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def records(self) -> list[Record]:
        """Every record but the hold checks (which depend on timing)."""
        return [record for record in JournalReader(self.journal).read_new()
                if record.family is not Family.HOLD]

    def ops(self) -> set[tuple[str, str]]:
        return {(record.op.name, record.path) for record in self.records()}

    def own(self, *paths: Path) -> None:
        if self.user:
            for path in paths:
                os.chown(path, self.user.uid, self.user.gid)


@pytest.fixture(params=["root", "user"])
def space(request, tmp_path):
    if request.param == "user":
        ws = request.getfixturevalue("user_workspace")
        made = Space(ws.root, ws.root.parent / "outside", ws.user)
    else:
        made = Space(create_workspace(tmp_path).root, tmp_path / "outside", None)
    made.outside.mkdir()
    made.own(made.outside)
    return made


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def wait_for_file(path: Path) -> str:
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), str(path))
    return path.read_text()


def process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stderr.decode(errors="replace").splitlines()


def test_shell_and_coreutils_are_recorded_with_their_pids(space):
    script = ("date > f; mkdir d; echo x > d/g; mv f g; ln g h; ln -s g s; chmod +x g; "
              "truncate -s 0 h; rm h; cat g > /dev/null")
    result = space.agent(["sh", "-c", script])
    assert result.returncode == 0, result.stderr
    records = space.records()
    ops = {(record.op.name, record.path) for record in records}
    assert {("CREATE", "f"), ("CREATE", "d/g"), ("RENAME_FROM", "f"), ("RENAME_TO", "g"),
            ("LINK", "h"), ("SYMLINK", "s"), ("CHMOD", "g"), ("CREATE", "h"),
            ("TRUNCATE", "h"), ("UNLINK", "h")} == ops
    pid_of = {(record.op.name, record.path): record.pid for record in records}
    # the shell's own redirections share its pid; each tool has its own
    assert pid_of[("CREATE", "f")] == pid_of[("CREATE", "d/g")]
    assert pid_of[("RENAME_FROM", "f")] == pid_of[("RENAME_TO", "g")] != pid_of[("CREATE", "f")]
    assert len({record.seq for record in records}) == len(records)


def test_python_writer_and_atomic_replace(space):
    code = ("import os\n"
            "open('a.txt', 'w').write('1')\n"
            "with open('t.tmp', 'w') as f: f.write('2')\n"
            "os.replace('t.tmp', 'a.txt')\n"
            "os.truncate('a.txt', 0)\n"
            "os.chmod('a.txt', 0o600)\n")
    result = space.agent([space.python, "-c", code])
    assert result.returncode == 0, result.stderr
    sequence = [(record.op.name, record.path)
                for record in sorted(space.records(), key=lambda record: record.seq)]
    assert sequence == [("CREATE", "a.txt"), ("CREATE", "t.tmp"), ("RENAME_FROM", "t.tmp"),
                        ("RENAME_TO", "a.txt"), ("TRUNCATE", "a.txt"), ("CHMOD", "a.txt")]


def test_reads_outside_paths_and_git_dir_produce_no_record(space):
    existing = space.workspace / "existing"
    existing.write_text("data\n")
    code = (f"import os\n"
            f"open({str(space.outside / 'x')!r}, 'w').write('1')\n"
            f"open({str(space.workspace / '.git' / 'y')!r}, 'w').write('1')\n"
            f"open('existing').read()\n"
            f"os.stat('existing'); os.listdir('.')\n"
            f"os.rename({str(space.outside / 'x')!r}, {str(space.outside / 'z')!r})\n"
            f"os.unlink({str(space.outside / 'z')!r})\n")
    result = space.agent([space.python, "-c", code])
    assert result.returncode == 0, result.stderr
    assert space.records() == []


def test_paths_resolve_through_symlinks_dirfds_and_proc_self(space):
    sub = space.workspace / "sub"
    sub.mkdir()
    (space.outside / "into-ws").symlink_to(sub)
    (space.workspace / "to-outside").symlink_to(space.outside)
    (space.workspace / "link-to-target").symlink_to("target")
    space.own(sub)
    code = (f"import os\n"
            f"open({str(space.outside / 'into-ws' / 'via-outside')!r}, 'w').write('1')\n"
            f"open('to-outside/not-ours', 'w').write('1')\n"
            f"open('link-to-target', 'w').write('1')\n"
            f"dirfd = os.open('sub', os.O_RDONLY | os.O_DIRECTORY)\n"
            f"os.close(os.open('by-dirfd', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dirfd))\n"
            f"open(f'/proc/self/fd/{{dirfd}}/by-proc-self', 'w').write('1')\n"
            f"os.chdir('sub'); open('../relative-up', 'w').write('1')\n")
    result = space.agent([space.python, "-c", code])
    assert result.returncode == 0, result.stderr
    assert space.ops() == {("CREATE", "sub/via-outside"), ("CREATE", "target"),
                           ("CREATE", "sub/by-dirfd"), ("CREATE", "sub/by-proc-self"),
                           ("CREATE", "relative-up")}


def test_non_utf8_names_are_recorded_with_surrogateescape(space):
    code = "open(b'caf\\xe9.txt', 'w').write('1')\n"
    result = space.agent([space.python, "-c", code])
    assert result.returncode == 0, result.stderr
    assert space.ops() == {("CREATE", os.fsdecode(b"caf\xe9.txt"))}
    assert os.fsencode(space.records()[0].path) == b"caf\xe9.txt"


DAEMON = """
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if sys.argv[1] == 'ignore-term':
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open('daemon.pid', 'w').write(f'{os.getpid()}\\n')
        while True:
            open('daemon.out', 'w').write('x')
            time.sleep(0.05)
    os._exit(0)
while not os.path.exists('daemon.out'):
    time.sleep(0.01)
"""


@pytest.mark.parametrize("daemon_mode", ["default", "ignore-term"])
def test_daemonised_grandchild_is_recorded_and_removed_at_the_end(space, daemon_mode):
    result = space.agent([space.python, "-c", DAEMON, daemon_mode], "--grace", "0.5")
    assert result.returncode == 0, result.stderr
    daemon_pid = int((space.workspace / "daemon.pid").read_text())
    assert process_gone(daemon_pid)
    writers = {record.pid for record in space.records() if record.path == "daemon.out"}
    assert writers == {daemon_pid}


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 3", 3),
                                            ("kill -TERM $$", 128 + signal.SIGTERM),
                                            ("kill -KILL $$", 128 + signal.SIGKILL)])
def test_exit_status_is_cmds(space, script, status):
    assert space.agent(["sh", "-c", script]).returncode == status


def test_signals_reach_cmd_which_can_trap_them(space):
    script = ('trap "echo usr1 > got-usr1" USR1; trap "echo term > got-term; exit 7" TERM; '
              'echo $$ $PPID > ready; while :; do sleep 0.05; done')
    proc = space.popen(["sh", "-c", script])
    try:
        shell_pid, supervisor_pid = map(int, wait_for_file(space.workspace / "ready").split())
        os.kill(supervisor_pid, signal.SIGUSR1)
        assert wait_for_file(space.workspace / "got-usr1") == "usr1\n"
        os.kill(supervisor_pid, signal.SIGTERM)
        assert proc.wait(timeout=WAIT_LIMIT) == 7
    finally:
        proc.kill()
        proc.wait()
    assert (space.workspace / "got-term").read_text() == "term\n"
    assert process_gone(shell_pid)
    assert ("CREATE", "got-term") in space.ops()


IO_URING_SETUP = ("import ctypes\n"
                  "libc = ctypes.CDLL(None, use_errno=True)\n"
                  "params = ctypes.create_string_buffer(120)  # struct io_uring_params\n"
                  "fd = libc.syscall(425, 4, params)\n"
                  "print('ok' if fd >= 0 else ctypes.get_errno())\n")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="syscall 425")
def test_io_uring_setup_fails_with_enosys_under_the_wrapper_only(space):
    bare = subprocess.run(space.command([space.python, "-c", IO_URING_SETUP]),
                          capture_output=True, text=True, check=True)
    assert bare.stdout.strip() != str(errno.ENOSYS)
    wrapped = space.agent([space.python, "-c", IO_URING_SETUP])
    assert wrapped.returncode == 0, wrapped.stderr
    assert wrapped.stdout.decode().strip() == str(errno.ENOSYS)


def test_reads_are_decided_in_the_kernel(space):
    (space.workspace / "f").write_text("line\n")
    # shell builtins only: the one notification is the exec of sh
    script = 'i=0; while [ $i -lt 200 ]; do read x < f; i=$((i+1)); done'
    result = space.agent(["sh", "-c", script], "--verbose")
    assert result.returncode == 0, result.stderr
    served = re.search(rb"notifications served: (\d+)", result.stderr)
    assert served is not None, result.stderr
    assert int(served.group(1)) == 1


def test_an_unreadable_path_argument_does_not_stop_the_supervisor(space):
    code = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "r = libc.syscall(257, -100, ctypes.c_void_p(16), os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "print(r, ctypes.get_errno())\n"
            "open('after', 'w').write('x')\n")
    if platform.machine() != "x86_64":
        pytest.skip("x86_64 syscall number")
    result = space.agent([space.python, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["-1", str(errno.EFAULT)]
    assert space.ops() == {("CREATE", "after")}


I386_OPEN = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
MAP_32BIT = 0x40
page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT, -1, 0)
path = os.fsencode(sys.argv[1]) + b"\\0"
path_at = page + 64
ctypes.memmove(path_at, path, len(path))
flags = os.O_WRONLY | os.O_CREAT
code = (b"\\x53" + b"\\xb8\\x05\\x00\\x00\\x00"              # push rbx; mov eax, 5 (i386 open)
        + b"\\xbb" + path_at.to_bytes(4, "little")            # mov ebx, path
        + b"\\xb9" + flags.to_bytes(4, "little")              # mov ecx, flags
        + b"\\xba" + (0o644).to_bytes(4, "little")            # mov edx, mode
        + b"\\xcd\\x80\\x5b\\xc3")                            # int 0x80; pop rbx; ret
ctypes.memmove(page, code, len(code))
fd = ctypes.CFUNCTYPE(ctypes.c_int)(page)()
print(fd >= 0)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="i386 compat calls on x86_64")
def test_i386_compat_open_through_int80_is_recorded(space):
    result = space.agent([space.python, "-c", I386_OPEN,
                          str(space.workspace / "via-int80")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "True"
    assert space.ops() == {("CREATE", "via-int80")}


def test_nested_wrapper_for_the_same_workspace_just_runs_cmd(space):
    inner = [space.python, "-m", "gitsieve.common.tools.cli", "agent", "--workspace",
             str(space.workspace), "--", "sh", "-c", "date > inner; exit 4"]
    result = space.agent(inner)
    assert result.returncode == 4, result.stderr
    assert stderr_lines(result) == []
    assert ("CREATE", "inner") in space.ops()
    segments = [name for name in os.listdir(space.journal) if name.endswith(".seg")]
    assert len(segments) == 1  # the outer supervisor's: the inner one ran none


def test_nested_wrapper_for_another_workspace_refuses_in_one_line(space):
    other = space.root / "other"
    git(space.root, "init", "-q", str(other))
    if space.user:
        subprocess.run(["chown", "-R", space.user.name, str(other)], check=True)
    inner = [space.python, "-m", "gitsieve.common.tools.cli", "agent", "--workspace",
             str(other), "--", "true"]
    result = space.agent(inner)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith(f"gitsieve agent: already inside gitsieve agent for "
                               f"{space.workspace}")


def test_a_second_listener_without_the_marker_is_refused_in_one_line(space):
    inner = ["env", "-u", "GITSIEVE_AGENT_SUPERVISOR", space.python, "-m",
             "gitsieve.common.tools.cli", "agent", "--workspace", str(space.workspace), "--",
             "true"]
    result = space.agent(inner)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and "another seccomp supervisor already watches" in lines[0]


@pytest.mark.parametrize("cmd, status, message", [
    ([], 2, "gitsieve agent: usage: gitsieve agent [--workspace DIR] -- CMD [ARGS...]"),
    (["no-such-command-0123"], 127, "gitsieve agent: no-such-command-0123: command not found"),
])
def test_bad_input_is_one_line_and_a_status(space, cmd, status, message):
    result = space.agent(cmd)
    assert result.returncode == status
    assert stderr_lines(result) == [message]


def test_no_separator_and_no_command_is_the_usage_line(space):
    result = subprocess.run(space.gitsieve("agent", "--workspace", str(space.workspace)),
                            capture_output=True, cwd=space.workspace)
    assert result.returncode == 2
    assert stderr_lines(result) == ["gitsieve agent: usage: gitsieve agent [--workspace DIR] "
                                    "-- CMD [ARGS...]"]


def test_a_file_without_execute_permission_is_status_126(space):
    script = space.root / "not-executable"
    script.write_text("#!/bin/sh\n")
    result = space.agent([str(script)])
    assert result.returncode == 126
    assert stderr_lines(result) == [f"gitsieve agent: {script}: not an executable file"]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a setuid-root program needs root")
def test_setuid_programs_get_one_line_where_privilege_is_lost(space):
    program = space.root / "setuid-true"
    shutil.copy("/bin/true", program)
    os.chown(program, 0, 0)
    os.chmod(program, 0o4755)
    direct = space.agent([str(program)])
    nested = space.agent(["sh", "-c", f"{program}; {program}"])
    assert direct.returncode == nested.returncode == 0
    expected = [f"gitsieve agent: {program}: under no_new_privs it runs without its setuid bit"]
    if space.privileged:  # root loses nothing by a setuid-root program running as root
        assert stderr_lines(direct) == stderr_lines(nested) == []
    else:
        assert stderr_lines(direct) == expected
        assert stderr_lines(nested) == expected  # once per program


ORPHAN_AFTER_KILL = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    result = os.open('result', os.O_WRONLY | os.O_CREAT, 0o644)  # opened while recorded
    open('daemon.pid', 'w').write(f'{os.getpid()}\\n')
    while not os.path.exists('go'):
        time.sleep(0.02)
    try:
        open('late', 'w')
        os.write(result, b'opened\\n')
    except OSError as exc:
        os.write(result, f'{exc.errno}\\n'.encode())
    os._exit(0)
open('main.pid', 'w').write(f'{os.getpid()} {os.getppid()}\\n')
while True:
    time.sleep(1)
"""


def test_after_kill_9_of_the_supervisor_cmd_gets_sigterm_and_writes_fail_enosys(space):
    proc = space.popen([space.python, "-c", ORPHAN_AFTER_KILL])
    daemon_pid = None
    try:
        daemon_pid = int(wait_for_file(space.workspace / "daemon.pid"))
        main_pid, supervisor_pid = map(int, wait_for_file(space.workspace / "main.pid").split())
        os.kill(supervisor_pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_LIMIT)
        wait_for(lambda: process_gone(main_pid), "CMD to end on its parent-death signal")
        (space.workspace / "go").touch()
        assert wait_for_file(space.workspace / "result") == f"{errno.ENOSYS}\n"
    finally:
        proc.kill()
        proc.wait()
        if daemon_pid is not None and not process_gone(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)
    assert not (space.workspace / "late").exists()


def test_terminal_signals_are_not_forwarded_twice():
    from gitsieve.common.agent.wrapper import Supervisor
    # the decision alone: a terminal-sent signal (SI_KERNEL) reached CMD's process group
    assert Supervisor.forwards(SI_KERNEL, same_process_group=True) is False
    assert Supervisor.forwards(SI_KERNEL, same_process_group=False) is True
    assert Supervisor.forwards(0, same_process_group=True) is True  # kill(2) from a process


HELD_WRITER = """
import time
slow = open('slow.txt', 'w')
time.sleep(0.6)
slow.write('late')
slow.flush()
time.sleep(0.3)
slow.close()
open('quick.txt', 'w').write('q')
time.sleep(0.3)
"""


def test_a_file_held_open_gets_held_and_closed_records_around_its_late_writes(space):
    result = space.agent([space.python, "-c", HELD_WRITER])
    assert result.returncode == 0, result.stderr
    records = JournalReader(space.journal).read_new()
    holds = [(record.op, record.path) for record in records if record.family is Family.HOLD]
    assert holds == [(Op.HELD, "slow.txt"), (Op.CLOSED, "slow.txt")]  # quick.txt: closed
    created, closed = (next(r for r in records if r.op is op and r.path == "slow.txt")
                       for op in (Op.CREATE, Op.CLOSED))
    written = (space.workspace / "slow.txt").stat().st_ctime
    # the write came long after the open's record; the CLOSED record still covers it
    assert created.wall + WRITE_WINDOW < written <= closed.wall


def test_gitsieve_bench_agent_prints_every_figure(tmp_path):
    """The overhead scenario runs the writer bare and wrapped (figures only, no targets
    asserted: speed belongs to the benchmark's printout)."""
    result = subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "bench",
                             "--agent", "--repeats", "1", "--files", "50", "--megabytes", "1",
                             "--root", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for label in ("write-open + close (us)", "read-open + close (us)",
                  "small files, workspace (s)", "small files, outside (s)",
                  "1 MB files, workspace (s)", "1 MB writes, one file, ws (s)"):
        assert label in result.stdout
    assert "(target <= 2x)" in result.stdout and "(target <= 5 %)" in result.stdout
    assert os.listdir(tmp_path) == []  # its temporary workspaces are gone


def test_root_recording_into_a_users_workspace_leaves_the_journal_theirs(user_workspace):
    """Run by root on someone's tree, the journal (like the runtime directory) is the tree
    owner's, so their own gitsieve reads it."""
    ws = user_workspace
    result = subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "agent",
                             "--workspace", str(ws.root), "--", "sh", "-c", "date > f"],
                            cwd=ws.root, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    journal = ws.root / ".git" / "gitsieve" / "agent"
    owners = {path.name: path.stat().st_uid for path in (journal, *journal.iterdir())}
    assert set(owners.values()) == {ws.user.uid}, owners
    read = ws.user.run(USER_PYTHON, "-c", "from gitsieve.common.agent.journal import "
                       "JournalReader; import sys; print([(r.op.name, r.path) for r in "
                       "JournalReader(sys.argv[1]).read_new()])", str(journal))
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "[('CREATE', 'f')]"
