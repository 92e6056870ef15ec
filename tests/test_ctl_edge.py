"""Edges of asking gitsieve and of losing its workspace: more paths than one control reply
may map, an answer actorctl cannot decode, `learned` after a stop that left its control
sockets' files behind, and the L1/L3 workers once the workspace is deleted."""
from __future__ import annotations

import logging
import shutil
import threading
import time

import zmq
from test_actorctl import actorctl, actorctl_json

from conftest import Gitsieve, wait_for
from gitsieve.actors.content_layer import ContentLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.git.gateway import Git
from gitsieve.common.git.ignore import IgnoreChecker
from gitsieve.common.judge.learning import LearnedStore
from gitsieve.common.judge.loop import LOOPS_FILE
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change
from gitsieve.common.protocol.states import Action, ChangeKind, Content, L1Reason
from gitsieve.common.protocol.trail import PatternStep
from gitsieve.common.tools import ctl

MANY = 5000  # more than max_map_len (4096): no single explain reply can map them all


def assert_one_line(result, fragment: str, code: int) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


# ----- more dirty paths than one control reply may hold --------------------------------
def test_flush_reports_more_dirty_paths_than_one_reply_may_map(workspace, tmp_path):
    workspace.patterns("BLOCK:junk/.*:junk\n")
    workspace.fast_config()
    workspace.git("push", "-q", "origin", "main")
    gitsieve = Gitsieve(workspace, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
        for number in range(MANY):
            workspace.write(f"junk/f{number}", f"{number}\n")
        code, report = actorctl_json(workspace, "flush", "--timeout", "30")
        assert code == ctl.EXIT_OK, report
        assert len(report["not_synced_by_decision"]) == MANY
    finally:
        assert gitsieve.stop()[0] == 0, gitsieve.log()


def test_an_answer_over_the_protocol_limits_is_an_error_reply(workspace, actors):
    """The actor answers what its asker could not decode with an error, not the answer."""
    actors("debouncer", workspace.root)
    cfg = workspace.load()
    wait_for(lambda: control.listening(cfg, "debouncer"), 20, 0.1, "the debouncer")
    paths = [f"junk/f{number}" for number in range(MANY)]
    reply = control.request(cfg, "debouncer", "explain", {"paths": paths})
    assert not reply.ok and "exceeds the protocol's limits" in reply.error, reply
    # the same paths in the chunks actorctl asks in are answered
    assert set(ctl.explain_all(cfg, "debouncer", paths)) == set(paths)


def test_an_answer_actorctl_cannot_decode_is_one_line_not_a_traceback(workspace):
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)  # and the short alias a long path's sockets need
    context = zmq.Context.instance()
    fake = context.socket(zmq.REP)
    fake.linger = 0
    fake.bind(cfg.endpoints.control("debouncer"))

    def answer_garbage():
        if fake.poll(10_000):
            messages.decode(fake.recv())
            fake.send(b"\x93not a message")
    answering = threading.Thread(target=answer_garbage)
    answering.start()
    try:
        result = actorctl(workspace, "explain", "x.txt")
    finally:
        answering.join()
        fake.close(linger=0)
    assert_one_line(result, "debouncer actor's answer to explain could not be read",
                    ctl.EXIT_DAEMON)


# ----- `learned` after a stop ------------------------------------------------------
def test_learned_lists_and_forgets_on_the_file_after_a_clean_stop(workspace, tmp_path):
    workspace.fast_config()
    gitsieve = Gitsieve(workspace, tmp_path / "run.log")
    try:
        gitsieve.wait_running()
    finally:
        assert gitsieve.stop()[0] == 0, gitsieve.log()
    cfg = workspace.load()
    assert "debouncer" in control.known_actors(cfg)  # its socket file is left behind
    entry = {"learned_at": time.time(), "changes": 5, "writer_cmdline": "claude-autonomous"}
    LearnedStore(cfg.learned_file).save({"state/a.json": entry, "state/b.json": entry})
    loops = LearnedStore(cfg.learned_file.with_name(LOOPS_FILE))
    loops.save({"reaction.md": {"held_at": time.time(), "reactions": 3}})

    listed = actorctl(workspace, "learned")
    assert listed.returncode == 0, listed.stderr
    assert "2 learned BLOCK paths" in listed.stdout and "reaction.md" in listed.stdout
    assert actorctl(workspace, "learned", "--forget", "state/a.json").returncode == 0
    assert set(LearnedStore(cfg.learned_file).load()) == {"state/b.json"}
    assert actorctl(workspace, "learned", "--forget", "reaction.md").returncode == 0
    assert loops.load() == {}
    assert_one_line(actorctl(workspace, "learned", "--forget", "notes.md"),
                    "nothing learned for notes.md", ctl.EXIT_DAEMON)
    assert actorctl(workspace, "learned", "--all").returncode == 0
    assert LearnedStore(cfg.learned_file).load() == {}


# ----- the workspace deleted under the L1 and L3 workers ------------------------------
def test_check_ignore_on_a_deleted_workspace_ignores_nothing_with_one_line(workspace, caplog):
    running = IgnoreChecker(Git(workspace.root), workspace.path(".git"))
    first_after = IgnoreChecker(Git(workspace.root), workspace.path(".git"))
    try:
        assert running.ignored(["x.ignored", "a.txt"]) == {"x.ignored"}  # child started
        shutil.rmtree(workspace.root)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert running.ignored(["x.ignored"]) == set()
                assert first_after.ignored(["x.ignored"]) == set()
    finally:
        running.close()
        first_after.close()
    gone = [record for record in caplog.records if "is gone" in record.getMessage()]
    assert len(gone) == 2 and all(record.levelno == logging.WARNING for record in gone)
    assert not any(record.exc_info or record.levelno >= logging.ERROR
                   for record in caplog.records)


def test_the_content_layer_on_a_deleted_workspace_logs_no_traceback(workspace, caplog):
    """git could not start in the vanished work tree: sh's ForkException, with the child's
    whole traceback, escaped the content layer's handlers (fails before)."""
    actor = ContentLayer(workspace.load(), instance=1)
    try:
        shutil.rmtree(workspace.root)
        step = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)
        with caplog.at_level(logging.WARNING):
            judged = actor.judge.judge(Change(path="notes.md", kind=ChangeKind.DELETE, seq=1,
                                              epoch=1.0, observed=time.time(), trail=(step,)))
    finally:
        actor.shutdown()
        actor.close()
    assert judged.verdict == Content.USER  # git cannot say: never dropped as churn
    assert not any(record.exc_info or "Traceback" in record.getMessage()
                   for record in caplog.records), caplog.text
