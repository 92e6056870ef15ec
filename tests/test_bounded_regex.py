"""Every regex from configuration runs in bounded time (issue 14): the rules file, debounce
rules, volatile patterns, process and cgroup matchers.  A pathological pattern costs a
bounded time per match, gets a verdict that never silently drops a person's edit, and one
warning naming it.  (The timings asserted here are bounds an order of magnitude above the
timeout, only there to tell "bounded" from "hangs for minutes".)"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, processes_mentioning
from gitsieve.common.config import bounded_regex
from gitsieve.common.config.bounded_regex import BoundedPattern, RegexTimeout
from gitsieve.common.judge.attribution.base import AutonomousMatcher
from gitsieve.common.judge.attribution.exact import WriterRules
from gitsieve.common.judge.content import classify, compile_volatile, masked_digest
from gitsieve.common.judge.pattern import PatternJudge, observe
from gitsieve.common.judge.rules import RuleCache, RuleSet
from gitsieve.common.protocol.states import Action, ChangeKind, Content, L1Reason

# Each takes minutes or more with Python's re on EVIL; (a+)+$ is one `regex` happens to
# finish quickly, kept as the issue's own example.
PATHOLOGICAL = [r"(a+)+$", r"(a|aa)+$", r"(a|a)+$", r"(a*)*b", r"(a|a?)+$",
                r"((a+)|(a+))+$"]
EVIL = "a" * 39 + "!"
BOUND = 5.0  # seconds; a frozen match would take far longer


def bounded(call) -> float:
    started = time.monotonic()
    call()
    took = time.monotonic() - started
    assert took < BOUND, f"took {took:.1f}s"
    return took


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_rule_gives_analyze_with_one_warning(pattern, tmp_path, caplog):
    rules_file = tmp_path / "rules.conf"
    rules_file.write_text(f"ALLOW:{pattern}:evil\nBLOCK:.*:everything else\n")
    cache = RuleCache(rules_file, workspace=tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            found = []
            bounded(lambda: found.append(cache.match(EVIL)))
            match = found[0].as_match()
            if match.timed_out:
                # undecided: neither its ALLOW nor the later BLOCK decides; L2/L3 will
                assert (match.action, match.line) == (Action.ANALYZE, 1)
                assert "timed out" in match.text
            else:  # the engine finished this one: a normal first-match verdict
                assert match.action in (Action.ALLOW, Action.BLOCK)
    warnings = [r for r in caplog.records if "took too long" in r.getMessage()]
    assert len(warnings) <= 1
    if warnings:
        assert pattern in warnings[0].getMessage() and "line 1" in warnings[0].getMessage()
    assert cache.match("docs/fine.md").action == Action.BLOCK  # the rest keeps working


def test_timed_out_rule_reaches_l1_as_analyze(workspace):
    workspace.patterns(r"BLOCK:(a|aa)+$:evil" + "\n")
    config = workspace.load()
    rules = RuleCache(config.patterns_file, workspace=config.workspace)
    change = observe(EVIL, ChangeKind.WRITE, 1, 1.0, 1.0, rules)
    assert change.rule.timed_out
    [step] = PatternJudge(config).judge([change])
    assert (step.action, step.reason) == (Action.ANALYZE, L1Reason.RULE_TIMED_OUT)


def test_debounce_rule_timeout_gives_the_default_quiet_period(workspace):
    workspace.config("""
        [debounce]
        default = 7
        rules = [ { pattern = "(a|aa)+$", seconds = 300 } ]
    """)
    config = workspace.load()
    assert bounded(lambda: config.debounce_for(EVIL, Action.ANALYZE)) is not None
    assert config.debounce_for(EVIL, Action.ANALYZE) == 7
    assert config.debounce_for("aaaa", Action.ANALYZE) == 300


def test_volatile_pattern_timeout_takes_the_change_as_real():
    volatile = compile_volatile([r"(a|aa)+$"])
    head, work = (EVIL + "\nx\n").encode(), (EVIL + "\ny\n").encode()
    found = []
    bounded(lambda: found.append(classify("t.txt", head, work, volatile=volatile)))
    assert found[0].verdict == Content.USER
    assert masked_digest("t.txt", work, volatile=volatile) is None
    new = classify("n.txt", None, EVIL.encode(), volatile=volatile)
    assert new.verdict == Content.USER  # never taken as a timestamp-only file


def test_process_and_cgroup_matchers_time_out_to_not_autonomous():
    matcher = AutonomousMatcher([r"(a|aa)+$"])
    assert bounded(lambda: matcher.matches(EVIL, EVIL)) is not None
    assert not matcher.matches(EVIL, EVIL)
    assert matcher.matches("aaaa")
    rules = WriterRules(cgroups=[r"(a|aa)+$"])
    assert rules.cgroups[0].pattern == r"(a|aa)+$"

    class Info:
        cmdline, uid, cgroup = "vim notes.md", 1000, EVIL
    assert bounded(lambda: rules.autonomous_reason(Info())) is not None
    assert rules.autonomous_reason(Info()) == ""


def test_bounded_pattern_reads_re_syntax_with_lookarounds_and_backreferences():
    assert BoundedPattern(r"(?!tmp/).*\.md").fullmatch("docs/a.md")
    assert not BoundedPattern(r"(?!tmp/).*\.md").fullmatch("tmp/a.md")
    assert BoundedPattern(r"(\w+)/\1\.txt").fullmatch("x/x.txt")
    with pytest.raises(RegexTimeout):
        BoundedPattern(r"(a|aa)+$").fullmatch(EVIL)


def test_rules_file_outside_the_workspace_is_never_quoted(workspace, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("secretuser:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    for where in (None, workspace.root):
        with pytest.raises(Exception) as info:
            RuleSet.load(secret, where)
        assert "hashhash" not in str(info.value) and "secretuser" not in str(info.value)
        assert f"{secret}:1:" in str(info.value)
    inside = workspace.patterns("BLOCK:(unclosed:oops\n")
    with pytest.raises(Exception, match=r"bad regex '\(unclosed'"):
        RuleSet.load(inside, workspace.root)


def test_etc_shadow_as_rules_file_via_the_cli_is_not_echoed(workspace):
    workspace.config('[filter]\npatterns_file = "/etc/shadow"\n')
    shadow = Path("/etc/shadow").read_text() if os.access("/etc/shadow", os.R_OK) else ""
    result = subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                             "--workspace", str(workspace.root)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "/etc/shadow" in result.stderr
    for line in shadow.splitlines():
        name = line.split(":")[0]
        assert line not in result.stderr and f"'{name}'" not in result.stderr


def test_a_fifo_as_rules_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    with pytest.raises(Exception, match="not a regular file"):
        bounded(lambda: RuleSet.load(fifo, tmp_path))


NESTED_COUNTS = ["(a{1000}){1000}", "((a{1000}){1000}){4}", "(?:x{999}){999}y",
                 r"(x{999}){999}\p{L}"]  # the last only regex reads: counted from the text


@pytest.mark.parametrize("pattern", NESTED_COUNTS)
def test_a_pattern_that_unrolls_to_gigabytes_is_refused_before_it_is_compiled(pattern):
    """Compiling ((a{1000}){1000}){4} took 4 s and 1.3 GB, in every process reading it."""
    started = time.monotonic()
    with pytest.raises(bounded_regex.error, match="unroll to more than"):
        BoundedPattern(pattern)
    assert time.monotonic() - started < 0.2  # refused, not compiled


@pytest.mark.parametrize("pattern", [r"a{65535}", r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+",
                                     r"(?<=x)\p{L}{3}", r"(?P<y>\d{4})(?(y)a{10}|b{20})",
                                     r"\{1000\}\{1000\}", r"(?>a{300})+b*"])
def test_counted_repetitions_of_real_patterns_compile(pattern):
    assert BoundedPattern(pattern).compiled is not None


def test_a_rules_line_that_unrolls_to_gigabytes_stops_run_with_its_line(workspace):
    workspace.patterns("ALLOW:docs/.*\nBLOCK:((a{1000}){1000}){4}\n")
    try:
        result = subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "run",
                                 "--workspace", str(workspace.root)], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        for proc in processes_mentioning(str(workspace.root)):  # it ran: stop every actor
            proc.kill()
        raise
    assert result.returncode == 2
    assert "system-patterns.conf:2: bad regex" in result.stderr
    assert "unroll to more than" in result.stderr


def test_a_pattern_is_compiled_once_per_process_and_the_table_is_bounded():
    """Every BoundedPattern of one text shares one compiled pattern: the runner compiles
    the configured ones before it forks, and an actor finds them there."""
    from gitsieve.common.config import bounded_regex
    first = bounded_regex.BoundedPattern(r"build [0-9]+ of \w+")
    again = bounded_regex.BoundedPattern(r"build [0-9]+ of \w+", "another reader")
    assert again.compiled is first.compiled
    assert again.search("build 12 of main") is not None
    for number in range(bounded_regex.COMPILED_KEPT + 5):
        bounded_regex.compiled(f"filler {number}")
    assert len(bounded_regex._COMPILED) <= bounded_regex.COMPILED_KEPT
