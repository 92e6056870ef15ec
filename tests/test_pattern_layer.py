"""Layer 1: the PatternJudge on changes built as the watcher builds them (observe), the thin
actor's verdict-to-decision mapping, and one real-process pipeline test."""
from __future__ import annotations

import dataclasses
import time

import pytest
import zmq

from conftest import Unbundled, stage_reader, wait_for
from gitsieve.actors.pattern_layer import PatternLayer, decision_of
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.pattern import PatternJudge, observe, urgent
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision, RuleMatch
from gitsieve.common.protocol.states import Action, ChangeKind, Content, L1Reason, L3Reason
from gitsieve.common.protocol.trail import ContentStep, PatternStep, reason_text

RULES = """\
# test rules
BLOCK:logs/.*\\.log:System logs
ALLOW:docs/.*\\.md:User docs
ANALYZE:\\.claude/contexts/.*:Context files
ALLOW:.*\\.ignored:Would allow, but git ignores it first
"""


@dataclasses.dataclass
class Layer:
    """What L1 works with: the watcher's rules (observe) and the judge."""

    rules: RuleCache
    judge: PatternJudge

    @property
    def config(self):
        return self.judge.config


def make_layer(workspace) -> Layer:
    cfg = workspace.load()
    return Layer(RuleCache(cfg.patterns_file), PatternJudge(cfg))


@pytest.fixture
def layer(workspace):
    workspace.patterns(RULES)
    return make_layer(workspace)


def change(layer: Layer, path: str, seq: int = 1, kind: ChangeKind = ChangeKind.WRITE,
           trail: tuple = ()) -> Change:
    """A change as the watcher emits it: its junk and rule facts set by observe()."""
    made = observe(path, kind, seq, 100.0, 101.5 + seq, layer.rules, source="inotify")
    return dataclasses.replace(made, trail=trail) if trail else made


def decide(layer: Layer, *changes: Change) -> tuple[dict[str, Decision], dict[str, Change]]:
    """One judge round, mapped as the actor maps it: BLOCK/ALLOW to Decisions, ANALYZE
    changes passed on (as (change, step); the actor appends the step to the trail)."""
    steps = layer.judge.judge(list(changes))
    assert len(steps) == len(changes)
    assert all(type(step) is PatternStep for step in steps)
    decisions, analyzed = {}, {}
    for item, step in zip(changes, steps):
        if step.action == Action.ANALYZE:
            analyzed[item.path] = (item, step)
        else:
            decisions[item.path] = decision_of(item, step)
    return decisions, analyzed


def test_editor_junk_is_blocked_before_any_rule(layer):
    swap, backup = change(layer, "docs/.guide.md.swp"), change(layer, "docs/x.md~")
    assert (swap.junk, swap.rule) == ("vim swap file", None)  # no rule even looked at
    decisions, analyzed = decide(layer, swap, backup)
    assert not analyzed
    assert layer.judge.ignore_checks == 0  # junk needs no git
    blocked = decisions["docs/.guide.md.swp"]
    assert (blocked.commit, blocked.action) == (False, Action.BLOCK)
    assert blocked.trail == (PatternStep(Action.BLOCK, L1Reason.EDITOR_JUNK, "vim swap file"),)
    assert reason_text(blocked.trail[-1]) == "editor junk: vim swap file"
    assert decisions["docs/x.md~"].action == Action.BLOCK
    # junk wins over a rule even when a change carries one
    allowed = RuleMatch(Action.ALLOW, 3, "ALLOW:docs/.* (line 3)")
    [step] = layer.judge.judge([dataclasses.replace(swap, rule=allowed)])
    assert (step.action, step.reason) == (Action.BLOCK, L1Reason.EDITOR_JUNK)


def test_git_ignored_paths_are_blocked(layer, workspace):
    paths = ["ignored/deep/x.txt", "notes.ignored", "gone.ignored", ":(glob)odd*.ignored"]
    changes = [change(layer, path, seq, ChangeKind.DELETE if path == "gone.ignored"
                      else ChangeKind.WRITE) for seq, path in enumerate(paths, 1)]
    assert changes[1].rule.action == Action.ALLOW  # the rule would allow it
    decisions, analyzed = decide(layer, *changes)
    assert not analyzed
    for path in paths:
        assert decisions[path].commit is False
        assert decisions[path].trail[-1] == PatternStep(Action.BLOCK, L1Reason.IGNORED)
        assert reason_text(decisions[path].trail[-1]) == "ignored by git"


