"""The guard's settings and commands as a person meets them: one clear line for a bad
value, ``gitsieve release`` from anywhere, and the guard working for an ordinary user as
it does for root."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from guard_corpus import ALNUM, Randomness

from conftest import ROOT, USER_PYTHON, wait_for
from gitsieve.common.config.loader import ConfigError
from gitsieve.common.judge.guard.store import KEY_FILE, RELEASES_FILE


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(result, fragment):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_defaults(workspace):
    cfg = workspace.load()
    assert (cfg.guard_secrets, cfg.max_new_file_mb, cfg.allowlist_file, cfg.inline_allow) \
        == (True, 10.0, ".gitsieve-allow", True)


@pytest.mark.parametrize("text,reason", [
    ("secrets = \"yes\"", "[guard].secrets must be true or false"),
    ("max_new_file_mb = -1", "[guard].max_new_file_mb must be within 0-1e+06 MiB, got -1"),
    ("max_new_file_mb = \"ten\"", "[guard].max_new_file_mb must be a number"),
    ("allowlist_file = 3", "[guard].allowlist_file must be a string"),
    ("inline_allow = 1", "[guard].inline_allow must be true or false"),
    ("secret = false", "unknown key 'secret' in [guard]"),
])
def test_a_bad_value_is_one_line_naming_the_key(workspace, text, reason):
    path = workspace.config(f"[guard]\n{text}\n")
    with pytest.raises(ConfigError) as raised:
        workspace.load()
    assert str(raised.value) == f"{path}:2: {reason}"
    assert_one_clear_line(run_cli("run", "--workspace", str(workspace.root)),
                          f"{path}:2: {reason}")


@pytest.mark.parametrize("setting", ["/etc/allow", "../allow", ".git/allow"])
def test_an_allowlist_outside_the_workspace_is_refused(workspace, setting):
    workspace.config(f"[guard]\nallowlist_file = \"{setting}\"\n")
    assert_one_clear_line(run_cli("run", "--workspace", str(workspace.root)),
                          f"[guard] allowlist_file '{setting}': must be a path inside the "
                          "workspace")


def test_every_bad_allowlist_line_is_named_before_anything_starts(workspace):
    workspace.write(".gitsieve-allow", "path:docs/**\nrule:no-such-rule\nabc123\n")
    result = run_cli("run", "--workspace", str(workspace.root))
    assert_one_clear_line(result, ".gitsieve-allow:2: unknown rule id 'no-such-rule'")
    assert ".gitsieve-allow:3: a fingerprint has 32 hex characters" in result.stderr


def test_release_of_a_path_outside_the_workspace(workspace, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x\n")
    assert_one_clear_line(run_cli("release", "--workspace", str(workspace.root), "../x"),
                          "../x: not a path inside")


def test_release_as_root_on_someone_elses_tree_leaves_their_files(user_workspace):
    """Root releasing in a user's workspace: the key and the records belong to the user."""
    ws = user_workspace
    ws.write("notes.txt", "x\n")
    done = run_cli("release", "--workspace", str(ws.root), "notes.txt")
    assert done.returncode == 0, done.stderr
    runtime = ws.root / ".git" / "gitsieve"
    for name in (RELEASES_FILE,):
        info = os.stat(runtime / name)
        assert (info.st_uid, info.st_mode & 0o777) == (ws.user.uid, 0o600)
    assert os.stat(runtime).st_uid == ws.user.uid


def test_an_ordinary_user_is_guarded_and_releases(user_workspace):
    """gitsieve run by an ordinary user (unprivileged attribution): a secret is held, the
    clean file synced, and the user's own release lets the secret's file go."""
    ws, user = user_workspace, user_workspace.user
    token = "gh" + "p_" + Randomness(1205).mixed(ALNUM, 36)
    ws.write(".gitsieve.toml", "[debounce]\nallow = 0.2\ndefault = 0.3\n[limits]\n"
             "cooldown_seconds = 0\n[health]\ninterval = 0.5\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "config")
    ws.git("push", "-q")
    log = ws.root.parent / "gitsieve.log"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return user.run(USER_PYTHON, "-m", "gitsieve.common.tools.cli", *args,
                        "--workspace", str(ws.root), timeout=90)

    with open(log, "wb") as out:
        proc = user.popen(USER_PYTHON, "-m", "gitsieve.common.tools.cli", "run",
                          "--workspace", str(ws.root), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: cli("status").returncode == 0, 60, 0.5, "gitsieve running as the user")
        ws.write("docs/token.md", f"token {token}\n")
        ws.write("docs/clean.md", "clean\n")
        held = cli("flush", "--timeout", "30")
        assert held.returncode == 3, held.stdout + held.stderr + log.read_text()
        assert re.search(r"held docs/token.md: .*secret found: docs/token.md:1:7: GitHub token",
                         held.stdout), held.stdout
        assert token[4:16] not in held.stdout
        released = cli("release", "docs/token.md")
        assert released.returncode == 0, released.stderr
        done = cli("flush", "--timeout", "30")
        assert done.returncode == 0, done.stdout + done.stderr
        files = ws.git("ls-tree", "-r", "--name-only", "origin/main")
        assert "docs/token.md" in files and "docs/clean.md" in files
        info = os.stat(ws.root / ".git" / "gitsieve" / KEY_FILE)
        assert (info.st_uid, info.st_mode & 0o777) == (user.uid, 0o600)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
