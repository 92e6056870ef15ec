"""The guard in the committer, against real git with a bare remote: the blobs of a sync
commit, the size guard, the push gate (gitsieve's commits and the person's own), releases,
allowlists.  Tokens are generated at run time."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from guard_corpus import ALNUM, Randomness

from conftest import create_workspace, faulty_git, git
from gitsieve.common import config as config_mod
from gitsieve.common.git.committer import Committer
from gitsieve.common.judge.guard.gate import CommitGuard, versions_to_release
from gitsieve.common.judge.guard.store import KEY_FILE, ReleaseStore
from gitsieve.common.protocol.states import Hold

MIB = 1 << 20
_r = Randomness(1212)
GITHUB = "gh" + "p_" + _r.mixed(ALNUM, 36)
STRIPE = "sk" + "_live_" + _r.mixed(ALNUM, 30)
NPM = "np" + "m_" + _r.mixed(ALNUM, 36)


@pytest.fixture
def guarded(workspace):
    """A Committer with the guard plugged in as the executor plugs it."""
    made = []

    def make(extra: str = ""):
        workspace.config("[git]\nretry_backoff = 0.1\n" + extra)
        workspace.git("add", "-A")
        workspace.git("commit", "-q", "-m", "config")
        workspace.git("push", "-q")
        config = workspace.load()
        config_mod.prepare_runtime_dir(config)
        committer = Committer(config)
        guard = CommitGuard(config, committer.git)
        committer.path_gate = guard.before_staging
        committer.blob_gate = guard.check_blobs
        committer.push_gate = guard.push_gate
        committer.sync_commit_made = guard.sync_commit_made
        made.append(guard)
        return committer, guard

    yield make
    for guard in made:
        guard.close()


def release(workspace, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", "release",
                           "--workspace", str(workspace.root), *paths],
                          capture_output=True, text=True, timeout=60)


def test_a_secret_keeps_its_path_out_and_the_rest_goes_in(workspace, guarded):
    committer, _ = guarded()
    workspace.write("docs/notes.md", f"# Notes\n\nFor the API use token {GITHUB} until Friday.\n")
    workspace.write("docs/plan.md", "plan\n")

    result = committer.commit(["docs/notes.md", "docs/plan.md"])

    assert result.pushed and result.paths == ("docs/plan.md",)
    why = result.held_paths["docs/notes.md"]
    assert why.hold is Hold.SECRET
    assert "docs/notes.md:3:23: GitHub token (github-token) [" in why.text
    assert "gitsieve release docs/notes.md" in why.text
    assert GITHUB[4:16] not in why.text
    assert "docs/notes.md" not in workspace.files_at("origin/main")
    # the user's index is untouched: the path is still an untracked change
    assert "?? docs/notes.md" in workspace.git("status", "--porcelain")


def test_a_token_in_a_file_name_keeps_the_file_out(workspace, guarded):
    """The path is pushed too: a file named for a token is held, its content aside."""
    committer, _ = guarded()
    workspace.write(f"notes/{GITHUB}.txt", "see the name\n")
    workspace.write("notes/plan.md", "plan\n")

    result = committer.commit([f"notes/{GITHUB}.txt", "notes/plan.md"])

    assert result.pushed and result.paths == ("notes/plan.md",)
    why = result.held_paths[f"notes/{GITHUB}.txt"]
    assert why.hold is Hold.SECRET and "GitHub token in the path (github-token)" in why.text
    assert not [name for name in workspace.files_at("origin/main") if GITHUB in name]


def test_a_persons_commit_adding_a_token_named_file_is_not_pushed(workspace, guarded):
    """git lists each blob once, under one of its paths: a token-named file holding what
    another file holds (here: nothing) is still found by its own path."""
    committer, _ = guarded()
    before = workspace.remote_head()
    for path in ("pkg/__init__.py", f"vendor/{GITHUB}"):
        workspace.write(path, "")
    workspace.git("add", "-A")
    workspace.git("commit", "-q", "-m", "add package")
    workspace.write("notes.txt", "a clean change\n")

    result = committer.commit(["notes.txt"])

    assert result.commit and not result.pushed and workspace.remote_head() == before
    assert committer.push_hold.hold is Hold.SECRET
    assert f"vendor/{GITHUB}: GitHub token in the path (github-token)" in committer.push_hold.text


def test_a_held_tracked_file_keeps_heads_version(workspace, guarded):
    committer, _ = guarded()
    workspace.write("app.cfg", "token = none\n")
    committer.commit(["app.cfg"])
    workspace.write("app.cfg", f"token = {STRIPE}\n")
    result = committer.commit(["app.cfg"])
    assert result.commit is None and set(result.held_paths) == {"app.cfg"}
    assert workspace.show("origin/main:app.cfg") == "token = none\n"


def test_an_edit_that_removes_the_secret_is_committed(workspace, guarded):
    committer, _ = guarded()
    workspace.write("ci.yml", f"deploy:\n  token: {NPM}\n")
    assert set(committer.commit(["ci.yml"]).held_paths) == {"ci.yml"}
    workspace.write("ci.yml", "deploy:\n  token: ${NPM_TOKEN}\n")
    result = committer.commit(["ci.yml"])
    assert result.pushed and result.paths == ("ci.yml",) and not result.held_paths


def test_blobs_are_scanned_once_by_blob_id(workspace, guarded):
    committer, guard = guarded()
    workspace.write("a/one.txt", "same content\n" * 100)
    workspace.write("b/two.txt", "same content\n" * 100)
    committer.commit(["a/one.txt", "b/two.txt"])
    assert guard.judge.stats["blobs_scanned"] == 1
    # The push gate saw the same blob again: a cache hit, no second read.
    assert guard.judge.stats["cache_hits"] >= 1
    workspace.write("c/three.txt", "same content\n" * 100)
    committer.commit(["c/three.txt"])
    assert guard.judge.stats["blobs_scanned"] == 1


def test_release_commits_that_content_once(workspace, guarded):
    committer, _ = guarded()
    workspace.write("docs/notes.md", f"token {GITHUB}\n")
    assert committer.commit(["docs/notes.md"]).held_paths

    done = release(workspace, "docs/notes.md")
    assert done.returncode == 0, done.stderr
    assert "released docs/notes.md" in done.stdout

    result = committer.commit(["docs/notes.md"])
    assert result.pushed and result.paths == ("docs/notes.md",) and not result.held_paths
    # Another secret in the same file later is held again.
    workspace.write("docs/notes.md", f"token {GITHUB}\nand {STRIPE}\n")
    assert set(committer.commit(["docs/notes.md"]).held_paths) == {"docs/notes.md"}


def test_release_needs_something_to_release(workspace, guarded):
    guarded()
    done = release(workspace, "no/such/file.txt")
    assert done.returncode == 2
    assert done.stderr.startswith("gitsieve: no/such/file.txt: nothing to release")


def test_release_records_are_private_and_the_key_too(workspace, guarded):
    _, guard = guarded()
    workspace.write("x.txt", "x\n")
    assert release(workspace, "x.txt").returncode == 0
    runtime = workspace.load().runtime_dir
    for name in (KEY_FILE, "guard-releases.json"):
        assert (os.stat(runtime / name).st_mode & 0o777) == 0o600, name
    records = ReleaseStore(runtime).records()
    assert [record["path"] for record in records.values()] == ["x.txt"]


def test_inline_allow_and_the_allowlist_file(workspace, guarded):
    committer, guard = guarded()
    workspace.write("a.py", f'TOKEN = "{GITHUB}"  # gitsieve:allow\n')
    workspace.write("fixtures/b.txt", f"{STRIPE}\n")
    workspace.write("c.txt", f"{NPM}\n")
    result = committer.commit(["a.py", "fixtures/b.txt", "c.txt"])
    assert set(result.paths) == {"a.py"} and set(result.held_paths) == {"fixtures/b.txt",
                                                                         "c.txt"}
    fingerprint = result.held_paths["c.txt"].detail.split("[")[1].split("]")[0]
    workspace.write(".gitsieve-allow", f"path:fixtures/**\n{fingerprint}  # demo token\n")
    result = committer.commit(["fixtures/b.txt", "c.txt", ".gitsieve-allow"])
    assert set(result.paths) == {"fixtures/b.txt", "c.txt", ".gitsieve-allow"}


def test_a_bad_allowlist_keeps_the_previous_one(workspace, guarded):
    committer, guard = guarded()
    workspace.write(".gitsieve-allow", "path:fixtures/**\n")
    guard.refresh()
    workspace.write(".gitsieve-allow", "path:fixtures/**\nrule:no-such-rule\n")
    guard.refresh()
    assert guard.allowlist_problem.startswith(
        ".gitsieve-allow:2: unknown rule id 'no-such-rule'")
    workspace.write("fixtures/b.txt", f"{STRIPE}\n")
    assert committer.commit(["fixtures/b.txt"]).paths == ("fixtures/b.txt",)


def test_issue_12_reproduction(workspace, guarded, tmp_path):
    committer, _ = guarded()
    secret_key = Randomness(7).mixed(ALNUM + "+/", 40)
    workspace.write("config/.env", f"AWS_REGION=eu-west-1\nAWS_SECRET_ACCESS_KEY={secret_key}\n")
    workspace.write("docs/notes.md", f"GitHub token: {GITHUB}\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(workspace.path("id_rsa"))], check=True)
    result = committer.commit(["config/.env", "docs/notes.md", "id_rsa", "id_rsa.pub"])
    assert result.paths == ("id_rsa.pub",)
    assert set(result.held_paths) == {"config/.env", "docs/notes.md", "id_rsa"}
    assert "environment file (.env) (env-file)" in result.held_paths["config/.env"].text
    assert "SSH private key file" in result.held_paths["id_rsa"].text


# --- the size guard --------------------------------------------------------------------------

def write_random(path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))


def test_a_60_mb_new_file_is_held_and_never_hashed_a_5_mb_one_is_committed(workspace, guarded):
    committer, _ = guarded()
    write_random(workspace.path("data/dump.bin"), 60 * MIB)
    write_random(workspace.path("data/small.bin"), 5 * MIB)

    result = committer.commit(["data/dump.bin", "data/small.bin"])

    assert result.pushed and result.paths == ("data/small.bin",)
    why = result.held_paths["data/dump.bin"]
    assert why.hold is Hold.OVERSIZED
    assert "60.0 MiB > 10.0 MiB" in why.text and 'git lfs track "*.bin"' in why.text
    # held before staging: the 60 MB blob was never written into the object store
    oid = git(workspace.root, "hash-object", "data/dump.bin").strip()
    assert subprocess.run(["git", "cat-file", "-e", oid], cwd=workspace.root).returncode != 0


def test_a_tracked_file_growing_past_the_limit_is_held(workspace, guarded):
    committer, _ = guarded("[guard]\nmax_new_file_mb = 1\n")
    write_random(workspace.path("data/log.bin"), MIB // 2)
    assert committer.commit(["data/log.bin"]).pushed
    write_random(workspace.path("data/log.bin"), 2 * MIB)
    result = committer.commit(["data/log.bin"])
    assert result.commit is None
    assert "tracked file grew over the size limit: 2.0 MiB > 1.0 MiB" \
        in result.held_paths["data/log.bin"].text


def test_an_oversized_file_is_released_and_committed(workspace, guarded):
    committer, _ = guarded("[guard]\nmax_new_file_mb = 1\n")
    write_random(workspace.path("data/big.bin"), 2 * MIB)
    assert committer.commit(["data/big.bin"]).held_paths
    assert release(workspace, "data/big.bin").returncode == 0
    assert committer.commit(["data/big.bin"]).paths == ("data/big.bin",)


def test_size_limit_zero_means_no_limit(workspace, guarded):
    committer, _ = guarded("[guard]\nmax_new_file_mb = 0\n")
    write_random(workspace.path("data/big.bin"), 2 * MIB)
    assert committer.commit(["data/big.bin"]).paths == ("data/big.bin",)


@pytest.mark.skipif(shutil.which("git-lfs") is None,
                    reason="git-lfs is not installed (.ci/run installs it with apt)")
def test_a_file_routed_to_lfs_goes_through_as_a_pointer(workspace, guarded):
    git(workspace.root, "lfs", "install", "--local")
    workspace.write(".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
    committer, _ = guarded()
    write_random(workspace.path("media/film.bin"), 60 * MIB)

    result = committer.commit(["media/film.bin"])

    assert result.pushed and result.paths == ("media/film.bin",), result
    pointer = workspace.show("origin/main:media/film.bin")
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1")
    assert "size 62914560" in pointer


@pytest.mark.skipif(shutil.which("git-lfs") is None,
                    reason="git-lfs is not installed (.ci/run installs it with apt)")
def test_a_secret_in_a_file_routed_to_lfs_is_held(workspace, guarded):
    """The committed blob is only a pointer; git-lfs uploads the file itself at the push.
    The guard scanned the pointer, and a token and a private key reached the remote."""
    git(workspace.root, "lfs", "install", "--local")
    workspace.write(".gitattributes", "*.dat filter=lfs diff=lfs merge=lfs -text\n")
    committer, _ = guarded()  # commits .gitattributes
    workspace.write("notes.dat", f"token: {GITHUB}\n")
    workspace.write("clean.dat", "nothing secret here\n")

    result = committer.commit(["notes.dat", "clean.dat"])

    assert result.paths == ("clean.dat",) and result.pushed
    assert result.held_paths["notes.dat"].hold is Hold.SECRET
    assert workspace.show("origin/main:clean.dat").startswith("version https://git-lfs")


def test_a_file_routed_to_lfs_without_git_lfs_configured_keeps_the_size_limit(
        workspace, guarded, monkeypatch, tmp_path):
    """No lfs filter: git commits the whole file, so the size limit holds it."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "empty-gitconfig"))
    workspace.write(".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
    committer, _ = guarded()  # commits .gitattributes
    write_random(workspace.path("media/film.bin"), 12 * MIB)

    result = committer.commit(["media/film.bin"])

    assert result.commit is None
    assert result.held_paths["media/film.bin"].hold is Hold.OVERSIZED


# --- the push gate ---------------------------------------------------------------------------

def test_a_persons_own_commit_with_a_secret_stops_the_push_until_they_fix_it(workspace,
                                                                             guarded):
    committer, _ = guarded()
    before = workspace.remote_head()
    workspace.write("deploy/keys.txt", f"stripe {STRIPE}\n")
    workspace.git("add", "deploy/keys.txt")
    workspace.git("commit", "-q", "-m", "add keys")
    mine = workspace.head()
    workspace.write("notes.txt", "a clean change\n")

    result = committer.commit(["notes.txt"])

    assert result.commit and not result.pushed  # committed locally, not pushed
    assert workspace.remote_head() == before
    held = committer.push_hold
    assert held.hold is Hold.SECRET
    assert held.text.startswith(f"secret found: in your commit {mine[:10]} (not pushed): "
                                "deploy/keys.txt:1:8: Stripe secret or restricted key")
    assert "git commit --amend" in held.text and STRIPE[8:20] not in held.text
    workspace.git("merge-base", "--is-ancestor", mine, "HEAD")  # never rewritten
    # Still held at the next try; fixed by the person (a fixup of their commit), it goes.
    assert committer.push() == (False, f"push held: {held.text}")
    workspace.write("deploy/keys.txt", "stripe ${STRIPE_KEY}\n")
    workspace.git("add", "deploy/keys.txt")
    workspace.git("commit", "-q", "--fixup", mine)
    workspace.git("-c", "sequence.editor=true", "rebase", "-q", "-i", "--autosquash", before)
    assert committer.push() == (True, "")
    assert committer.push_hold is None
    assert "deploy/keys.txt" in workspace.files_at("origin/main")


def test_a_sync_commit_on_a_cleared_commit_is_pushed_without_walking_history(workspace,
                                                                             guarded):
    committer, guard = guarded()
    workspace.write("one.txt", "first\n")
    assert committer.commit(["one.txt"]).pushed
    assert guard.push_checks_skipped == 0  # the first push walks what the remote lacks
    workspace.write("two.txt", "second\n")
    result = committer.commit(["two.txt"])
    assert result.pushed and workspace.remote_head() == result.commit
    assert guard.push_checks_skipped == 1


def test_a_persons_secret_under_a_sync_commit_is_still_found(workspace, guarded):
    committer, guard = guarded()
    workspace.write("one.txt", "first\n")
    assert committer.commit(["one.txt"]).pushed
    workspace.write("deploy/keys.txt", f"stripe {STRIPE}\n")
    workspace.git("add", "deploy/keys.txt")
    workspace.git("commit", "-q", "-m", "add keys")
    workspace.write("two.txt", "second\n")
    result = committer.commit(["two.txt"])
    assert result.commit and not result.pushed
    assert committer.push_hold.hold is Hold.SECRET
    assert guard.push_checks_skipped == 0


def test_an_allowlist_entry_removed_before_the_push_holds_it(workspace, guarded):
    committer, guard = guarded()
    workspace.write(".gitsieve-allow", "path:fixtures/**\n")
    assert committer.commit([".gitsieve-allow"]).pushed
    workspace.write("fixtures/b.txt", f"{STRIPE}\n")
    result = committer.commit(["fixtures/b.txt"], push=False)
    assert result.paths == ("fixtures/b.txt",)  # allowed when committed
    workspace.path(".gitsieve-allow").unlink()  # the person takes the permission back
    pushed, error = committer.push()
    assert not pushed and error.startswith("push held: secret found")
    assert guard.push_checks_skipped == 0


def test_a_persons_held_commit_is_pushed_once_released(workspace, guarded):
    committer, _ = guarded()
    workspace.write("deploy/keys.txt", f"stripe {STRIPE}\n")
    workspace.git("add", "deploy/keys.txt")
    workspace.git("commit", "-q", "-m", "add keys")
    workspace.path("deploy/keys.txt").unlink()  # gone from the work tree, still in history
    assert committer.push()[0] is False
    assert versions_to_release(workspace.load(), committer.git, "deploy/keys.txt")
    assert release(workspace, "deploy/keys.txt").returncode == 0
    assert committer.push() == (True, "")


def test_the_remotes_content_is_never_scanned_again(workspace, guarded, tmp_path):
    committer, guard = guarded()
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(workspace.remote), str(other))
    # Someone else pushed a secret: it is on the remote already; pulling it in is no leak,
    # and no reason to scan it.
    (other / "theirs.txt").write_text(f"{NPM}\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "theirs")
    git(other, "push", "-q")
    workspace.write("mine.txt", "mine\n")

    result = committer.commit(["mine.txt"])

    assert result.pushed, result
    assert committer.integrations == 1
    assert guard.judge.stats["blobs_scanned"] == 1  # mine.txt only
    assert {"theirs.txt", "mine.txt"} <= workspace.files_at("origin/main")


def test_first_push_to_an_empty_remote_scans_the_whole_history(tmp_path):
    ws = create_workspace(tmp_path)
    ws.write("old.txt", f"{GITHUB}\n")
    ws.git("add", "-A")
    ws.git("commit", "-q", "-m", "old")
    shutil.rmtree(ws.remote)
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(ws.remote))
    ws.git("update-ref", "-d", "refs/remotes/origin/main")
    config = ws.load()
    config_mod.prepare_runtime_dir(config)
    committer = Committer(config)
    guard = CommitGuard(config, committer.git)
    committer.push_gate = guard.push_gate
    try:
        pushed, why = committer.push()
    finally:
        guard.close()
    assert not pushed and "old.txt:1:1: GitHub token" in why