def test_tracked_file_matching_an_ignore_pattern_follows_the_rules(layer, workspace):
    workspace.write("kept.ignored", "tracked anyway\n")
    workspace.git("add", "-f", "kept.ignored")
    decisions, _ = decide(layer, change(layer, "kept.ignored"))
    assert decisions["kept.ignored"].commit is True
    step = decisions["kept.ignored"].trail[-1]
    assert (step.action, step.reason) == (Action.ALLOW, L1Reason.RULE)
    assert step.detail.startswith("ALLOW:.*\\.ignored (line 5")


def test_block_and_allow_rules_decide_with_fields_copied(layer):
    earlier = (ContentStep(Content.UNCHANGED, L3Reason.IDENTICAL),)  # any earlier step
    decisions, analyzed = decide(layer, change(layer, "logs/app.log", 7, ChangeKind.DELETE),
                                 change(layer, "docs/guide.md", 8, trail=earlier))
    assert not analyzed
    block = decisions["logs/app.log"]
    assert (block.commit, block.action, block.kind, block.seq, block.epoch, block.observed) == \
        (False, Action.BLOCK, ChangeKind.DELETE, 7, 100.0, 108.5)
    assert block.trail == (PatternStep(Action.BLOCK, L1Reason.RULE,
                                       "BLOCK:logs/.*\\.log (line 2: System logs)"),)
    allow = decisions["docs/guide.md"]
    assert (allow.commit, allow.action, allow.seq) == (True, Action.ALLOW, 8)
    assert allow.trail == earlier + (PatternStep(Action.ALLOW, L1Reason.RULE,
                                                 "ALLOW:docs/.*\\.md (line 3: User docs)"),)
    # decisions survive the wire as they are
    for decision in (block, allow):
        assert messages.decode(messages.encode(decision)) == decision


def test_analyze_rule_passes_the_change_on_with_its_trail(layer):
    decisions, analyzed = decide(layer, change(layer, ".claude/contexts/today.json", 3))
    assert not decisions
    passed, step = analyzed[".claude/contexts/today.json"]
    assert (passed.seq, passed.epoch, passed.observed, passed.source) == (3, 100.0, 104.5,
                                                                         "inotify")
    assert step == PatternStep(Action.ANALYZE, L1Reason.RULE,
                               "ANALYZE:\\.claude/contexts/.* (line 4: Context files)")
    assert not step.learned


def test_default_action_applies_when_no_rule_matches(layer):
    decisions, analyzed = decide(layer, change(layer, "src/main.py"))
    assert layer.config.default_action == Action.ANALYZE
    assert not decisions
    _, step = analyzed["src/main.py"]
    assert step == PatternStep(Action.ANALYZE, L1Reason.DEFAULT)
    assert reason_text(step) == "[filter] default"


@pytest.mark.parametrize("default, commit", [("BLOCK", False), ("ALLOW", True)])
def test_configured_default_action(workspace, default, commit):
    workspace.config(f'[filter]\ndefault = "{default}"\n')
    layer = make_layer(workspace)
    decisions, analyzed = decide(layer, change(layer, "src/main.py"))
    assert not analyzed
    assert decisions["src/main.py"].commit is commit
    assert decisions["src/main.py"].trail[-1] == PatternStep(Action(default), L1Reason.DEFAULT)


def test_one_ignore_check_per_round(layer, workspace):
    batch = [change(layer, f"src/f{i}.py", i) for i in range(50)] + [
        change(layer, "ignored/a", 99)]
    decisions, analyzed = decide(layer, *batch)
    assert layer.judge.ignore_checks == 1
    assert len(analyzed) == 50 and decisions["ignored/a"].commit is False
    layer.judge.judge([])  # nothing to judge: no git call at all
    assert layer.judge.ignore_checks == 1
    # the actor buffers changes and judges them once per round; an empty round runs no git
    actor = PatternLayer(workspace.load())
    try:
        assert actor.context is None  # building the actor opens no socket
        actor.on_tick(time.monotonic())
        assert actor.judge.ignore_checks == 0
        for item in batch:
            actor.on_change(item)
        assert (actor.queue_depth(), actor.wakeup_in()) == (51, 0.0)
    finally:
        actor.close()


