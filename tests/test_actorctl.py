"""actorctl against a real `gitsieve run` (stats, explain, tail, pause/resume, flush), the
debouncer/executor/watcher control commands behind it, and the health monitor's metrics file."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, FakeSocket, Gitsieve, wait_for
from gitsieve.actors.debouncer import Debouncer
from gitsieve.actors.watcher import Watcher
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import Action, L1Reason
from gitsieve.common.protocol.trail import PatternStep, as_dict
from gitsieve.common.tools import cli, ctl
from gitsieve.common.tools.runner import actor_ids


def actorctl(ws, *args, timeout: float = 60):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gitsieve.common.tools.ctl", "--workspace", str(ws.root),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def actorctl_json(ws, *args):
    result = actorctl(ws, "--json", *args)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


# ----- handler level -------------------------------------------------------------------
@pytest.fixture
def deb(workspace):
    workspace.config("[debounce]\nallow = 2\ndefault = 30\nmax_wait = 100\nrules = []\n")
    debouncer = Debouncer(workspace.load())
    debouncer.batches_out = FakeSocket()
    yield debouncer
    debouncer.close()


def decision(path, seq, commit=True, action="ANALYZE", trail=()):
    return Decision(path=path, kind="write", seq=seq, epoch=1.0, observed=5.0,
                    commit=commit, action=action, trail=trail)


def test_explain_keeps_the_newest_decision_and_its_debounce_timing(deb):
    step = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)
    deb.on_decision(decision("a.txt", 2, trail=(step,)))
    deb.on_decision(decision("a.txt", 1, commit=False, action="BLOCK"))  # late, older
    record = deb.explain_paths(["a.txt", "never.txt"])["paths"]
    assert record["never.txt"] is None
    assert record["a.txt"]["seq"] == 2 and record["a.txt"]["commit"] is True
    assert record["a.txt"]["trail"] == [as_dict(step)]
    assert record["a.txt"]["trail"][0]["reason_text"] == "[filter] default"
    assert record["a.txt"]["stale_dropped"] == 1
    assert record["a.txt"]["pending"] is True and record["a.txt"]["quiet"] == 30
    with pytest.raises(ValueError):
        deb.explain_paths("a.txt")  # not a list: an error reply, not a crash


def test_flush_makes_every_pending_path_due_now(deb):
    deb.on_decision(decision("slow.txt", 1))
    deb.on_tick(time.monotonic())
    assert deb.batches_out.frames == []  # 30 s quiet period not over
    assert deb.flush_now()["flushed"] == 1
    batch = deb.batches_out.messages()[0]
    assert batch.paths == ("slow.txt",)
    assert deb.explain_paths(["slow.txt"])["paths"]["slow.txt"]["batch_id"] == batch.batch_id


def test_watcher_logs_progress_while_adding_watches(workspace, caplog):
    for number in range(30):
        (workspace.root / f"tree/d{number}/sub").mkdir(parents=True)
    watcher = Watcher(workspace.load())
    watcher.progress_every = 0.0  # every directory is "a second later": one line each
    with caplog.at_level(logging.INFO):
        watcher.setup()
    try:
        progress = [r for r in caplog.records if "directories so far" in r.getMessage()]
        assert len(progress) >= 60
        assert watcher.stats["scan_progress_lines"] == len(progress)
        barrier = watcher.reconcile_now()
        assert barrier["seq_after"] >= barrier["seq_before"]
    finally:
        watcher.shutdown()
        for sock in watcher._sockets:
            sock.close(linger=0)
        watcher.close()


def test_watcher_progress_is_rate_limited(workspace, caplog):
    for number in range(30):
        (workspace.root / f"tree/d{number}").mkdir(parents=True)
    watcher = Watcher(workspace.load())
    with caplog.at_level(logging.INFO):
        watcher.setup()  # a small tree takes far less than progress_every (1 s)
    try:
        assert not [r for r in caplog.records if "directories so far" in r.getMessage()]
    finally:
        watcher.shutdown()
        for sock in watcher._sockets:
            sock.close(linger=0)
        watcher.close()


# ----- not running / usage -------------------------------------------------------------
@pytest.mark.parametrize("command", [["stats"], ["explain", "x.txt"], ["tail", "--count", "1"],
                                     ["pause"], ["resume"], ["flush", "--timeout", "1"]])
def test_every_command_says_clearly_when_gitsieve_is_not_running(workspace, command):
    result = actorctl(workspace, *command)
    assert result.returncode == ctl.EXIT_UNREACHABLE
    assert "gitsieve is not running" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["pause"], ["flush", "--timeout", "1"], ["explain", "x"]])
def test_socket_files_left_by_a_killed_gitsieve_mean_not_running(workspace, command):
    """``kill -9`` leaves the control sockets' files behind; nothing listens on them."""
    import socket
    runtime = workspace.load().runtime_dir
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(runtime)  # bound by relative name: a deep temporary path passes AF_UNIX's limit
    try:
        for actor_id in ("watcher", "debouncer", "executor"):
            left = socket.socket(socket.AF_UNIX)
            left.bind(f"ctl-{actor_id}.sock")
            left.close()
    finally:
        os.chdir(here)
    result = actorctl(workspace, *command)
    assert result.returncode == ctl.EXIT_UNREACHABLE
    assert "gitsieve is not running" in result.stderr, result.stderr


