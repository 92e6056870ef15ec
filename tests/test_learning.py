"""Self-adaptive learning (common.judge.learning): the Learner, its file, L1's routing (the
PatternJudge), the debouncer's control commands and ``gitsieve learned`` — judges and
handlers, then real processes."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from conftest import wait_for
from gitsieve.actors.debouncer import Debouncer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.judge.learning import LearnedSet, LearnedStore, Learner
from gitsieve.common.judge.pattern import PatternJudge, observe
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol.messages import Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    Technique,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep, is_learned
from gitsieve.common.tools import cli

L1 = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)


def system_step(confidence: float = 1.0) -> ProcessStep:
    return ProcessStep(Writer.SYSTEM, L2Reason.IDENTIFIED, Mode.FANOTIFY,
                       technique=Technique.FANOTIFY, pid=42, cmdline="claude-autonomous",
                       confidence=confidence, matched_by="autonomous_processes")


def decision(path: str, commit: bool, step=None, seq: int = 1) -> Decision:
    """A Decision whose trail is L1's ANALYZE step, then ``step`` (L2's or L3's) if any."""
    trail = (L1,) + ((step,) if step else ())
    return Decision(path=path, kind=ChangeKind.WRITE, seq=seq, epoch=1.0,
                    observed=time.time(), commit=commit, action=Action.ANALYZE, trail=trail)


def learned_cli(workspace, *args: str) -> int:
    """``gitsieve learned --workspace WS ARGS``."""
    return cli.main(["learned", "--workspace", str(workspace.root), *args])


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


def test_a_burst_of_learning_writes_the_file_once_a_second_not_once_a_path(cfg):
    """An agent's storm learned 200 paths one after another, and each rewrote the whole
    file: 1.6 s of JSON in the debouncer (fails before SAVE_EVERY)."""
    learner = Learner(cfg, Clock())
    versions = set()
    for number in range(200):
        for _ in range(3):
            learner.observe(decision(f"agent/{number}.json", False, system_step()))
        written = cfg.learned_file.stat()  # each write renames a new, larger file over
        versions.add((written.st_ino, written.st_size))
    assert len(learner.learned) == 200
    assert len(versions) <= 2  # the first path at once; the rest wait for their second
    assert 0 < learner.save_wait() <= 1.0
    assert len(LearnedStore(cfg.learned_file).load()) < 200
    learner.save_due(at_exit=True)
    assert learner.save_wait() is None
    assert LearnedStore(cfg.learned_file).load().keys() == learner.learned.keys()


def test_changes_spread_beyond_the_window_do_not_teach(cfg):
    clock = Clock()
    learner = Learner(cfg, clock)
    for _ in range(5):
        assert learner.observe(decision("slow.json", False, system_step())) is None
        clock.now += 40  # three changes never fall within 60 s
    assert learner.learned == {}


def test_counts_are_capped_and_stale_ones_dropped(cfg, monkeypatch):
    """A storm of new agent files, each changed once, kept one count per file for good."""
    from gitsieve.common.judge import learning
    monkeypatch.setattr(learning, "MAX_COUNTED", 100)
    clock = Clock()
    learner = Learner(cfg, clock)
    for number in range(1000):
        learner.observe(decision(f"out/{number}.json", False, system_step()))
    assert len(learner.counts) == 100 and "out/999.json" in learner.counts
    clock.now += 61  # the window (1 minute) has passed: every count is stale
    learner.observe(decision("status.json", False, system_step()))
    assert list(learner.counts) == ["status.json"]
    # a path still counting keeps its count among the storm, and is learned
    for number in range(2):
        learner.observe(decision("status.json", False, system_step()))
        for other in range(50):
            learner.observe(decision(f"more/{number}/{other}.json", False, system_step()))
    assert "status.json" in learner.learned


