"""Self-adaptive learning (common.learning): the Learner, its file, L1's routing, the
debouncer's control commands and ``gitsieve learned`` — handlers, then real processes."""
from __future__ import annotations

import json
import time

import pytest

from conftest import FakeSocket, wait_for
from gitsieve.actors.debouncer import Debouncer
from gitsieve.actors.pattern_layer import PatternLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.learning import LearnedSet, LearnedStore, Learner, is_learned
from gitsieve.common.protocol.messages import Change, Decision
from gitsieve.common.tools.learned import learned_main

L1 = {"layer": "L1", "verdict": "ANALYZE", "reason": "default"}


def system_step(confidence: float = 1.0) -> dict:
    return {"layer": "L2", "verdict": "SYSTEM", "reason": "agent", "technique": "fanotify",
            "pid": 42, "cmdline": "claude-autonomous", "confidence": confidence}


def decision(path: str, commit: bool, l2: dict | None, seq: int = 1) -> Decision:
    trail = (L1,) + ((l2,) if l2 else ())
    return Decision(path=path, kind="write", seq=seq, epoch=1.0, observed=time.time(),
                    commit=commit, action="ANALYZE", trail=trail)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cfg(workspace):
    workspace.config("[filter]\nlearn_after = 3\nlearn_window_minutes = 1\n")
    return workspace.load()


def test_learns_after_k_system_changes_within_the_window(cfg):
    clock = Clock()
    learner = Learner(cfg, clock)
    assert [learner.observe(decision("s.json", False, system_step())) for _ in range(2)] == [
        None, None]
    assert learner.observe(decision("s.json", False, system_step())) == "learned"
    stored = LearnedStore(cfg.learned_file).load()
    assert stored["s.json"]["writer_cmdline"] == "claude-autonomous"
    assert Learner(cfg).learned.keys() == {"s.json"}  # persisted


def test_changes_spread_beyond_the_window_do_not_teach(cfg):
    clock = Clock()
    learner = Learner(cfg, clock)
    for _ in range(5):
        assert learner.observe(decision("slow.json", False, system_step())) is None
        clock.now += 40  # three changes never fall within 60 s
    assert learner.learned == {}


def test_user_commits_reset_and_weak_or_unknown_evidence_never_teaches(cfg):
    learner = Learner(cfg, Clock())
    learner.observe(decision("a.json", False, system_step()))
    learner.observe(decision("a.json", False, system_step()))
    learner.observe(decision("a.json", True, None))  # a commit in between: count reset
    learner.observe(decision("a.json", False, system_step()))
    assert "a.json" not in learner.learned
    for _ in range(5):
        learner.observe(decision("b.json", False, system_step(confidence=0.7)))  # sampled
        learner.observe(decision("c.json", False, {**system_step(), "verdict": "UNKNOWN"}))
        learner.observe(decision("d.json", False, None))  # an L1 BLOCK or L3 drop
    assert learner.learned == {}


def test_a_user_attributed_commit_unlearns(cfg):
    learner = Learner(cfg, Clock())
    for _ in range(3):
        learner.observe(decision("s.json", False, system_step()))
    assert learner.observe(decision("s.json", True, {"layer": "L3", "verdict": "USER"})) is None
    assert "s.json" in learner.learned  # a content-only USER is no proof of a user writer
    user = {**system_step(), "verdict": "USER"}
    assert learner.observe(decision("s.json", True, user)) == "unlearned"
    assert LearnedStore(cfg.learned_file).load() == {}


def test_learning_can_be_disabled(workspace):
    workspace.config("[filter]\nlearning = false\nlearn_after = 1\n")
    learner = Learner(workspace.load())
    assert learner.observe(decision("s.json", False, system_step())) is None


def test_corrupt_file_is_ignored_not_fatal(cfg):
    cfg.learned_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.learned_file.write_text("{not json")
    assert LearnedStore(cfg.learned_file).load() == {}


def test_learned_set_follows_the_file(cfg):
    learned = LearnedSet(cfg.learned_file, check_interval=0)
    learned.refresh()
    assert "x" not in learned
    LearnedStore(cfg.learned_file).save({"x": {}})
    learned.refresh()
    assert "x" in learned
    LearnedStore(cfg.learned_file).save({})
    learned.refresh()
    assert "x" not in learned


def test_l1_routes_a_learned_path_to_l2_flagged(workspace, cfg):
    LearnedStore(cfg.learned_file).save({"status.json": {}})
    layer = PatternLayer(cfg)
    layer.prepare()
    layer.to_l2, layer.to_decisions = FakeSocket(), FakeSocket()
    for seq, path in enumerate(("status.json", "other.json"), 1):
        layer.on_change(Change(path=path, kind="write", seq=seq, epoch=1.0,
                               observed=time.time()))
    layer.process_buffer()
    learned, other = layer.to_l2.messages()
    assert is_learned(learned) and learned.trail[-1]["verdict"] == "ANALYZE"
    assert "learned" in learned.trail[-1]["reason"]
    assert not is_learned(other)
    assert layer.to_decisions.frames == []


def test_debouncer_learns_lists_and_forgets(cfg):
    debouncer = Debouncer(cfg)
    for seq in range(1, 4):
        debouncer.on_decision(decision("s.json", False, system_step(), seq=seq))
    listing = debouncer.learned_listing()
    assert [entry["path"] for entry in listing["learned"]] == ["s.json"]
    assert debouncer.forget_learned("s.json") == {"forgotten": True}
    assert debouncer.forget_learned("s.json") == {"forgotten": False}
    with pytest.raises(ValueError):
        debouncer.forget_learned(5)


def test_learned_cli_edits_the_file_when_gitsieve_is_not_running(cfg, workspace, capsys):
    LearnedStore(cfg.learned_file).save({"a.json": {"writer_cmdline": "agent"}, "b.json": {}})
    assert learned_main(["--workspace", str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert "2 learned path(s)" in out and "a.json" in out
    assert learned_main(["--workspace", str(workspace.root), "--forget", "a.json"]) == 0
    assert LearnedStore(cfg.learned_file).load().keys() == {"b.json"}
    assert learned_main(["--workspace", str(workspace.root), "--forget", "zzz"]) == 1
    capsys.readouterr()
    assert learned_main(["--workspace", str(workspace.root), "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"forgotten": True,
                                                   "source": str(cfg.learned_file)}
    assert LearnedStore(cfg.learned_file).load() == {}


def test_learned_cli_talks_to_the_running_debouncer(cfg, workspace, actors, capsys):
    config_mod.prepare_runtime_dir(cfg)
    actors("debouncer", workspace.root)
    wait_for(lambda: _running(cfg), 20, message="debouncer running")
    import zmq

    from gitsieve.common.protocol import messages
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(cfg.endpoints.decisions)
    try:
        for seq in range(1, 4):
            push.send(messages.encode(decision("s.json", False, system_step(), seq=seq)))
        wait_for(lambda: LearnedStore(cfg.learned_file).load(), 10, message="learned file")
        assert learned_main(["--workspace", str(workspace.root), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["source"] == "running debouncer"
        assert [entry["path"] for entry in data["learned"]] == ["s.json"]
        assert learned_main(["--workspace", str(workspace.root), "--forget", "s.json"]) == 0
        assert LearnedStore(cfg.learned_file).load() == {}
    finally:
        push.close(linger=0)
        context.term()


def _running(cfg) -> bool:
    try:
        return control.request(cfg, "debouncer", "status", timeout=0.5).data["state"] == \
            "running"
    except control.Unreachable:
        return False
