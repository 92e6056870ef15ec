"""Content layer (L3): the ContentJudge against a real git workspace (no socket), the
thin actor's CommitReport handler, then real router + l3."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import zmq

from conftest import Unbundled, wait_for
from gitsieve.actors.content_layer import ContentLayer
from gitsieve.common import config as config_mod
from gitsieve.common.actor import control
from gitsieve.common.config.bounded_regex import BoundedPattern
from gitsieve.common.git import catfile as catfile_module
from gitsieve.common.git.catfile import CatFileBatch
from gitsieve.common.git.gateway import Git
from gitsieve.common.judge.content_judge import ContentJudge
from gitsieve.common.protocol import messages
from gitsieve.common.protocol.messages import Change, CommitReport, Decision
from gitsieve.common.protocol.states import (
    Action,
    ChangeKind,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    Writer,
)
from gitsieve.common.protocol.trail import ContentStep, PatternStep, ProcessStep, reason_text

L1_STEP = PatternStep(Action.ANALYZE, L1Reason.DEFAULT)
L2_STEP = ProcessStep(Writer.UNKNOWN, L2Reason.NO_AUTONOMOUS_WRITER_SEEN, Mode.PSUTIL)


def verdicts(status: dict) -> dict:
    return {key: count for key, count in status.items() if key.startswith("verdict_")}


def change(path: str, kind: ChangeKind = ChangeKind.WRITE, seq: int = 1) -> Change:
    return Change(path=path, kind=ChangeKind(kind), seq=seq, epoch=1000.0,
                  observed=time.time(), trail=(L1_STEP, L2_STEP))


def status_json(timestamp: int, task: str = "write docs") -> str:
    return json.dumps({"task": task, "last_update": timestamp,
                       "agents": [{"name": "a", "timestamp": timestamp}]}, indent=2)


def commit_all(workspace, message: str = "user work") -> None:
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", message)


class Judge(ContentJudge):
    """The content judge on the workspace, its errors recorded."""

    def __init__(self, config):
        self.errors: list[str] = []
        super().__init__(config, on_error=self.errors.append)


@pytest.fixture
def layer(workspace):
    """The L3 judge on the workspace (no socket, no actor)."""
    made = Judge(workspace.load())
    yield made
    made.close()


def decide(layer: ContentJudge, path: str, kind: ChangeKind = ChangeKind.WRITE) -> ContentStep:
    step = layer.judge(change(path, kind))
    assert isinstance(step, ContentStep)
    # the masked digest of a USER version travels on its step, and only there
    assert (step.masked is not None) <= (step.verdict == Content.USER)
    return step


def verdict_of(step: ContentStep) -> tuple[Content, L3Reason]:
    return step.verdict, step.reason


# ----- the judge -------------------------------------------------------------------------
def test_timestamp_only_json_rewrite_is_dropped(workspace, layer):
    workspace.write(".claude/contexts/s.json", status_json(1))
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2))
    step = decide(layer, ".claude/contexts/s.json")
    assert verdict_of(step) == (Content.SYSTEM, L3Reason.JSON_VOLATILE_KEYS)
    assert step.detail == "last_update, timestamp"


def test_real_json_edit_is_committed(workspace, layer):
    workspace.write(".claude/contexts/s.json", status_json(1))
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2, task="write tests"))
    step = decide(layer, ".claude/contexts/s.json")
    assert verdict_of(step) == (Content.USER, L3Reason.JSON_CHANGED)


def test_new_deleted_and_untouched_files(workspace, layer):
    workspace.write("fresh.txt", "new\n")
    assert verdict_of(decide(layer, "fresh.txt")) == (Content.USER, L3Reason.NEW_FILE)
    os.unlink(workspace.path("README.md"))
    deleted = decide(layer, "README.md", kind=ChangeKind.DELETE)
    assert verdict_of(deleted) == (Content.USER, L3Reason.DELETED)
    assert deleted.masked is None  # nothing of a deleted file to remember
    assert verdict_of(decide(layer, "gone.txt", kind=ChangeKind.DELETE)) == (
        Content.UNCHANGED, L3Reason.NEVER_COMMITTED)
    workspace.path(".gitignore").touch()
    untouched = decide(layer, ".gitignore")
    assert verdict_of(untouched) == (Content.UNCHANGED, L3Reason.IDENTICAL)


def test_append_only_log_is_dropped_and_rewritten_log_committed(workspace, layer):
    workspace.write("notes/agent.log", "one\ntwo\n")
    commit_all(workspace)
    workspace.write("notes/agent.log", "one\ntwo\nthree\n")
    assert verdict_of(decide(layer, "notes/agent.log")) == (Content.SYSTEM,
                                                            L3Reason.LOG_APPENDED)
    workspace.write("notes/agent.log", "one\nTWO\n")
    assert verdict_of(decide(layer, "notes/agent.log")) == (Content.USER,
                                                            L3Reason.CONTENT_CHANGED)


def test_a_directory_or_fifo_at_the_path_is_user_and_never_blocks(workspace, layer):
    workspace.write("thing", "file\n")
    commit_all(workspace)
    os.unlink(workspace.path("thing"))
    workspace.path("thing").mkdir()
    step = decide(layer, "thing")
    assert (*verdict_of(step), step.detail) == (Content.USER, L3Reason.WORK_FILE_PROBLEM,
                                                "is a directory now")
    assert reason_text(step) == "is a directory now"
    os.mkfifo(workspace.path("pipe"))
    step = decide(layer, "pipe")
    assert (*verdict_of(step), step.detail) == (Content.USER, L3Reason.WORK_FILE_PROBLEM,
                                                "not a regular file")


def test_names_with_spaces_newlines_and_not_utf8(workspace, layer):
    """Names never travel in a cat-file request (trees are read by object id): a newline
    or a name that is not UTF-8 is looked up through the same child as any other."""
    names = ["dir with space/s s.json", "odd\nname.json", os.fsdecode(b"caf\xe9.json")]
    for name in names:
        workspace.path(name).parent.mkdir(parents=True, exist_ok=True)
        workspace.path(name).write_text(status_json(1))
    commit_all(workspace)
    for name in names:
        workspace.path(name).write_text(status_json(5))
        assert verdict_of(decide(layer, name))[0] == Content.SYSTEM
    assert layer.head.reader.starts == 1


def test_symlink_is_compared_by_its_target(workspace, layer):
    os.symlink("README.md", workspace.path("link"))
    commit_all(workspace)
    assert verdict_of(decide(layer, "link"))[0] == Content.UNCHANGED
    os.unlink(workspace.path("link"))
    os.symlink(".gitignore", workspace.path("link"))
    assert verdict_of(decide(layer, "link"))[0] == Content.USER


def test_head_cache_follows_commits_made_outside_gitsieve(workspace, layer):
    workspace.write("s.json", status_json(1))
    commit_all(workspace)
    workspace.write("s.json", status_json(2))
    assert verdict_of(decide(layer, "s.json"))[0] == Content.SYSTEM
    assert verdict_of(decide(layer, "s.json"))[0] == Content.SYSTEM
    assert layer.head.hits == 1
    # the user commits a real edit with their own git: HEAD moves, the cache must not lie
    workspace.write("s.json", status_json(2, task="new task"))
    commit_all(workspace)
    assert verdict_of(decide(layer, "s.json"))[0] == Content.UNCHANGED


def test_commit_report_drops_the_head_cache(workspace):
    """The thin actor's handler, called directly: building the actor opens no socket."""
    actor = ContentLayer(workspace.load(), instance=1)
    try:
        assert actor.context is None
        workspace.write("s.json", status_json(1))
        decide(actor.judge, "s.json")
        assert actor.judge.head.cache
        actor.on_commit(CommitReport(batch_ids=(1,), paths=("s.json",), commit="abc",
                                     pushed=True, error="", finished=time.time()))
        assert not actor.judge.head.cache
        assert actor.stats["commit_reports"] == 1
    finally:
        actor.shutdown()
        actor.close()


