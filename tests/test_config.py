"""The configuration contract: one declaration per key (defaults, ranges, docs), one-line
errors, the README table and ``gitsieve init`` in step with it, a private runtime dir."""
import os
import re
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from gitsieve.common import config as config_mod
from gitsieve.common.config import schema
from gitsieve.common.config.loader import ConfigError


def test_defaults_without_a_config_file_sync_at_once(workspace):
    cfg = workspace.load()
    assert cfg.workspace == workspace.root
    assert cfg.default_action == "ANALYZE"
    assert cfg.autonomous_processes == ("claude-autonomous", "claude-.*-monitor")
    assert cfg.volatile_keys == ("last_update", "timestamp", "session_id")
    # quiet periods of about a second, rate limits a person never meets
    assert (cfg.debounce_allow, cfg.debounce_default, cfg.debounce_rules) == (0.5, 1.0, ())
    assert cfg.cooldown_seconds <= 2
    assert cfg.max_commits_per_hour >= 600 and cfg.max_commits_per_day >= 5000
    assert (cfg.remote, cfg.branch, cfg.min_free_mb) == ("origin", "main", 100)
    assert cfg.patterns_file == workspace.root / ".claude/sync-filter/system-patterns.conf"
    assert str(cfg.runtime_dir).startswith(str(workspace.root / ".git"))
    assert cfg.endpoints.decisions.startswith("ipc://")


def test_every_key_has_a_type_a_default_a_doc_and_numbers_a_range():
    for key in schema.KEYS:
        assert key.doc, key.name
        if key.kind in (int, float):
            assert key.minimum is not None and key.maximum is not None, key.name
            assert key.minimum <= key.default <= key.maximum, key.name


def test_the_readme_table_is_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert schema.render_markdown() in readme, (
        "README's configuration table differs from the schema: paste "
        "`python -c 'from gitsieve.common.config import schema; "
        "print(schema.render_markdown())'`")


@pytest.mark.parametrize("profile", schema.PROFILES)
def test_init_profiles_render_a_config_that_loads_to_their_defaults(workspace, profile):
    workspace.config(schema.render_toml(None if profile == "default" else profile))
    cfg = workspace.load()
    for key in schema.KEYS:
        value = getattr(cfg, key.attribute)
        if key.kind in (int, float, bool, str) and key.convert is None and not key.choices \
                and not isinstance(value, os.PathLike):
            assert value == key.default_in(profile), key.name
    if profile == "conservative":  # the original design's figures, one profile away
        assert (cfg.debounce_allow, cfg.debounce_default) == (2.0, 30.0)
        assert (cfg.max_commits_per_hour, cfg.max_commits_per_day,
                cfg.cooldown_seconds) == (10, 50, 300)
        assert cfg.debounce_for(".claude/autonomous/x", "ANALYZE") == 300


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
    ("[debounce]\nallow = \"soon\"\n", 2, "must be a number"),
    ("[debounce]\nallow = -1\n", 2, "must be within 0-3600"),
    ("[filter]\nautonomous_processes = [\"(unclosed\"]\n", 2, "bad regex"),
    ("\n[debounce]\nrules = [ { pattern = \"a\" } ]\n", 3, "entries must be"),
    ("[debounce]\nrules = [ { pattern = \"[z-a]\", seconds = 1 } ]\n", 2, "bad regex"),
    ("[nosuch]\nx = 1\n", None, "unknown section"),
    ("[git]\nremtoe = \"origin\"\n", 2, "unknown key 'remtoe'"),
    ("[workers]\nl2 = 0\n", 2, "must be within 1-16"),
    # values that used to be accepted and then burned CPU or memory
    ("[runtime]\nheartbeat_interval = 0\n", 2, "must be within 0.1-60"),
    ("[workers]\nl2 = 100000\n", 2, "must be within 1-16"),
    ("[workers]\nstage_window = 0\n", 2, "must be within"),
    ("[watcher]\nmodify_interval = 0\n", 2, "must be within"),
    ("[health]\ninterval = nan\n", 2, "finite"),
    ("[limits]\nmax_commits_per_hour = 1.5\n", 2, "must be an integer"),
    ("[filter]\nlearning = 1\n", 2, "true or false"),
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


def test_a_fifo_as_config_is_refused_without_hanging(workspace, tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(
        pytest.raises(ConfigError, config_mod.load, workspace.root, fifo)), daemon=True)
    reader.start()
    reader.join(10)
    assert outcome and "not a regular file" in str(outcome[0].value)


def test_a_huge_config_is_refused_at_once(workspace):
    path = workspace.config("# " + "x" * (10 * 1024 * 1024) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="larger than"):
        config_mod.load(workspace.root, path)
    assert time.monotonic() - started < 5  # a guard against a hang, not a speed target


def test_not_a_repository(tmp_path):
    with pytest.raises(ConfigError, match="not a git repository"):
        config_mod.load(tmp_path)


