"""The configuration contract: defaults, every documented key, and one-line errors."""
import os

import pytest

from gitsieve.common import config as config_mod
from gitsieve.common.config.loader import ConfigError


def test_defaults_without_a_config_file(workspace):
    cfg = workspace.load()
    assert cfg.workspace == workspace.root
    assert cfg.default_action == "ANALYZE"
    assert cfg.autonomous_processes == ("claude-autonomous", "claude-.*-monitor")
    assert cfg.volatile_keys == ("last_update", "timestamp", "session_id")
    assert (cfg.debounce_allow, cfg.debounce_default) == (2.0, 30.0)
    assert (cfg.max_commits_per_hour, cfg.max_commits_per_day, cfg.cooldown_seconds) == (10, 50, 300)
    assert (cfg.remote, cfg.branch, cfg.min_free_mb) == ("origin", "main", 100)
    assert cfg.patterns_file == workspace.root / ".claude/sync-filter/system-patterns.conf"
    assert str(cfg.runtime_dir).startswith(str(workspace.root / ".git"))
    assert cfg.endpoints.decisions.startswith("ipc://")


def test_contract_keys_work_exactly(workspace):
    workspace.config(r'''
        [filter]
        patterns_file = "rules.conf"
        default = "allow"
        autonomous_processes = ["my-agent"]
        volatile_keys = ["ts"]
        [debounce]
        allow = 0.5
        default = 7
        rules = [ { pattern = "\\.claude/autonomous/.*", seconds = 300 },
                  { pattern = ".*\\.(sh|py|js|ts)", seconds = 5 } ]
        [limits]
        max_commits_per_hour = 3
        max_commits_per_day = 4
        cooldown_seconds = 1.5
        [git]
        remote = ""
        branch = ""
        [health]
        min_free_mb = 5
    ''')
    cfg = workspace.load()
    assert cfg.patterns_file == workspace.root / "rules.conf"
    assert cfg.default_action == "ALLOW"
    assert cfg.autonomous_processes == ("my-agent",)
    assert cfg.debounce_for("docs/x.md", "ALLOW") == 0.5
    assert cfg.debounce_for(".claude/autonomous/s.json", "ANALYZE") == 300
    assert cfg.debounce_for("a/b.py", "ANALYZE") == 5
    assert cfg.debounce_for("notes.txt", "ANALYZE") == 7
    assert (cfg.max_commits_per_hour, cfg.max_commits_per_day, cfg.cooldown_seconds) == (3, 4, 1.5)
    assert (cfg.remote, cfg.branch, cfg.min_free_mb) == ("", "", 5)


@pytest.mark.parametrize("text, line, fragment", [
    ("[filter]\ndefault = \n", 2, "invalid TOML"),
    ("[filter]\ndefault = \"MAYBE\"\n", 2, "must be one of"),
    ("[debounce]\nallow = \"soon\"\n", 2, "must be int or float"),
    ("[debounce]\nallow = -1\n", 2, "must not be negative"),
    ("[filter]\nautonomous_processes = [\"(unclosed\"]\n", 2, "bad regex"),
    ("\n[debounce]\nrules = [ { pattern = \"a\" } ]\n", 3, "rules entry"),
    ("[debounce]\nrules = [ { pattern = \"[z-a]\", seconds = 1 } ]\n", 2, "bad regex"),
    ("[nosuch]\nx = 1\n", None, "unknown section"),
    ("[git]\nremtoe = \"origin\"\n", 2, "unknown key 'remtoe'"),
    ("[workers]\nl2 = 0\n", 2, "at least 1"),
])
def test_invalid_config_names_file_line_and_reason(workspace, text, line, fragment):
    path = workspace.config(text)
    with pytest.raises(ConfigError) as info:
        workspace.load()
    message = str(info.value)
    assert message.startswith(str(path))
    assert fragment in message
    if line:
        assert f"{path}:{line}:" in message


def test_explicit_config_must_exist(workspace):
    with pytest.raises(ConfigError, match="cannot read config"):
        config_mod.load(workspace.root, workspace.root / "missing.toml")


def test_not_a_repository(tmp_path):
    with pytest.raises(ConfigError, match="not a git repository"):
        config_mod.load(tmp_path)


def test_runtime_dir_is_private_and_long_paths_get_a_short_ipc_alias(workspace, tmp_path):
    deep = workspace.root / ("d" * 60) / ("e" * 60)
    workspace.config(f'[runtime]\ndir = "{deep}"\n')
    cfg = workspace.load()
    assert len(cfg.endpoints.ipc_dir) <= 80
    config_mod.prepare_runtime_dir(cfg)
    assert os.stat(cfg.runtime_dir).st_mode & 0o777 == 0o700
    assert os.path.realpath(cfg.endpoints.ipc_dir) == str(deep)
    config_mod.prepare_runtime_dir(cfg)  # idempotent