def test_dead_cat_file_is_restarted(workspace, layer):
    workspace.write("a.txt", "a\n")
    commit_all(workspace)
    assert verdict_of(decide(layer, "a.txt"))[0] == Content.UNCHANGED
    child = layer.head.reader.child
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: not child.alive(), 5, message="cat-file to die")
    layer.head.drop()
    assert verdict_of(decide(layer, "a.txt"))[0] == Content.UNCHANGED
    assert layer.head.reader.starts == 2
    assert layer.errors == []


def test_large_files_are_compared_by_object_id(workspace):
    workspace.config("[filter]\nmax_analyze_bytes = 1024\n")  # the smallest cap allowed
    layer = Judge(workspace.load())
    try:
        assert layer.size_cap == layer.head.reader.size_cap == 1024
        workspace.write("big.json", json.dumps({"timestamp": 1, "pad": "x" * 2000}))
        commit_all(workspace)
        step = decide(layer, "big.json")
        assert verdict_of(step) == (Content.UNCHANGED, L3Reason.LARGE_FILE_IDENTICAL)
        assert reason_text(step) == "identical to HEAD (large file, same object id)"
        workspace.write("big.json", json.dumps({"timestamp": 2, "pad": "x" * 2000}))
        step = decide(layer, "big.json")
        assert (*verdict_of(step), step.detail) == (Content.USER, L3Reason.LARGE_FILE_CHANGED,
                                                    "object id differs")
        assert reason_text(step) == "content changed (large file: object id differs)"
        workspace.write("big.json", "small now")
        assert verdict_of(decide(layer, "big.json"))[0] == Content.USER
        os.unlink(workspace.path("big.json"))
        assert verdict_of(decide(layer, "big.json", kind=ChangeKind.DELETE)) == (
            Content.USER, L3Reason.DELETED)
        assert layer.errors == []
    finally:
        layer.close()