# --- the guard fails closed ------------------------------------------------------------------

def use_faulty_git(tmp_path, monkeypatch, rules: str):
    env, rules_file = faulty_git(tmp_path, rules)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return rules_file


def test_when_the_push_cannot_be_checked_nothing_is_pushed(workspace, guarded, tmp_path,
                                                          monkeypatch):
    committer, _ = guarded()
    before = workspace.remote_head()
    use_faulty_git(tmp_path, monkeypatch, "^rev-list.--objects fail\n")
    workspace.write("notes.txt", "clean\n")

    result = committer.commit(["notes.txt"])

    assert result.commit and not result.pushed
    assert result.error.startswith("push failed: checking what it would send:")
    assert committer.push_hold is None  # a failure (retried with back-off), not a hold
    assert workspace.remote_head() == before


def test_when_a_staged_blob_cannot_be_read_nothing_is_committed(workspace, guarded, tmp_path,
                                                                monkeypatch):
    committer, guard = guarded()
    head = workspace.head()
    use_faulty_git(tmp_path, monkeypatch, "^cat-file.--batch$ fail\n")
    guard.reader.close()  # the next read starts a new (faulty) cat-file
    workspace.write("notes.txt", "clean\n")

    result = committer.commit(["notes.txt"], attempts=0)

    assert result.commit is None and "cat-file" in result.error
    assert workspace.head() == head