def test_learned_works_on_the_file_while_gitsieve_is_stopped(workspace):
    result = actorctl(workspace, "learned")
    assert result.returncode == 0 and "0 learned BLOCK paths" in result.stdout


def test_usage_errors_exit_2(workspace):
    assert actorctl(workspace, "explain").returncode == ctl.EXIT_USAGE
    assert actorctl(workspace, "nonsense").returncode == ctl.EXIT_USAGE
    assert cli.main(["debug", "--bogus"]) == ctl.EXIT_USAGE


# ----- a real gitsieve -----------------------------------------------------------------
@pytest.fixture
def running(workspace, tmp_path):
    workspace.patterns("BLOCK:status/.*\\.json:agent status files\n")
    # notes/ exists before gitsieve starts: a file written in a directory made since is
    # UNKNOWN to exact attribution (made before its mark), and this test wants the user's
    workspace.write("notes/README", "notes\n")
    workspace.fast_config("""
        [runtime]
        metrics_interval = 0.5
    """)
    workspace.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(workspace, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
        yield workspace
    finally:
        code, _ = gitsieve.stop()
        assert code == 0, gitsieve.log()


def test_operations_on_a_running_gitsieve(running):
    ws = running
    # flush: an edit made just before is committed and pushed when flush returns 0
    ws.write("notes/a.txt", "hello\n")
    ws.write("status/agent.json", '{"tick": 1}\n')
    code, report = actorctl_json(ws, "flush", "--timeout", "30")
    assert code == 0, report
    assert "notes/a.txt" in ws.files_at("HEAD")
    assert ws.remote_head() == ws.head()
    assert "status/agent.json" not in ws.files_at("HEAD")
    skipped = {item["path"]: item for item in report["not_synced_by_decision"]}
    assert "line 1" in skipped["status/agent.json"]["reason"]

    # explain: the trail, the debounce timing and the commit
    code, explained = actorctl_json(ws, "explain", str(ws.root / "notes/a.txt"))
    assert code == 0
    assert explained["path"] == "notes/a.txt"
    assert [step["layer"] for step in explained["decision"]["trail"]][0] == "L1"
    decision = explained["decision"]
    # The latest decision: the one that committed it, or (when flush's reconcile reported
    # the path again after the commit landed) one that finds it identical to HEAD.
    assert (decision["commit"] is True and decision["batched"]) or \
        decision["trail"][-1]["verdict"] == "UNCHANGED", decision
    assert ws.git("cat-file", "-t", explained["executor"]["commit"]).strip() == "commit"
    assert explained["executor"]["pushed"] is True
    human = actorctl(ws, "explain", "status/agent.json")
    assert human.returncode == 0
    assert "L1 BLOCK" in human.stdout and "agent status files" in human.stdout
    assert "not committed" in human.stdout

    # pause: nothing is committed, flush reports the held path; resume syncs it
    assert actorctl(ws, "pause").returncode == 0
    head = ws.head()
    ws.write("notes/b.txt", "while paused\n")
    held = actorctl(ws, "flush", "--timeout", "20")
    assert held.returncode == ctl.EXIT_DAEMON, held.stdout + held.stderr
    assert "notes/b.txt" in held.stdout and "paused" in held.stdout
    assert ws.head() == head
    assert actorctl(ws, "resume").returncode == 0
    assert actorctl(ws, "flush", "--timeout", "30").returncode == 0
    assert "notes/b.txt" in ws.files_at("HEAD") and ws.remote_head() == ws.head()

    # tail: live decisions
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tail = subprocess.Popen([sys.executable, "-m", "gitsieve.common.tools.ctl", "--workspace", str(ws.root),
                             "--json", "tail", "--count", "1", "--timeout", "30"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        def tail_got_one():
            ws.write("notes/c.txt", f"{time.time()}\n")  # again until the SUB is connected
            return tail.poll() is not None
        wait_for(tail_got_one, 30, 0.3, "tail to print a decision")
        line = json.loads(tail.stdout.read().strip().splitlines()[0])
        assert line["path"] == "notes/c.txt" and line["trail"][0]["layer"] == "L1"
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.wait()

    # stats: decisions per layer, latency percentiles, commits and pushes
    code, stats = actorctl_json(ws, "stats")
    assert code == 0
    assert stats["layers"]["L1"]["BLOCK"] >= 1 and stats["layers"]["L1"]["ANALYZE"] >= 2
    assert stats["executor"]["commits"] >= 2 and stats["executor"]["pushes"] >= 2
    assert any(name.startswith("debouncer:") for name in stats["latency"])
    assert "HANDLER LATENCY" in actorctl(ws, "stats").stdout

    # status: queue depth and restarts for every actor
    code, status = actorctl_json(ws, "status")
    assert code == 0
    by_name = {actor["name"]: actor for actor in status["actors"]}
    assert by_name["router"]["queue"] == 0 and by_name["executor"]["restarts"] == 0
    # every layer worker's queue: what it holds, as the router counts it (idle: nothing)
    for worker in (a for a in actor_ids(ws.load()) if a.startswith(("l1", "l2-", "l3-"))):
        assert by_name[worker]["queue"] == 0, by_name[worker]

    # the metrics file: per-actor latency, counts and resource usage
    cfg = ws.load()

    def metrics_with_resources():
        if not cfg.metrics_file.exists():
            return None
        data = json.loads(cfg.metrics_file.read_text())
        return data if data["actors"].get("executor", {}).get("rss_mb") else None
    data = wait_for(metrics_with_resources, 20, 0.2, "the metrics file")
    assert data["actors"]["debouncer"]["latency"]
    assert data["layers"]["L1"]["ANALYZE"] >= 1


def test_learned_lists_and_forgets_through_the_debouncer(workspace, actors):
    cfg = workspace.load()
    config_dir = cfg.learned_file.parent
    config_dir.mkdir(parents=True, exist_ok=True)
    cfg.learned_file.write_text(json.dumps({"version": 1, "paths": {
        "state/agent.json": {"learned_at": time.time(), "changes": 5,
                             "writer_cmdline": "claude-autonomous --loop"}}}))
    actors("debouncer", workspace.root)
    wait_for(lambda: actorctl(workspace, "learned").returncode == 0, 20, 0.2, "the debouncer")
    human = actorctl(workspace, "learned")
    assert "state/agent.json" in human.stdout and "claude-autonomous" in human.stdout
    code, listing = actorctl_json(workspace, "learned")
    assert [entry["path"] for entry in listing["learned"]] == ["state/agent.json"]
    assert actorctl(workspace, "learned", "--forget", "state/agent.json").returncode == 0
    assert actorctl_json(workspace, "learned")[1]["learned"] == []
    again = actorctl(workspace, "learned", "--forget", "state/agent.json")
    assert again.returncode == ctl.EXIT_DAEMON and "nothing learned" in again.stderr