def test_cat_file_reader_reads_head_and_reports_missing(workspace):
    from gitsieve.common.git.catfile import MODE_EXECUTABLE, MODE_FILE, MODE_TREE, TreeWalker
    reader = CatFileBatch(Git(workspace.root), size_cap=1024)
    walker = TreeWalker(reader)
    try:
        head = reader.objects([b"HEAD"])[0]
        assert head.kind == "commit"
        tree = head.data.split(b"\n")[0].split()[1].decode()
        workspace.path("sub").mkdir()
        workspace.write("sub/x", "x")
        workspace.write("run.sh", "echo\n")
        os.chmod(workspace.path("run.sh"), 0o755)
        workspace.write("big", "b" * 5000)
        commit_all(workspace)
        found = walker.entries(workspace.git("rev-parse", "HEAD^{tree}").strip(),
                               ["README.md", "sub", "sub/x", "run.sh", "no/such/file",
                                "README.md/below", "big"])
        assert found["README.md"].mode == MODE_FILE and found["sub"].mode == MODE_TREE
        assert found["run.sh"].mode == MODE_EXECUTABLE
        assert found["no/such/file"] is None and found["README.md/below"] is None
        blobs = reader.objects([found["sub/x"].oid.encode(), found["big"].oid.encode(),
                                b"0" * 40])
        assert blobs[0].data == b"x" and blobs[0].size == 1
        assert blobs[1].data is None and blobs[1].size == 5000  # over the cap: not kept
        assert blobs[2] is None
        assert walker.entries(tree, ["README.md"])["README.md"].is_blob  # the older tree
        assert reader.starts == 1
    finally:
        reader.close()
    assert reader.child is None


def test_many_objects_are_read_in_one_pipelined_exchange(workspace, layer):
    """Requests are written while answers are read: thousands of blobs, larger together
    than any pipe buffer, cost one exchange and no deadlock."""
    for number in range(3000):
        workspace.write(f"many/f{number:04d}.txt", f"{number}\n" * 40)
    commit_all(workspace)
    paths = [f"many/f{number:04d}.txt" for number in range(3000)]
    before = layer.head.reader.requests
    blobs = layer.head.get_many(paths)
    assert all(blobs[path].data == f"{int(path[6:10])}\n".encode() * 40 for path in paths)
    # HEAD, two trees, 3000 blobs: not a round trip per path
    assert layer.head.reader.requests - before == 3003
    assert layer.head.reader.starts == 1