def test_user_commits_reset_and_weak_or_unknown_evidence_never_teaches(cfg):
    learner = Learner(cfg, Clock())
    learner.observe(decision("a.json", False, system_step()))
    learner.observe(decision("a.json", False, system_step()))
    learner.observe(decision("a.json", True, None))  # a commit in between: count reset
    learner.observe(decision("a.json", False, system_step()))
    assert "a.json" not in learner.learned
    for _ in range(5):
        learner.observe(decision("b.json", False, system_step(confidence=0.7)))  # sampled
        learner.observe(decision("c.json", False,
                                 dataclasses.replace(system_step(), verdict=Writer.UNKNOWN)))
        learner.observe(decision("d.json", False, None))  # an L1 BLOCK or L3 drop
    assert learner.learned == {}


def test_a_user_attributed_commit_unlearns(cfg):
    learner = Learner(cfg, Clock())
    for _ in range(3):
        learner.observe(decision("s.json", False, system_step()))
    content_only = ContentStep(Content.USER, L3Reason.CONTENT_CHANGED)
    assert learner.observe(decision("s.json", True, content_only)) is None
    assert "s.json" in learner.learned  # a content-only USER is no proof of a user writer
    user = dataclasses.replace(system_step(), verdict=Writer.USER)
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
    judge = PatternJudge(cfg)
    rules = RuleCache(cfg.patterns_file)
    changes = [observe(path, ChangeKind.WRITE, seq, 1.0, time.time(), rules)
               for seq, path in enumerate(("status.json", "other.json"), 1)]
    learned, other = judge.judge(changes)
    # both go on to L2 (ANALYZE, no Decision from L1); the learned one flagged
    assert (learned.action, learned.learned) == (Action.ANALYZE, True)
    assert is_learned((learned,))
    assert (other.action, other.learned) == (Action.ANALYZE, False)
    assert not is_learned((other,))


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
    assert learned_cli(workspace) == 0
    out = capsys.readouterr().out
    assert "2 learned BLOCK paths" in out and "a.json" in out
    assert learned_cli(workspace, "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["source"] == str(cfg.learned_file)
    assert [entry["path"] for entry in listing["learned"]] == ["a.json", "b.json"]
    assert learned_cli(workspace, "--forget", "a.json") == 0
    assert LearnedStore(cfg.learned_file).load().keys() == {"b.json"}
    # nothing learned for it: the one error exit code of actorctl and gitsieve alike
    assert learned_cli(workspace, "--forget", "zzz") == 3
    assert "nothing learned for zzz" in capsys.readouterr().err
    assert learned_cli(workspace, "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"forgotten": "every path"}
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
        capsys.readouterr()
        assert learned_cli(workspace, "--json") == 0
        data = json.loads(capsys.readouterr().out)
        assert data["source"] == "running debouncer"
        assert [entry["path"] for entry in data["learned"]] == ["s.json"]
        assert learned_cli(workspace, "--forget", "s.json") == 0
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


@pytest.mark.parametrize("path", [".git/hooks/post-commit", ".git", "a//b", "./a", "a/./b",
                                  "../etc/passwd", "/etc/passwd", "x/" + "n" * 256])
def test_never_learns_a_path_that_fails_path_validation(cfg, path):
    """Issue 14: a forged L2 step taught learned.json `.git/hooks/post-commit`."""
    learner = Learner(cfg, Clock())
    for _ in range(5):
        assert learner.observe(decision(path, False, system_step())) is None
    assert learner.learned == {} and LearnedStore(cfg.learned_file).load() == {}


def test_learned_cli_lists_and_releases_feedback_loop_holds_offline(cfg, workspace, capsys):
    from gitsieve.common.judge.loop import LOOPS_FILE
    loops = LearnedStore(cfg.learned_file.with_name(LOOPS_FILE))
    loops.save({"status.md": {"held_at": 1.0, "reactions": 3}})
    assert learned_cli(workspace) == 0
    out = capsys.readouterr().out
    assert "1 paths held as feedback loops" in out and "status.md" in out
    assert learned_cli(workspace, "--forget", "status.md") == 0
    assert loops.load() == {}