def test_rules_file_edits_are_picked_up(layer, workspace):
    decisions, _ = decide(layer, change(layer, "notes/a.txt", 1))
    assert "notes/a.txt" not in decisions  # default ANALYZE
    workspace.patterns("BLOCK:notes/.*:Scratch\n")

    def blocked():
        decisions, _ = decide(layer, change(layer, "notes/a.txt", 2))
        return "notes/a.txt" in decisions
    wait_for(blocked, 5, interval=0.1, message="reloaded rules")


def test_real_processes(workspace, actors):
    workspace.patterns(RULES)
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    rules = RuleCache(cfg.patterns_file)
    context = zmq.Context()
    socks = []

    def sock(kind):
        s = context.socket(kind)
        s.linger = 0
        socks.append(s)
        return s
    try:
        decisions = sock(zmq.PULL)
        decisions.bind(cfg.endpoints.decisions)
        decisions = Unbundled(decisions)
        analyzed = stage_reader(context, cfg, "l2")
        socks.append(analyzed)
        producer = sock(zmq.PUSH)
        producer.connect(cfg.endpoints.stage_in("l1"))
        actors("router", workspace.root)
        actors("pattern_layer", workspace.root)  # actor id "l1"
        paths = ["docs/guide.md", "logs/a.log", ".claude/contexts/c.json", "src/x.py",
                 ".x.swp", "ignored/y"]
        sent = {}
        for seq, path in enumerate(paths, 1):
            # as the watcher sends it: observed once, then [route, body]
            sent[path] = observe(path, ChangeKind.WRITE, seq, 100.0, 101.5 + seq, rules)
            producer.send_multipart(messages.stage_frames(sent[path], urgent(sent[path])))
        got_decisions: dict[str, Decision] = {}
        got_changes: dict[str, Change] = {}

        def collect():
            while decisions.poll(0):
                d = messages.decode(decisions.recv())
                got_decisions[d.path] = d
            while analyzed.poll(0):
                c = messages.decode(analyzed.recv())
                got_changes[c.path] = c
            return len(got_decisions) + len(got_changes) >= len(paths)
        wait_for(collect, 15, message="every change decided or passed on")
        assert {p: d.commit for p, d in got_decisions.items()} == {
            "docs/guide.md": True, "logs/a.log": False, ".x.swp": False, "ignored/y": False}
        assert set(got_changes) == {".claude/contexts/c.json", "src/x.py"}
        # passed on unchanged but for L1's step appended to the trail
        assert got_changes["src/x.py"] == dataclasses.replace(
            sent["src/x.py"], trail=(PatternStep(Action.ANALYZE, L1Reason.DEFAULT),))
        assert reason_text(got_changes["src/x.py"].trail[-1]) == "[filter] default"
        assert got_changes[".claude/contexts/c.json"].trail == (PatternStep(
            Action.ANALYZE, L1Reason.RULE,
            "ANALYZE:\\.claude/contexts/.* (line 4: Context files)"),)
        assert got_decisions[".x.swp"].trail == (
            PatternStep(Action.BLOCK, L1Reason.EDITOR_JUNK, "vim swap file"),)
        assert got_decisions["ignored/y"].trail == (PatternStep(Action.BLOCK, L1Reason.IGNORED),)
        guide = got_decisions["docs/guide.md"]
        assert (guide.action, guide.kind, guide.seq, guide.epoch, guide.observed) == (
            Action.ALLOW, ChangeKind.WRITE, 1, 100.0, 102.5)
        status = control.request(cfg, "l1", "status", timeout=5).data
        assert {key: value for key, value in status.items() if key.startswith("verdict_")} \
            == {"verdict_ALLOW": 1, "verdict_BLOCK": 3, "verdict_ANALYZE": 2}
        assert status["ignore_checks"] >= 1 and status["errors"] == 0
        assert status["queue"] == 0
    finally:
        for s in socks:
            s.close(0)
        context.term()
