"""``gitsieve run`` as a fork server: titles, the actor mark every actor must keep in its
environment, and a workspace that vanishes under it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import psutil

from conftest import Gitsieve, create_workspace, processes_mentioning, wait_for
from gitsieve.common.actor import control
from gitsieve.common.tools.runner import actor_ids


def started_run(tmp_path) -> tuple:
    """A workspace with the fast config and ``gitsieve run`` on it, every actor running."""
    ws = create_workspace(tmp_path)
    ws.fast_config()
    gitsieve = Gitsieve(ws, tmp_path / "gitsieve.log")
    try:
        gitsieve.wait_running()
    except BaseException:
        gitsieve.stop()
        raise
    return ws, gitsieve


def test_actors_are_forked_titled_and_keep_the_mark(tmp_path):
    ws, gitsieve = started_run(tmp_path)
    try:
        cfg = ws.load()
        runner = psutil.Process(gitsieve.proc.pid)
        assert runner.cmdline()[0] == f"gitsieve: run {ws.root}"
        for actor_id in actor_ids(cfg):
            pid = control.request(cfg, actor_id, "status").data["pid"]
            proc = psutil.Process(pid)
            assert proc.ppid() == runner.pid  # forked by the runner, no launcher between
            assert proc.cmdline()[0] == f"gitsieve: {actor_id} {ws.root}"
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            assert b"GITSIEVE_ACTOR=runner" in environ  # attribution's mark, as exec'd
    finally:
        code, _ = gitsieve.stop()
    assert code == 0
    assert not processes_mentioning(str(ws.root))


def test_no_actor_maps_openssl(tmp_path):
    """sh imports asyncio, which imported ssl, and hashlib loaded OpenSSL's _hashlib: every
    actor mapped libcrypto and copied about 0.4 MiB of it (fails before marked_run)."""
    ws, gitsieve = started_run(tmp_path)
    try:
        cfg = ws.load()
        pids = {"runner": gitsieve.proc.pid}
        for actor_id in actor_ids(cfg):
            pids[actor_id] = control.request(cfg, actor_id, "status").data["pid"]
        mapping_openssl = {name for name, pid in pids.items()
                           if any(library in open(f"/proc/{pid}/maps").read()
                                  for library in ("libcrypto", "libssl"))}
        assert not mapping_openssl
        # Nor asyncio: its C part is mapped when the real package is imported.
        assert not {name for name, pid in pids.items()
                    if "/_asyncio." in open(f"/proc/{pid}/maps").read()}
        # What the actors still ask of hashlib works without OpenSSL: the committer's blob
        # ids (sha1) show in the commit of an edit.
        (ws.root / "notes.txt").write_text("hashed without OpenSSL\n")
        wait_for(lambda: "notes.txt" in ws.git("log", "-1", "--name-only", "--format="),
                 30, message="notes.txt committed")
    finally:
        code, _ = gitsieve.stop()
    assert code == 0


_ARENA_SIZE = 64 * 2 ** 20  # glibc's reservation for each arena besides the main one


def secondary_malloc_arenas(pid: int) -> list[str]:
    """The arenas glibc made for threads of ``pid``: each is a 64 MiB-aligned reservation
    of anonymous regions, the used part read-write (one region or several) and the rest
    inaccessible, together exactly 64 MiB."""
    regions = []
    for line in open(f"/proc/{pid}/maps"):
        fields = line.split()
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if len(fields) <= 5:  # anonymous
            regions.append((start, end, fields[1]))
    arenas = []
    for index, (start, end, perms) in enumerate(regions):
        if start % _ARENA_SIZE or perms != "rw-p":
            continue
        for after, limit, rest in regions[index + 1:]:
            if after != end or limit > start + _ARENA_SIZE:
                break
            end = limit
            if limit == start + _ARENA_SIZE and rest == "---p":
                arenas.append(f"{start:x}")
                break
    return arenas


def test_every_thread_of_an_actor_allocates_from_the_main_malloc_arena(tmp_path):
    """sh's threads (git run while the config loads) left the fork server two arenas that
    every fork inherited; ZeroMQ's I/O thread gave each actor one, and sh's threads gave
    the executor five after a few commits (up to 0.3 MiB touched each; 60 edits: executor
    13.1 -> 11.7 MiB).  Fails before share_one_malloc_arena."""
    ws, gitsieve = started_run(tmp_path)
    try:
        cfg = ws.load()
        for number in range(3):  # git through sh, in the executor's threads
            (ws.root / "notes.txt").write_text(f"edit {number}\n")
            wait_for(lambda: f"edit {number}" in ws.git("show", "HEAD:notes.txt", check=False), 30,
                     message=f"edit {number} committed")
        pids = {"runner": gitsieve.proc.pid}
        pids.update({actor_id: control.request(cfg, actor_id, "status").data["pid"]
                     for actor_id in actor_ids(cfg)})
        arenas = {name: secondary_malloc_arenas(pid) for name, pid in pids.items()}
        assert not any(arenas.values()), arenas
    finally:
        code, _ = gitsieve.stop()
    assert code == 0


_STAND_INS = textwrap.dedent("""
    import sys
    import gitsieve.common.tools.marked_run  # the fork server's first lines
    import sh
    out = sh.Command("echo")("sh runs")
    print(sys.modules["asyncio"].__doc__, "email" in sys.modules, sh.__version__, out.strip())
""")


def test_the_fork_server_holds_stand_ins_for_asyncio_and_importlib_metadata():
    """sh imported asyncio (3.5 MiB of objects) to ask whether an event loop runs, and
    importlib.metadata with the email package (1.8 MiB) to read its version: every actor
    shared them, none used them (gitsieve bench: PSS 84.1 -> 81.1 MiB).  The fork server
    now holds stand-ins that give the real answers there, and sh still runs commands."""
    done = subprocess.run([sys.executable, "-c", _STAND_INS], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["gitsieve's", "fork", "server:", "no", "event", "loop",
                                   "runs", "here", "False", "unknown", "sh", "runs"], \
        done.stdout


def test_a_vanished_workspace_stops_the_run_with_one_line(tmp_path):
    ws, gitsieve = started_run(tmp_path)
    try:
        shutil.rmtree(ws.root)
        wait_for(lambda: gitsieve.proc.poll() is not None, 20, message="gitsieve to stop")
    finally:
        gitsieve.stop()
    assert gitsieve.proc.returncode == 1
    lines = [line for line in gitsieve.log().splitlines() if "vanished (" in line]
    assert len(lines) == 1 and f"the workspace {ws.root} vanished" in lines[0], lines
    assert not processes_mentioning(str(ws.root))


def test_a_restarted_actor_runs_on_the_config_the_runner_loaded(tmp_path):
    """Forks take the runner's config, not the file again: a config broken while gitsieve
    runs leaves a restarted actor running (and every actor on one config), and no fork
    copies the pages a second load would write."""
    ws, gitsieve = started_run(tmp_path)
    try:
        cfg = ws.load()
        old = control.request(cfg, "l1", "status").data["pid"]
        ws.config("[debounce]\ndefault = not a number\n")
        psutil.Process(old).kill()

        def restarted():
            try:
                return control.request(cfg, "l1", "status", timeout=0.5).data["pid"] != old
            except control.Unreachable:
                return False
        wait_for(restarted, 30, message="l1 restarted")
        assert control.request(cfg, "l1", "status").data["state"] == "running"
    finally:
        code, _ = gitsieve.stop()
    assert code == 0
    assert not [line for line in gitsieve.log().splitlines() if line.startswith("l1:")]
