"""``mark --system``: blob ids match git's, refusals write nothing, the CLI and a hook."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from gitsieve.common.agent.journal import JournalReader, Op
from gitsieve.common.agent.mark import MarkRefusal, MarkRefused, git_blob_id, mark_system


def git_hash(data: bytes) -> str:
    return subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True,
                          check=True).stdout.decode().strip()


@pytest.fixture
def workspace(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path / "ws")], check=True)
    return tmp_path / "ws"


def test_blob_ids_are_gits(workspace):
    (workspace / "text").write_bytes(b"hello\n")
    (workspace / "empty").write_bytes(b"")
    big = os.urandom(3 << 20)
    (workspace / "big").write_bytes(big)
    (workspace / "link").symlink_to("text")
    assert git_blob_id(workspace / "text") == git_hash(b"hello\n")
    assert git_blob_id(workspace / "empty") == git_hash(b"")
    assert git_blob_id(workspace / "big") == git_hash(big)
    assert git_blob_id(workspace / "link") == git_hash(b"text")  # git stores the target
    assert git_blob_id(workspace / "absent") is None


def test_mark_system_appends_one_record_per_path(workspace, tmp_path, monkeypatch):
    (workspace / "a.txt").write_text("a\n")
    journal = tmp_path / "journal"
    monkeypatch.chdir(workspace)
    marked = mark_system(journal, workspace, ["a.txt", str(workspace / "gone")])
    assert [(item.path, item.digest) for item in marked] == [
        ("a.txt", git_hash(b"a\n")), ("gone", None)]
    records = JournalReader(journal).read_new()
    assert [(r.op, r.path, r.digest, r.pid) for r in records] == [
        (Op.MARK, "a.txt", git_hash(b"a\n"), os.getpid()), (Op.MARK, "gone", None, os.getpid())]


@pytest.mark.parametrize("path, reason", [("../elsewhere", MarkRefusal.OUTSIDE_WORKSPACE),
                                          (".git/config", MarkRefusal.INSIDE_GIT_DIR),
                                          ("sub", MarkRefusal.NOT_A_FILE)])
def test_refusals_write_nothing(workspace, tmp_path, path, reason):
    (workspace / "sub").mkdir()
    (workspace / "ok").write_text("x")
    journal = tmp_path / "journal"
    with pytest.raises(MarkRefused) as refused:
        mark_system(journal, workspace, [workspace / "ok", workspace / path])
    assert refused.value.reason is reason
    assert not journal.exists() or JournalReader(journal).read_new() == []


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", *args], cwd=cwd,
                          capture_output=True)


def test_the_cli_marks_into_the_runtime_directory_and_refuses_in_one_line(workspace):
    (workspace / "notes.md").write_text("n\n")
    assert cli("mark", "--system", "notes.md", cwd=workspace).returncode == 0
    records = JournalReader(workspace / ".git" / "gitsieve" / "agent").read_new()
    assert [(r.op, r.path, r.digest) for r in records] == [(Op.MARK, "notes.md",
                                                            git_hash(b"n\n"))]
    refused = cli("mark", "--system", "/etc/hostname", cwd=workspace)
    assert refused.returncode == 2
    assert refused.stderr.decode().splitlines() == [
        f"gitsieve mark: /etc/hostname: not inside the workspace {workspace}"]
    missing = cli("mark", "--system", cwd=workspace)
    assert missing.returncode == 2 and "PATH" in missing.stderr.decode()


def readme_hook_command() -> str:
    """The post-write hook command of the README's settings example."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```json\n(\{\n  \"hooks\".*?)\n```", text, re.S)
    assert block, "the README has no hook settings example"
    settings = json.loads(block.group(1))
    return settings["hooks"]["PostToolUse"][0]["hooks"][0]["command"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="the README's hook example uses jq")
def test_the_readme_post_write_hook_example(workspace):
    """The README's hook command, verbatim, fed the JSON an agent runtime's post-write hook
    receives on stdin (the tool call), run in the project directory."""
    (workspace / "src").mkdir()
    (workspace / "src" / "app.py").write_text("print(1)\n")
    event = json.dumps({"tool_name": "Write", "cwd": str(workspace),
                        "tool_input": {"file_path": str(workspace / "src" / "app.py")}})
    bin_dir = str(Path(sys.executable).parent)  # where `gitsieve` is installed
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", readme_hook_command()], input=event.encode(),
                            cwd=workspace, capture_output=True, env=env)
    assert result.returncode == 0, result.stderr
    records = JournalReader(workspace / ".git" / "gitsieve" / "agent").read_new()
    assert [(r.op, r.path, r.digest) for r in records] == [
        (Op.MARK, "src/app.py", git_hash(b"print(1)\n"))]
