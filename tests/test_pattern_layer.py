"""Layer 1: handler-level tests with recording sockets, and one real-process pipeline test."""
from __future__ import annotations

import time

import pytest
import zmq

from conftest import FakeSocket, stage_reader, wait_for
from gitsieve.actors.pattern_layer import PatternLayer
from gitsieve.common import config as config_mod
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, Decision

RULES = """\
# test rules
BLOCK:logs/.*\\.log:System logs
ALLOW:docs/.*\\.md:User docs
ANALYZE:\\.claude/contexts/.*:Context files
ALLOW:.*\\.ignored:Would allow, but git ignores it first
"""


@pytest.fixture
def layer(workspace):
    workspace.patterns(RULES)
    actor = PatternLayer(workspace.load())
    actor.prepare()
    actor.to_l2 = FakeSocket()
    actor.to_decisions = FakeSocket()
    yield actor
    actor.context.term()


def change(path: str, seq: int = 1, kind: str = "write", trail: tuple = ()) -> Change:
    return Change(path=path, kind=kind, seq=seq, epoch=100.0, observed=101.5 + seq,
                  source="inotify", trail=trail)


def decide(layer, *changes) -> tuple[dict[str, Decision], dict[str, Change]]:
    for item in changes:
        layer.on_change(item)
    layer.on_tick(time.monotonic())
    decisions = {d.path: d for d in layer.to_decisions.messages()}
    analyzed = {c.path: c for c in layer.to_l2.messages()}
    return decisions, analyzed


def test_editor_junk_is_blocked_before_any_rule(layer):
    decisions, analyzed = decide(layer, change("docs/.guide.md.swp"), change("docs/x.md~"))
    assert not analyzed
    swap = decisions["docs/.guide.md.swp"]
    assert (swap.commit, swap.action) == (False, "BLOCK")
    assert swap.trail == ({"layer": "L1", "verdict": "BLOCK",
                           "reason": "editor junk: vim swap file"},)
    assert decisions["docs/x.md~"].action == "BLOCK"


def test_git_ignored_paths_are_blocked(layer, workspace):
    decisions, analyzed = decide(layer, change("ignored/deep/x.txt", 1),
                                 change("notes.ignored", 2), change("gone.ignored", 3, "delete"),
                                 change(":(glob)odd*.ignored", 4))
    assert not analyzed
    for path in ("ignored/deep/x.txt", "notes.ignored", "gone.ignored", ":(glob)odd*.ignored"):
        assert decisions[path].commit is False
        assert decisions[path].trail[-1]["reason"] == "ignored by git"


def test_tracked_file_matching_an_ignore_pattern_follows_the_rules(layer, workspace):
    workspace.write("kept.ignored", "tracked anyway\n")
    workspace.git("add", "-f", "kept.ignored")
    decisions, _ = decide(layer, change("kept.ignored"))
    assert decisions["kept.ignored"].commit is True
    assert decisions["kept.ignored"].trail[-1]["reason"].startswith("ALLOW:.*\\.ignored (line 5")


def test_block_and_allow_rules_decide_with_fields_copied(layer):
    earlier = ({"layer": "X", "verdict": "?", "reason": "earlier step"},)
    decisions, analyzed = decide(layer, change("logs/app.log", 7, "delete"),
                                 change("docs/guide.md", 8, trail=earlier))
    assert not analyzed
    block = decisions["logs/app.log"]
    assert (block.commit, block.action, block.kind, block.seq, block.epoch, block.observed) == \
        (False, "BLOCK", "delete", 7, 100.0, 108.5)
    assert block.trail == ({"layer": "L1", "verdict": "BLOCK",
                            "reason": "BLOCK:logs/.*\\.log (line 2: System logs)"},)
    allow = decisions["docs/guide.md"]
    assert (allow.commit, allow.action, allow.seq) == (True, "ALLOW", 8)
    assert allow.trail == earlier + ({"layer": "L1", "verdict": "ALLOW",
                                      "reason": "ALLOW:docs/.*\\.md (line 3: User docs)"},)
    assert layer.stats["verdict_BLOCK"] == 1 and layer.stats["verdict_ALLOW"] == 1


def test_analyze_rule_passes_the_change_on_with_its_trail(layer):
    decisions, analyzed = decide(layer, change(".claude/contexts/today.json", 3))
    assert not decisions
    passed = analyzed[".claude/contexts/today.json"]
    assert (passed.seq, passed.epoch, passed.observed, passed.source) == (3, 100.0, 104.5,
                                                                         "inotify")
    assert passed.trail == ({"layer": "L1", "verdict": "ANALYZE",
                             "reason": "ANALYZE:\\.claude/contexts/.* (line 4: Context files)"},)


def test_default_action_applies_when_no_rule_matches(layer):
    decisions, analyzed = decide(layer, change("src/main.py"))
    assert layer.config.default_action == "ANALYZE"
    assert not decisions
    assert analyzed["src/main.py"].trail[-1] == {"layer": "L1", "verdict": "ANALYZE",
                                                 "reason": "[filter] default"}


@pytest.mark.parametrize("default, commit", [("BLOCK", False), ("ALLOW", True)])
def test_configured_default_action(workspace, default, commit):
    workspace.config(f'[filter]\ndefault = "{default}"\n')
    actor = PatternLayer(workspace.load())
    actor.prepare()
    actor.to_l2, actor.to_decisions = FakeSocket(), FakeSocket()
    try:
        decisions, analyzed = decide(actor, change("src/main.py"))
    finally:
        actor.context.term()
    assert not analyzed
    assert decisions["src/main.py"].commit is commit
    assert decisions["src/main.py"].trail[-1]["reason"] == "[filter] default"


def test_one_ignore_check_per_round(layer):
    batch = [change(f"src/f{i}.py", i) for i in range(50)] + [change("ignored/a", 99)]
    decisions, analyzed = decide(layer, *batch)
    assert layer.stats["ignore_checks"] == 1
    assert len(analyzed) == 50 and decisions["ignored/a"].commit is False
    assert layer.buffer == []
    layer.on_tick(time.monotonic())  # nothing buffered: no git call at all
    assert layer.stats["ignore_checks"] == 1


def test_rules_file_edits_are_picked_up(layer, workspace):
    decisions, _ = decide(layer, change("notes/a.txt", 1))
    assert "notes/a.txt" not in decisions  # default ANALYZE
    workspace.patterns("BLOCK:notes/.*:Scratch\n")

    def blocked():
        layer.to_decisions.frames.clear()
        decisions, _ = decide(layer, change("notes/a.txt", 2))
        return "notes/a.txt" in decisions
    wait_for(blocked, 5, interval=0.1, message="reloaded rules")


def test_real_processes(workspace, actors):
    workspace.patterns(RULES)
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
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
        analyzed = stage_reader(context, cfg, "l2")
        socks.append(analyzed)
        producer = sock(zmq.PUSH)
        producer.connect(cfg.endpoints.stage_in("l1"))
        actors("router", workspace.root)
        actors("pattern_layer", workspace.root)  # actor id "l1"
        paths = ["docs/guide.md", "logs/a.log", ".claude/contexts/c.json", "src/x.py",
                 ".x.swp", "ignored/y"]
        for seq, path in enumerate(paths, 1):
            producer.send(messages.encode(change(path, seq)))
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
        assert got_changes["src/x.py"].trail[-1]["reason"] == "[filter] default"
    finally:
        for s in socks:
            s.close(0)
        context.term()