def test_a_pure_mode_change_is_a_change_and_core_filemode_is_honoured(workspace, layer):
    """Issue 11: `chmod +x` on a tracked script was judged identical to HEAD."""
    workspace.write("run.sh", "echo hi\n")
    workspace.write("state.json", status_json(1))
    commit_all(workspace)
    os.chmod(workspace.path("run.sh"), 0o755)
    step = decide(layer, "run.sh")
    assert verdict_of(step) == (Content.USER, L3Reason.MODE_CHANGED)
    assert reason_text(step) == "mode changed: executable bit set (100644 -> 100755)"
    # a volatile-only rewrite that also sets the executable bit is still a change
    workspace.write("state.json", status_json(2))
    os.chmod(workspace.path("state.json"), 0o755)
    assert verdict_of(decide(layer, "state.json")) == (Content.USER, L3Reason.MODE_CHANGED)
    # ... and the re-check at commit time says so too (in bulk)
    assert {path: verdict.reason for path, verdict in
            layer.still_changes(["run.sh", "state.json"]).items()} == {
        "run.sh": L3Reason.MODE_CHANGED, "state.json": L3Reason.MODE_CHANGED}
    commit_all(workspace)
    assert verdict_of(decide(layer, "run.sh"))[0] == Content.UNCHANGED
    workspace.git("config", "core.fileMode", "false")
    judge = Judge(workspace.load())
    try:
        os.chmod(workspace.path("run.sh"), 0o644)
        assert verdict_of(decide(judge, "run.sh"))[0] == Content.UNCHANGED
    finally:
        judge.close()


# ----- real processes --------------------------------------------------------------------
def recv(sock: zmq.Socket, timeout: float = 10.0):
    assert sock.poll(int(timeout * 1000)), "no message within the timeout"
    return messages.decode(sock.recv())


def test_real_l3_decides_by_content(workspace, actors):
    workspace.write(".claude/contexts/s.json", status_json(1))
    workspace.write("docs/plan.md", "plan\n")
    commit_all(workspace)
    workspace.write(".claude/contexts/s.json", status_json(2))
    workspace.write("docs/plan.md", "better plan\n")
    cfg = workspace.load()
    config_mod.prepare_runtime_dir(cfg)
    context = zmq.Context()
    decisions = context.socket(zmq.PULL)
    into_l3 = context.socket(zmq.PUSH)
    commits = context.socket(zmq.PUB)
    for sock in (decisions, into_l3, commits):
        sock.linger = 0
    try:
        decisions.bind(cfg.endpoints.decisions)
        decisions = Unbundled(decisions)
        commits.bind(cfg.endpoints.commits)
        into_l3.connect(cfg.endpoints.stage_in("l3"))
        actors("router", workspace.root)
        actors("content_layer", workspace.root, instance=1)

        sent = change(".claude/contexts/s.json", seq=1)
        into_l3.send_multipart(messages.stage_frames(sent, priority=False))
        system = recv(decisions)
        assert isinstance(system, Decision)
        assert (system.path, system.commit) == (".claude/contexts/s.json", False)
        # fields copied from the change, L1's action kept, the trail extended by L3's step
        assert (system.kind, system.seq, system.epoch, system.observed) == (
            sent.kind, sent.seq, sent.epoch, sent.observed)
        assert system.action == Action.ANALYZE
        assert system.trail == (L1_STEP, L2_STEP, ContentStep(
            Content.SYSTEM, L3Reason.JSON_VOLATILE_KEYS, "last_update, timestamp"))

        into_l3.send_multipart(messages.stage_frames(change("docs/plan.md", seq=2),
                                                     priority=False))
        user = recv(decisions)
        assert (user.path, user.commit, user.action) == ("docs/plan.md", True, Action.ANALYZE)
        assert user.trail[:2] == (L1_STEP, L2_STEP)
        step = user.trail[-1]
        assert (type(step), step.verdict, step.reason) == (ContentStep, Content.USER,
                                                           L3Reason.CONTENT_CHANGED)
        assert len(step.masked) == 40  # the version's digest blind to volatile tokens

        report = CommitReport(batch_ids=(1,), paths=("docs/plan.md",), commit="0" * 40,
                              pushed=True, error="", finished=time.time())

        def report_seen() -> bool:  # PUB/SUB joins late: publish until it is heard
            commits.send(messages.encode(report))
            return control.request(cfg, "l3-01", "status").data["commit_reports"] > 0
        wait_for(report_seen, 20, 0.1, "l3 to hear a CommitReport")
        status = control.request(cfg, "l3-01", "status").data
        assert verdicts(status) == {"verdict_SYSTEM": 1, "verdict_USER": 1}
        assert status["head_cache_entries"] == 0
        assert status["cat_file_starts"] == 1
    finally:
        for sock in (decisions, into_l3, commits):
            sock.close(linger=0)
        context.term()


