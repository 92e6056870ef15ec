"""Process attribution with real processes holding real files (common.judge.attribution)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from conftest import wait_for
from gitsieve.common.judge.attribution.base import (
    SYSTEM,
    TECHNIQUE_LIVE,
    TECHNIQUE_SAMPLED,
    AutonomousMatcher,
)
from gitsieve.common.judge.attribution.sampled import (
    SAMPLE_INTERVAL,
    SIGHTING_LEAD,
    Attributor,
    ProcessCache,
)

# A child that opens/closes files on command, so each test controls exactly what is open.
HOLDER_CODE = r"""
import sys
files = {}
print("ready", flush=True)
for line in sys.stdin:
    command, _, path = line.rstrip("\n").partition(" ")
    if command == "write":
        files[path] = open(path, "a")
        files[path].write("x")
        files[path].flush()
    elif command == "read":
        files[path] = open(path, "r")
    elif command == "close":
        files.pop(path).close()
    print("ok", flush=True)
"""


class Holder:
    def __init__(self, tag: str):
        self.tag = tag
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER_CODE, tag],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def do(self, command: str, path) -> None:
        self.proc.stdin.write(f"{command} {path}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def holders():
    started: list[Holder] = []

    def start(tag: str) -> Holder:
        holder = Holder(tag)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


@pytest.fixture
def tag():
    """A command-line word unique to this test, which the default pattern also matches."""
    return f"claude-autonomous-{uuid.uuid4().hex[:12]}"


def attributor_for(tag: str, ttl: float = 60.0) -> Attributor:
    found = Attributor([tag], ttl)
    found.cache.refresh()
    return found


# ----- matcher and cache ---------------------------------------------------------------
def test_matcher_searches_command_line_and_name():
    matcher = AutonomousMatcher(["claude-autonomous", "claude-.*-monitor"])
    assert matcher.matches("python3 /opt/claude-autonomous.py --loop")
    assert matcher.matches("node agent.js", name="claude-health-monitor")
    assert not matcher.matches("vim notes.md", name="vim")
    assert not AutonomousMatcher([]).matches("claude-autonomous")


def test_cache_lists_matching_processes_only(holders, tag):
    autonomous = holders(tag)
    editor = holders(f"editor-{uuid.uuid4().hex[:8]}")
    cache = ProcessCache(AutonomousMatcher([tag]), ttl=60)
    cache.refresh()
    assert autonomous.pid in cache.processes
    assert tag in cache.processes[autonomous.pid].cmdline
    assert editor.pid not in cache.processes


def test_default_patterns_recognise_the_child(holders, tag):
    autonomous = holders(tag)
    cache = ProcessCache(AutonomousMatcher(["claude-autonomous", "claude-.*-monitor"]), 60)
    cache.refresh()
    assert autonomous.pid in cache.processes


def test_cache_skips_its_own_process():
    own_cmdline = " ".join(psutil.Process().cmdline())
    cache = ProcessCache(AutonomousMatcher([re.escape(own_cmdline)]), ttl=60)
    cache.refresh()
    assert os.getpid() not in cache.processes


def test_cache_refreshes_only_after_its_ttl(holders, tag):
    cache = ProcessCache(AutonomousMatcher([tag]), ttl=60)
    cache.refresh()
    late = holders(tag)
    cache.refresh_if_stale()
    assert late.pid not in cache.processes
    cache.refresh()
    assert late.pid in cache.processes
    assert cache.refreshes == 2


# ----- live open files -------------------------------------------------------------------
def test_autonomous_writer_holding_the_file_is_system(holders, tag, tmp_path):
    target = tmp_path / "status.json"
    autonomous = holders(tag)
    autonomous.do("write", target)
    found = attributor_for(tag).attribute(target, time.time())
    assert found is not None
    assert (found.writer, found.technique, found.pid) == (SYSTEM, TECHNIQUE_LIVE,
                                                          autonomous.pid)
    assert tag in found.cmdline
    assert 0 < found.confidence <= 1


def test_non_matching_writer_is_unknown(holders, tag, tmp_path):
    target = tmp_path / "notes.md"
    holders(f"editor-{uuid.uuid4().hex[:8]}").do("write", target)
    holders(tag)  # an autonomous process exists, but does not hold this file
    assert attributor_for(tag).attribute(target, time.time()) is None


def test_autonomous_reader_is_no_evidence(holders, tag, tmp_path):
    target = tmp_path / "notes.md"
    target.write_text("user text\n")
    holders(tag).do("read", target)
    assert attributor_for(tag).attribute(target, time.time()) is None


def test_path_is_compared_after_resolving_symlinks(holders, tag, tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (tmp_path / "alias").symlink_to(real_dir)
    autonomous = holders(tag)
    autonomous.do("write", real_dir / "status.json")
    found = attributor_for(tag).attribute(tmp_path / "alias" / "status.json", time.time())
    assert found is not None and found.pid == autonomous.pid


def test_process_started_after_the_cache_is_found_on_a_miss(holders, tag, tmp_path):
    found_by = attributor_for(tag, ttl=3600)
    target = tmp_path / "status.json"
    late = holders(tag)
    late.do("write", target)
    found = found_by.attribute(target, time.time())
    assert found is not None and found.pid == late.pid
    assert found_by.cache.refreshes == 1  # found by the cheap new-pid scan


def test_a_burst_of_misses_lists_proc_once_not_per_change(holders, tag, tmp_path,
                                                          monkeypatch):
    """10k new files of a person's burst were 10k misses, each listing /proc twice (0.65
    of L2's 1.2 CPU-s per 5k changes). A change observed before the last listing lists
    nothing again: its writer existed then. One observed after it still finds a process
    started since."""
    found_by = attributor_for(tag, ttl=3600)
    found_by.cache.refresh()
    listings = []
    real_pids = psutil.pids
    monkeypatch.setattr(psutil, "pids", lambda: listings.append(1) or real_pids())
    observed = time.time()
    for number in range(200):
        target = tmp_path / f"burst-{number}.txt"
        target.write_text("x\n")
        assert found_by.attribute(target, observed) is None
        assert found_by.no_autonomous_process(observed)
    assert len(listings) <= 1, f"/proc listed {len(listings)} times for 200 misses"
    late = holders(tag)
    target = tmp_path / "late.txt"
    late.do("write", target)
    found = found_by.attribute(target, time.time())
    assert found is not None and found.pid == late.pid


def test_new_pid_scan_finds_new_autonomous_processes_only(holders, tag):
    cache = ProcessCache(AutonomousMatcher([tag]), ttl=3600)
    cache.refresh()
    assert cache.refresh_new() is False
    holders(f"editor-{uuid.uuid4().hex[:8]}")
    assert cache.refresh_new() is False
    late = holders(tag)
    assert cache.refresh_new() is True
    assert late.pid in cache.processes
    late.stop()
    cache.refresh_new()
    assert late.pid not in cache.processes


def test_exited_process_is_forgotten(holders, tag, tmp_path):
    autonomous = holders(tag)
    found_by = attributor_for(tag)
    assert autonomous.pid in found_by.cache.processes
    autonomous.stop()
    found_by.sampler.sample()
    assert autonomous.pid not in found_by.cache.processes


# ----- sampler ---------------------------------------------------------------------------
def sample_for(found_by: Attributor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found_by.tick(time.monotonic())
        time.sleep(0.01)


def test_sampler_remembers_a_file_held_while_it_sampled(holders, tag, tmp_path):
    target = tmp_path / "context.json"
    autonomous = holders(tag)
    found_by = attributor_for(tag)
    autonomous.do("write", target)
    observed = time.time()
    sample_for(found_by, 0.3)  # the ~300 ms hold, sampled every 50 ms
    autonomous.do("close", target)
    assert found_by.sampler.samples >= 2
    found = found_by.attribute(target, observed)
    assert found is not None
    assert (found.technique, found.pid) == (TECHNIQUE_SAMPLED, autonomous.pid)
    assert found.confidence < 0.9  # weaker than seeing it open right now


def test_sampler_misses_a_file_opened_and_closed_between_samples(holders, tag, tmp_path):
    target = tmp_path / "context.json"
    autonomous = holders(tag)
    found_by = attributor_for(tag)
    found_by.sampler.sample()
    autonomous.do("write", target)
    autonomous.do("close", target)
    found_by.sampler.sample()
    assert found_by.attribute(target, time.time()) is None


def test_sighting_only_counts_for_changes_observed_soon_after(holders, tag, tmp_path):
    target = tmp_path / "context.json"
    autonomous = holders(tag)
    found_by = attributor_for(tag)
    autonomous.do("write", target)
    found_by.sampler.sample()
    autonomous.do("close", target)
    assert found_by.attribute(target, time.time()) is not None
    later = time.time() + SIGHTING_LEAD + 1
    assert found_by.attribute(target, later) is None


def test_sightings_expire_after_the_window(holders, tag, tmp_path):
    target = tmp_path / "context.json"
    autonomous = holders(tag)
    found_by = attributor_for(tag)
    autonomous.do("write", target)
    found_by.sampler.sample()
    autonomous.do("close", target)
    assert str(target) in found_by.sampler.sightings
    found_by.sampler.expire(time.time() + found_by.sampler.window + 1)
    assert not found_by.sampler.sightings


def test_wakeup_drives_sampling_only_while_autonomous_processes_exist(holders, tag):
    idle = attributor_for(tag, ttl=30)
    assert idle.sampler.due_in(time.monotonic()) is None
    assert 29 < idle.wakeup_in(time.monotonic()) <= 30
    holders(tag)
    busy = attributor_for(tag, ttl=30)
    assert busy.wakeup_in(time.monotonic()) <= SAMPLE_INTERVAL


def test_young_process_is_looked_at_again_in_case_it_had_not_exec_ed_yet(tag):
    # A forked child keeps its parent's command line until exec: the scan that sees it
    # then must not write it off. Here the child only gets the autonomous name by exec.
    cache = ProcessCache(AutonomousMatcher([tag]), ttl=3600)
    cache.refresh()
    # the tag travels in two halves, so only the exec'd command line carries it whole
    child = subprocess.Popen(["bash", "-c", 'read line; exec -a "$1$2" sleep 30', "bash",
                              tag[:9], tag[9:]], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: psutil.Process(child.pid).cmdline()[:1] == ["bash"], 10)
        assert cache.refresh_new() is False  # still "bash -c ..."
        assert child.pid not in cache.processes
        child.stdin.write(b"go\n")
        child.stdin.flush()
        wait_for(lambda: cache.refresh_new() or child.pid in cache.processes, 10,
                 message="the exec'd child to be recognised")
        assert tag in cache.processes[child.pid].cmdline
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