def test_runtime_dir_is_private_and_long_paths_get_a_private_short_alias(workspace,
                                                                        monkeypatch, tmp_path):
    xdg = Path(tempfile.mkdtemp(prefix="x", dir="/tmp"))  # short, as /run/user/UID is
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    deep = workspace.root / ("d" * 60) / ("e" * 60)
    workspace.config(f'[runtime]\ndir = "{deep}"\n')
    cfg = workspace.load()
    assert len(cfg.endpoints.ipc_dir) <= 80
    assert cfg.endpoints.ipc_dir.startswith(str(xdg) + "/")
    config_mod.prepare_runtime_dir(cfg)
    assert os.stat(cfg.runtime_dir).st_mode & 0o777 == 0o700
    assert os.path.realpath(cfg.endpoints.ipc_dir) == str(deep)
    config_mod.prepare_runtime_dir(cfg)  # idempotent


def test_tmp_as_runtime_dir_is_refused_and_left_alone(workspace):
    before = os.stat("/tmp")
    workspace.config('[runtime]\ndir = "/tmp"\n')
    cfg = workspace.load()
    with pytest.raises(config_mod.RuntimeDirError, match="runtime directory refused"):
        config_mod.prepare_runtime_dir(cfg)
    after = os.stat("/tmp")
    assert (stat.S_IMODE(after.st_mode), after.st_uid) == (stat.S_IMODE(before.st_mode),
                                                           before.st_uid)


@pytest.mark.parametrize("kind", ["symlink", "foreign-files", "open-mode"])
def test_a_runtime_dir_that_is_not_gitsieves_own_is_refused(workspace, tmp_path, kind):
    target = tmp_path / "rt"
    if kind == "symlink":
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        target.symlink_to(real)
    else:
        target.mkdir(mode=0o700)
        if kind == "foreign-files":
            (target / "someones.txt").write_text("x")
        else:
            os.chmod(target, 0o755)
    workspace.config(f'[runtime]\ndir = "{target}"\n')
    with pytest.raises(config_mod.RuntimeDirError) as info:
        config_mod.prepare_runtime_dir(workspace.load())
    assert re.search(r"symbolic link|not empty|lets others in", str(info.value))


def test_a_predictable_alias_base_made_by_someone_else_is_refused(workspace, monkeypatch,
                                                                   tmp_path):
    """Without $XDG_RUNTIME_DIR the alias lives in /tmp/gitsieve-UID, which must be ours and
    private: a directory another user made first (mode 0777 here) is refused."""
    from gitsieve.common.config import endpoints, runtime
    base = tmp_path / "b"
    base.mkdir()
    os.chmod(base, 0o777)
    monkeypatch.setattr(endpoints, "private_base", lambda: base)
    monkeypatch.setattr(runtime, "private_base", lambda: base)
    deep = workspace.root / ("d" * 60) / ("e" * 60)
    workspace.config(f'[runtime]\ndir = "{deep}"\n')
    with pytest.raises(config_mod.RuntimeDirError, match="not private"):
        config_mod.prepare_runtime_dir(workspace.load())


def test_an_unset_branch_is_one_the_repository_has(tmp_path):
    """[git] branch left out: "main" where the repository has it, else "master" (what ``git
    init`` still makes), else any branch, whichever branch is checked out; a branch the
    file names is kept as written."""
    from conftest import create_workspace, git
    for name in ("master", "trunk", "main"):
        (tmp_path / name).mkdir()
    on_master = create_workspace(tmp_path / "master", branch="master")
    assert on_master.load().branch == "master"
    git(on_master.root, "switch", "-q", "-c", "feature")
    assert on_master.load().branch == "master"  # the same for every command, any time
    on_trunk = create_workspace(tmp_path / "trunk", branch="trunk")
    assert on_trunk.load().branch == ""
    on_main = create_workspace(tmp_path / "main")
    git(on_main.root, "switch", "-q", "-c", "master")
    assert on_main.load().branch == "main"
    on_master.config('[git]\nbranch = "main"\n')
    assert on_master.load().branch == "main"


def test_a_directory_as_config_is_one_line_not_a_traceback(workspace, tmp_path):
    """`.gitsieve.toml` made a directory, or `--config /tmp`: an IsADirectoryError
    traceback and exit 1 (fails before)."""
    with pytest.raises(ConfigError, match="not a regular file"):
        config_mod.load(workspace.root, tmp_path)


def test_a_rules_file_the_config_names_and_that_is_missing_is_said_at_start(workspace):
    """A typo in [filter] patterns_file left gitsieve running with no rules at all, and
    nothing said so.  The rules file is optional (read once it appears): a warning, not an
    error; the default path, not named by any config, says nothing."""
    assert config_mod.start_warnings(workspace.load()) == []
    workspace.config('[filter]\npatterns_file = "rules/typo.conf"\n')
    cfg = workspace.load()
    warnings = config_mod.start_warnings(cfg)
    assert len(warnings) == 1
    assert str(workspace.root / "rules/typo.conf") in warnings[0]
    assert "does not exist: no rules are in force" in warnings[0]
    assert str(cfg.source) in warnings[0] and "ANALYZE" in warnings[0]
    workspace.write("rules/typo.conf", "BLOCK:x\n")
    assert config_mod.start_warnings(workspace.load()) == []