def test_a_volatile_rewrite_of_the_users_version_is_dropped_the_same_bytes_again_are_not(
        workspace, layer):
    """A user change reported again (its first Decision died with a restarted debouncer, the
    watcher's reconcile re-sends it, L2 no longer sees its writes) was judged "only volatile
    tokens changed since the version already judged the user's" and never committed."""
    workspace.write("notes/n.md", "note at 2024-05-01T10:00:00Z\n")
    assert verdict_of(decide(layer, "notes/n.md")) == (Content.USER, L3Reason.NEW_FILE)
    assert verdict_of(decide(layer, "notes/n.md")) == (Content.USER, L3Reason.NEW_FILE)
    workspace.write("notes/n.md", "note at 2024-05-02T11:00:00Z\n")  # an agent's restamp
    assert verdict_of(decide(layer, "notes/n.md")) == (Content.SYSTEM,
                                                        L3Reason.SAME_AS_USER_VERSION)


def test_user_versions_learned_from_the_feed_carry_their_exact_bytes(workspace, layer):
    workspace.write("notes/f.md", "draft 2024-05-01T10:00:00Z\n")
    other = Judge(workspace.load())  # another worker judged it; this one hears the feed
    try:
        step = other.judge(change("notes/f.md"))
    finally:
        other.close()
    assert step.verdict == Content.USER and step.exact is not None
    layer.note_user_version("notes/f.md", step.masked, step.exact)
    assert decide(layer, "notes/f.md").verdict == Content.USER
    workspace.write("notes/f.md", "draft 2024-06-01T10:00:00Z\n")
    assert decide(layer, "notes/f.md").reason == L3Reason.SAME_AS_USER_VERSION


def test_a_commit_report_reads_heads_new_trees_along_its_paths_ahead(workspace):
    """The paths just committed are the likeliest to change next: HEAD's new trees along
    them are read when the report comes, not when the next change waits for them."""
    actor = ContentLayer(workspace.load(), instance=1)
    try:
        workspace.write("deep/dir/f.txt", "one\n")
        commit_all(workspace)
        decide(actor.judge, "deep/dir/f.txt")
        workspace.write("deep/dir/f.txt", "two\n")
        commit_all(workspace)
        new = {workspace.git("rev-parse", f"HEAD:{tree}").strip()
               for tree in ("", "deep", "deep/dir")}
        assert not new & set(actor.judge.head.walker.trees)
        actor.on_commit(CommitReport(batch_ids=(1,), paths=("deep/dir/f.txt",),
                                     commit=workspace.head(), pushed=True, error="",
                                     finished=time.time()))
        assert new <= set(actor.judge.head.walker.trees)
    finally:
        actor.shutdown()
        actor.close()


def test_a_judgement_reads_head_once_and_masks_each_version_once(workspace, layer,
                                                                   monkeypatch):
    """Before, a judgement fingerprinted HEAD twice (one look for the blob, one for the
    tree entry) and ran the volatile patterns twice over the same text (is it only tokens?
    its digest): most of what L3 spent on a new small file beyond reading it.  A changed
    small file masks its version and HEAD's (the regions that differ are the whole text),
    each once."""
    workspace.write("notes.md", "old text\n")
    commit_all(workspace)
    looks, masks = [], []
    token = catfile_module.head_token
    monkeypatch.setattr(catfile_module, "head_token",
                        lambda git_dir: looks.append(git_dir) or token(git_dir))
    sub = BoundedPattern.sub
    monkeypatch.setattr(BoundedPattern, "sub",
                        lambda self, *args: masks.append(args) or sub(self, *args))
    for n, path in enumerate(["new.md", "notes.md", "other.md"]):
        workspace.write(path, f"version {n} at 2026-11-30T10:00:0{n}Z\n")
        looks.clear(), masks.clear()
        step = decide(layer, path)
        assert step.verdict == Content.USER and step.masked is not None
        assert len(looks) == 1, path
        assert len(masks) == len(set(masks)), f"{path}: a text masked twice: {masks}"
        assert len(masks) == (2 if path == "notes.md" else 1), path  # notes.md: HEAD's too
    workspace.write("stamp.txt", "2026-11-30T10:00:00Z\n")
    assert verdict_of(decide(layer, "stamp.txt")) == (Content.SYSTEM, L3Reason.TIMESTAMP_ONLY)
