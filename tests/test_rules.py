"""Layer-1 rules: parsing, errors, editor junk (judge/junk.py), and the reloading cache."""
from __future__ import annotations

import logging
import os

import pytest

from gitsieve.common.judge.junk import editor_junk
from gitsieve.common.judge.rules import (
    DEFAULT_PATTERNS,
    RuleCache,
    RulesError,
    RuleSet,
)
from gitsieve.common.protocol.messages import RuleMatch
from gitsieve.common.protocol.states import Action


def test_comments_blank_lines_and_descriptions():
    rules = RuleSet.parse("""
# a comment
BLOCK:logs/.*\\.log:System logs

   # indented comment
allow:docs/.*\\.md
Analyze:notes/.*:Mixed: written by both
""", "rules.conf")
    assert [(r.action, r.regex, r.description, r.line) for r in rules.rules] == [
        ("BLOCK", r"logs/.*\.log", "System logs", 3),
        ("ALLOW", r"docs/.*\.md", "", 6),
        ("ANALYZE", "notes/.*", "Mixed: written by both", 7),
    ]
    assert all(type(r.action) is Action for r in rules.rules)


def test_escaped_colon_belongs_to_the_regex():
    rules = RuleSet.parse(r"BLOCK:c\:/temp/.*:Windows-looking path")
    rule = rules.rules[0]
    assert rule.regex == r"c\:/temp/.*"
    assert rule.description == "Windows-looking path"
    assert rules.match("c:/temp/x") is rule
    assert rules.match("c/temp/x") is None


def test_first_match_wins_and_fullmatch_is_used():
    rules = RuleSet.parse("BLOCK:docs/secret\\.md\nALLOW:docs/.*\\.md\nBLOCK:.*\n")
    assert rules.match("docs/secret.md").action == "BLOCK"
    assert rules.match("docs/readme.md").action == "ALLOW"
    # fullmatch: "docs/readme.md.bak" is not "docs/.*\.md" followed by nothing
    assert rules.match("docs/readme.md.bak").line == 3
    partial = RuleSet.parse("ALLOW:docs")
    assert partial.match("docs/readme.md") is None
    assert partial.match("docs").action == "ALLOW"


def test_describe():
    rules = RuleSet.parse("\n\n\nBLOCK:logs/.*\\.log:System logs\nALLOW:x")
    assert rules.rules[0].describe() == r"BLOCK:logs/.*\.log (line 4: System logs)"
    assert rules.rules[1].describe() == "ALLOW:x (line 5)"
    # what the watcher carries on a Change: the action, the line and this description
    assert rules.rules[0].as_match() == RuleMatch(Action.BLOCK, 4,
                                                  r"BLOCK:logs/.*\.log (line 4: System logs)")


@pytest.mark.parametrize("text, line, fragment", [
    ("ALLOW:a\nFROB:b", 2, "unknown action 'FROB'"),
    ("# c\n\nBLOCK:[unclosed", 3, "bad regex"),
    ("BLOCK::description only", 1, "empty regex"),
    ("ALLOW:ok\nBLOCK", 2, "expected ACTION:REGEX"),
])
def test_errors_carry_path_and_line(text, line, fragment):
    with pytest.raises(RulesError) as info:
        RuleSet.parse(text, "my/rules.conf")
    assert info.value.line == line
    assert str(info.value).startswith(f"my/rules.conf:{line}: ")
    assert fragment in str(info.value)


def test_load_missing_file_is_empty(tmp_path):
    rules = RuleSet.load(tmp_path / "absent.conf")
    assert len(rules) == 0
    assert rules.match("anything") is None


def test_load_reads_file(tmp_path):
    path = tmp_path / "rules.conf"
    path.write_text("ALLOW:projects/.*:User project files\n")
    assert RuleSet.load(path).match("projects/a/b.txt").description == "User project files"


def test_load_bad_file_names_the_file(tmp_path):
    path = tmp_path / "rules.conf"
    path.write_text("BLOCK:(\n")
    with pytest.raises(RulesError, match=rf"^{path}:1: bad regex"):
        RuleSet.load(path)


