"""The commands a person types: clear one-line errors with exit 2, ``init``, and
``gitsieve run``'s lifecycle (single instance, restarts, clean stop, no orphans)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT, Gitsieve, create_workspace, processes_mentioning, wait_for
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.tools import cli
from gitsieve.common.tools.runner import actor_ids


def run_cli(*args, module="gitsieve.common.tools.cli", cwd=ROOT, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_run_outside_a_repository(tmp_path):
    assert_one_clear_line(run_cli("run", "--workspace", str(tmp_path)), "not a git repository")


def test_run_with_a_missing_workspace(tmp_path):
    assert_one_clear_line(run_cli("run", "--workspace", str(tmp_path / "nope")),
                          "not a directory")


def test_run_with_invalid_config(workspace):
    path = workspace.config("[debounce]\nallow = \"soon\"\n")
    assert_one_clear_line(run_cli("run", "--workspace", str(workspace.root)),
                          f"{path}:2: [debounce].allow must be a number")


def test_run_with_unreadable_config(workspace):
    assert_one_clear_line(run_cli("run", "--workspace", str(workspace.root), "--config",
                                  str(workspace.root / "missing.toml")), "cannot read config")


def test_run_with_a_bad_regex_in_the_rules_file(workspace):
    path = workspace.patterns("# rules\nALLOW:docs/.*\nBLOCK:logs/(unclosed:System logs\n")
    result = run_cli("run", "--workspace", str(workspace.root))
    assert_one_clear_line(result, f"{path}:3:")


def test_actorctl_on_a_workspace_where_gitsieve_is_not_running(workspace):
    result = run_cli("--workspace", str(workspace.root), "status", module="gitsieve.common.tools.ctl")
    assert result.returncode == 1
    assert "gitsieve is not running" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("--workspace", str(workspace.root), "frobnicate",
                   module="gitsieve.common.tools.ctl").returncode == 2


def test_init_writes_a_valid_commented_config_and_rules(workspace):
    result = run_cli("init", str(workspace.root))
    assert result.returncode == 0, result.stderr
    config_text = (workspace.root / config_mod.CONFIG_NAME).read_text()
    assert "#" in config_text
    parsed = tomllib.loads(config_text)
    assert parsed["debounce"]["default"] == 1 and parsed["limits"]["cooldown_seconds"] <= 2
    cfg = workspace.load()  # the written files load and validate
    assert cfg.debounce_for("notes.txt", "ANALYZE") == 1
    conservative = run_cli("init", str(workspace.root), "--profile", "conservative", "--force")
    assert conservative.returncode == 0, conservative.stderr
    parsed = tomllib.loads((workspace.root / config_mod.CONFIG_NAME).read_text())
    assert parsed["limits"] == {"max_commits_per_hour": 10, "max_commits_per_day": 50,
                                "cooldown_seconds": 300, "runaway_commits_per_hour": 30}
    cfg = workspace.load()
    assert cfg.debounce_for(".claude/autonomous/x", "ANALYZE") == 300
    from gitsieve.common.judge import rules
    ruleset = rules.RuleSet.load(cfg.patterns_file)
    assert ruleset.match(".claude/autonomous/service-status.json").action == "BLOCK"
    again = run_cli("init", str(workspace.root))
    assert again.returncode == 0 and "kept existing" in again.stdout


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_init_where_the_config_is_a_directory_says_so_and_writes_nothing(workspace, force):
    """It said "kept existing .../.gitsieve.toml" (as if a config were there) and exited 0;
    with --force, a traceback."""
    (workspace.root / config_mod.CONFIG_NAME).mkdir()
    result = run_cli("init", str(workspace.root), *force)
    assert_one_clear_line(result, f"{workspace.root / config_mod.CONFIG_NAME} exists and is "
                                  f"not a file")
    assert "kept" not in result.stdout
    assert not (workspace.root / cli.PATTERNS_PATH).exists()  # never half an init


def test_init_names_the_branch_checked_out(tmp_path):
    ws = create_workspace(tmp_path, branch="master")
    assert run_cli("init", str(ws.root)).returncode == 0
    parsed = tomllib.loads((ws.root / config_mod.CONFIG_NAME).read_text())
    assert parsed["git"]["branch"] == "master"
    assert ws.load().branch == "master"


def test_run_commits_and_pushes_on_a_master_repository_without_a_branch_set(tmp_path):
    """``git init`` makes master here: with [git] branch unset, a person's edit there is
    committed and pushed, not held for a branch "main" the repository does not have."""
    ws = create_workspace(tmp_path, branch="master")
    ws.fast_config()
    gitsieve = Gitsieve(ws, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
        ws.write("notes.md", "a person's note\n")
        wait_for(lambda: "notes.md" in ws.files_at(ws.remote_head("master")), timeout=15,
                 message="the edit on master was not pushed")
    finally:
        gitsieve.stop()


def test_run_says_at_start_that_another_branch_holds_every_change(tmp_path):
    ws = create_workspace(tmp_path)
    ws.fast_config()
    ws.git("switch", "-q", "-c", "feature")
    gitsieve = Gitsieve(ws, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
    finally:
        gitsieve.stop()
    assert ("branch 'feature' is checked out, but [git] branch is 'main': changes are held"
            in gitsieve.log())


def test_run_says_at_start_that_the_rules_file_it_names_is_missing(tmp_path):
    ws = create_workspace(tmp_path)
    ws.fast_config('[filter]\npatterns_file = "rules/typo.conf"\n')
    gitsieve = Gitsieve(ws, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
    finally:
        gitsieve.stop()
    assert (f"[filter] patterns_file: {ws.root / 'rules/typo.conf'} does not exist: no rules "
            f"are in force" in gitsieve.log())


def test_init_outside_a_repository(tmp_path):
    assert_one_clear_line(run_cli("init", str(tmp_path)), "not a git repository")


@pytest.fixture
def fast_config(workspace):
    workspace.fast_config()
    return workspace


def test_run_lifecycle_single_instance_restart_and_clean_stop(fast_config, tmp_path):
    ws = fast_config
    cfg = ws.load()
    gitsieve = Gitsieve(ws, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
        # a second instance on the same workspace refuses
        second = run_cli("run", "--workspace", str(ws.root))
        assert_one_clear_line(second, "already running")
        # status, human and JSON
        human = run_cli("--workspace", str(ws.root), "status", module="gitsieve.common.tools.ctl")
        assert human.returncode == 0 and "debouncer" in human.stdout
        data = json.loads(run_cli("--json", "--workspace", str(ws.root), "status",
                                  module="gitsieve.common.tools.ctl").stdout)
        names = {actor["name"] for actor in data["actors"]}
        assert {"watcher", "router", "l1", "l2-01", "l3-01", "debouncer", "executor",
                "health"} == set(actor_ids(cfg)) <= names
        # an actor killed with SIGKILL is restarted, and the pipeline still commits
        old_pid = control.request(cfg, "debouncer", "status").data["pid"]
        os.kill(old_pid, signal.SIGKILL)

        def restarted():
            try:
                data = control.request(cfg, "debouncer", "status", timeout=0.5).data
            except control.Unreachable:
                return False
            return data["pid"] != old_pid and data["state"] == "running"
        wait_for(restarted, 20, 0.2, "the debouncer to be restarted")
        ws.write("after-restart.txt", "still synced\n")
        wait_for(lambda: "after-restart.txt" in ws.files_at("HEAD"), 20, 0.1,
                 "an edit committed after the restart")
    finally:
        code, took = gitsieve.stop(signal.SIGINT)
    assert code == 0, gitsieve.log()
    assert took < 5.5
    assert not processes_mentioning(str(ws.root))
    assert not (ws.root / ".git/index.lock").exists()
    # the lock is released: gitsieve can start again
    again = Gitsieve(ws, tmp_path / "again.log")
    try:
        again.wait_running()
    finally:
        assert again.stop()[0] == 0


def test_bench_dirty_runs_floor_and_gitsieve_in_turn_and_prints_the_median():
    """The dirty-start benchmark end to end, small: every file reaches the remote in each
    run, and the figure printed is the median of the runs' ratios."""
    result = run_cli("bench", "--dirty", "30", "--repeats", "2", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [line for line in result.stdout.splitlines() if line.strip().startswith("run ")]
    assert len(runs) == 2 and all("gitsieve, start to every file on the remote" in line
                                  for line in runs), result.stdout
    assert "median" in result.stdout and "x the floor" in result.stdout


def test_bench_burst_writes_while_gitsieve_runs_and_every_file_arrives():
    """--burst: the files are written after every actor runs, timed from the first."""
    result = run_cli("bench", "--burst", "40", "--repeats", "1", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [line for line in result.stdout.splitlines() if line.strip().startswith("run ")]
    assert len(runs) == 1 and "the burst's first file (written in" in runs[0], result.stdout
    assert "median" in result.stdout


@pytest.mark.parametrize("arguments", [("--burst", "-3"), ("--dirty", "5", "--burst", "5")])
def test_bench_refuses_a_negative_count_and_two_scenarios(arguments):
    result = run_cli("bench", *arguments, timeout=30)
    assert result.returncode == 2 and "--burst" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["explain", "debug"])
def test_a_gitsieve_ctl_command_names_itself_once_in_its_usage(name, capsys):
    """`gitsieve explain` printed "usage: gitsieve explain explain ..." (and `gitsieve
    debug` its actorctl name, tail)."""
    assert cli.main([name, "--help"]) == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith(f"usage: gitsieve {name} ["), usage


@pytest.mark.parametrize("mode", ["rewrite", "new"])
def test_the_storm_benchs_autonomous_writer_writes_what_it_reports(tmp_path, mode):
    """``gitsieve bench --storm``'s writer: the count it prints is what it wrote, each
    write a whole line naming its number (rewrites cycle through the files)."""
    result = run_cli("storm-writer", "claude-autonomous", str(tmp_path), "2000", "0.3", "7",
                     mode, module="gitsieve.common.tools.bench")
    assert result.returncode == 0, result.stderr
    written = int(result.stdout)
    assert written > 7
    files = sorted((tmp_path / "agent").iterdir())
    if mode == "new":
        assert [f.name for f in files] == [f"new-{n:06d}.txt" for n in range(written)]
        assert files[-1].read_text() == f"agent write {written - 1}\n"
    else:
        assert [f.name for f in files] == [f"state-{n:03d}.txt" for n in range(7)]
        last = written - 1
        assert (tmp_path / "agent" / f"state-{last % 7:03d}.txt").read_text() == \
            f"agent write {last}\n"