def test_default_patterns_parse_and_classify():
    rules = RuleSet.parse(DEFAULT_PATTERNS)
    expected = {
        ".claude/autonomous/service-status.json": "BLOCK",
        ".claude/memory/enhanced-context.json": "BLOCK",
        ".claude/intelligence/x.log": "BLOCK",
        "logs/system.log": "BLOCK",
        "scripts/deploy.sh": "ALLOW",
        "docs/guide.md": "ALLOW",
        "projects/app/main.py": "ALLOW",
        "CLAUDE.md": "ALLOW",
        ".claude/contexts/today.json": "ANALYZE",
        ".claude/decisions/d1.md": "ANALYZE",
    }
    for path, action in expected.items():
        assert rules.match(path).action == action, path
    assert rules.match("src/main.py") is None
    assert rules.match("xclaude/autonomous/a") is None  # the leading dot is literal


@pytest.mark.parametrize("path", [
    ".notes.txt.swp", "dir/.main.py.swo", ".x.swx", "a/b/.f.swn", "file.txt~", "sub/4913",
    ".#notes.org", "#notes.org#", "dir/.goutputstream-XYZ123", "a.tmp", "d/b.bak", "c.orig",
    "src/main.py___jb_tmp___", "src/main.py___jb_old___", "docs/.~lock.report.odt#",
    "docs/~$report.docx", ".nfs000000000a1b2c3d00000001", "dl/data.zip.crdownload",
    "dl/data.zip.part", "notes/main.c.kate-swp", ".DS_Store", "img/Thumbs.db",
    "src/__pycache__/main.cpython-311.pyc", "src/mod.pyc", "pkg/__pycache__/x.any",
    "misc.txt.rej", "photos/.directory", "Desktop.ini", "ehthumbs.db", "f.py.save",
    "f.py.save.1",
])
def test_editor_junk(path):
    assert editor_junk(path)  # a non-empty kind, e.g. "vim swap file"


@pytest.mark.parametrize("path", [
    "notes.txt", "swp", "main.swp", "49130", "dir.tmp/real.txt", "~", "a#b", "README.md",
    "docs/original.md", "backup/file.txt", "src/main.py", "docs/part.md", "pycache/x.py",
    "DS_Store", "docs/lock.odt", "~", "src/__pycache__.md", "docs/save.md", "rej",
    "directory", "src/directory.py", "saved.txt",
])
def test_not_editor_junk(path):
    assert editor_junk(path) == ""


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rule_cache_reloads_on_change_at_most_every_interval(tmp_path):
    path = tmp_path / "rules.conf"
    path.write_text("ALLOW:a\n")
    clock = FakeClock()
    cache = RuleCache(path, check_interval=0.5, clock=clock)
    assert cache.match("a").action == "ALLOW"
    path.write_text("BLOCK:a\nALLOW:b\n")
    clock.now += 0.1
    assert cache.match("a").action == "ALLOW"  # not checked again yet
    clock.now += 0.5
    assert cache.match("a").action == "BLOCK"
    assert cache.match("b").action == "ALLOW"


def test_rule_cache_keeps_old_rules_on_bad_file_and_logs_once(tmp_path, caplog):
    path = tmp_path / "rules.conf"
    path.write_text("ALLOW:a\n")
    clock = FakeClock()
    cache = RuleCache(path, check_interval=0.5, clock=clock)
    path.write_text("ALLOW:a\nBLOCK:(broken\n")
    with caplog.at_level(logging.ERROR, logger="gitsieve.common.judge.rules"):
        for _ in range(5):
            clock.now += 1
            assert cache.match("a").action == "ALLOW"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{path}:2: bad regex" in errors[0].getMessage()
    assert cache.error.startswith(f"{path}:2:")
    # Fixed file: picked up, error cleared.
    path.write_text("BLOCK:a\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    clock.now += 1
    assert cache.match("a").action == "BLOCK"
    assert cache.error == ""


def test_rule_cache_file_appearing_and_disappearing(tmp_path):
    path = tmp_path / "rules.conf"
    clock = FakeClock()
    cache = RuleCache(path, clock=clock)
    assert cache.match("x") is None
    path.write_text("BLOCK:x\n")
    clock.now += 1
    assert cache.match("x").action == "BLOCK"
    path.unlink()
    clock.now += 1
    assert cache.match("x") is None



def test_a_directory_as_rules_file_is_refused_as_bad_input(tmp_path):
    """A directory where the rules file goes: IsADirectoryError, a traceback (fails
    before)."""
    (tmp_path / "rules.conf").mkdir()
    with pytest.raises(RulesError, match="not a regular file"):
        RuleSet.load(tmp_path / "rules.conf")
