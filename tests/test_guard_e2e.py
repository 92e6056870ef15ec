"""The guard under ``gitsieve run``: secrets and oversized files written in ALLOW and
ANALYZE areas, and a person's own commit, never reach the remote; each is reported
(flush exit 3, explain, status, the log) without the secret itself, and released by
``gitsieve release``.  Benign look-alikes are committed normally.

One gitsieve serves the module; the tests run in file order and each leaves everything
synced.  Tokens and keys are generated at run time (guard_corpus)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import guard_corpus as corpus
import pytest
from guard_corpus import ALNUM, Randomness

from conftest import ROOT, Gitsieve, create_workspace, wait_for

SYNC_TIMEOUT = 30.0
MIB = 1 << 20
PATTERNS = r"""
ALLOW:docs/.*:User documentation
"""

with tempfile.TemporaryDirectory(prefix="guard-e2e-corpus-") as _made_in:
    PLANTED = corpus.planted_secrets(Path(_made_in), seed=1200)
    BENIGN = corpus.benign_files(Path(_made_in), seed=1201)


def gitsieve_cli(ws, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitsieve.common.tools.cli", *args,
                           "--workspace", str(ws.root)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("guard-e2e")
    ws = create_workspace(base)
    ws.patterns(PATTERNS)
    ws.fast_config("""
        [git]
        push_backoff_max = 5
    """)
    ws.git("push", "-q")
    runner = Gitsieve(ws, base / "gitsieve.log")
    try:
        runner.wait_running()
        yield ws, runner
    finally:
        code, _ = runner.stop()
    assert code == 0, runner.log()


def flush(ws, timeout: float = SYNC_TIMEOUT) -> subprocess.CompletedProcess:
    """``gitsieve flush``; asked again while the executor is too busy to answer (it does not
    serve its control socket while git commits and pushes a large file: issue 11)."""
    for _ in range(10):
        done = gitsieve_cli(ws, "flush", "--timeout", str(timeout), timeout=timeout + 30)
        if not (done.returncode == 1 and "did not answer" in done.stderr):
            return done
    return done


def flushed(ws) -> None:
    done = flush(ws)
    assert done.returncode == 0, done.stdout + done.stderr


def held_lines(output: str) -> dict[str, str]:
    """flush's "held PATH: reason" lines."""
    return dict(re.findall(r"^  held (\S+): (.*)$", output, re.M))


def remote_files(ws) -> set[str]:
    ws.git("fetch", "-q", "origin")
    return ws.files_at("origin/main")


def secret_pieces(secret: bytes) -> list[str]:
    text = secret.decode("latin-1")
    return [text[i:i + 12] for i in range(0, max(1, len(text) - 11), 6)]


def assert_nowhere(secret: bytes, *texts: str) -> None:
    for piece in secret_pieces(secret):
        for text in texts:
            assert piece not in text, "a piece of a secret was shown"


def test_benign_look_alikes_are_committed_normally(env):
    ws, _ = env
    written = []
    for number, benign in enumerate(BENIGN):
        area = "docs" if number % 2 == 0 else "notes"
        rel = f"{area}/benign/{benign.path}"
        path = ws.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(benign.content)
        written.append(rel)
    done = flush(ws)
    flagged = sorted(line for line in held_lines(done.stdout) if "secret found" in
                     held_lines(done.stdout)[line])
    print(f"\nbenign look-alikes: {len(written)} files, {len(flagged)} held "
          f"(false-positive rate {len(flagged) / len(written):.0%})")
    assert done.returncode == 0 and not flagged, done.stdout
    assert set(written) <= remote_files(ws)


def test_issue_reproduction_and_an_edit_removing_the_secret(env, tmp_path):
    ws, runner = env
    r = Randomness(1203)
    secret_key = r.mixed(ALNUM + "+/", 40)
    token = "gh" + "p_" + r.mixed(ALNUM, 36)
    ws.write("docs/config/.env", f"AWS_REGION=eu-west-1\nAWS_SECRET_ACCESS_KEY={secret_key}\n")
    ws.write("docs/notes.md", f"# Notes\n\nGitHub token: {token}\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(ws.path("docs/id_rsa"))], check=True)
    private = ws.path("docs/id_rsa").read_bytes()

    done = flush(ws)

    assert done.returncode == 3, done.stdout
    held = held_lines(done.stdout)
    assert set(held) == {"docs/config/.env", "docs/notes.md", "docs/id_rsa"}, done.stdout
    assert "secret found: docs/notes.md:3:15: GitHub token (github-token) [" \
        in held["docs/notes.md"]
    assert "env-file" in held["docs/config/.env"]
    assert remote_files(ws) & set(held) == set()
    assert "docs/id_rsa.pub" in remote_files(ws)
    explain = gitsieve_cli(ws, "explain", "docs/notes.md")
    assert "held by the executor: secret found: docs/notes.md:3:15" in explain.stdout
    status = gitsieve_cli(ws, "status")
    assert "held by the executor: docs/notes.md: secret found" in status.stdout
    wait_for(lambda: "held docs/notes.md: secret found" in runner.log(), 10,
             message="the hold in the log")
    for secret in (token.encode(), secret_key.encode(), private.split(b"\n")[1]):
        assert_nowhere(secret, done.stdout, explain.stdout, status.stdout, runner.log())

    # The person takes the token out: the file syncs; the others are deleted by them.
    ws.write("docs/notes.md", "# Notes\n\nGitHub token: in the password manager\n")
    ws.path("docs/config/.env").unlink()
    ws.path("docs/id_rsa").unlink()
    flushed(ws)
    assert ws.show("origin/main:docs/notes.md").endswith("in the password manager\n")


def put_whole(ws, rel: str, size: int) -> None:
    """A file that arrives whole (moved into place): how long writing it takes is not this
    test's business."""
    staging = ws.root.parent / os.path.basename(rel)
    staging.write_bytes(os.urandom(size))
    os.replace(staging, ws.path(rel))


def test_size_guard(env):
    ws, _ = env
    ws.path("notes").mkdir(exist_ok=True)
    put_whole(ws, "notes/dump.bin", 60 * MIB)
    put_whole(ws, "notes/small.bin", 5 * MIB)
    try:
        done = flush(ws)

        assert done.returncode == 3, done.stdout + done.stderr
        reason = held_lines(done.stdout)["notes/dump.bin"]
        assert "too large: new file over the size limit: 60.0 MiB > 10.0 MiB" in reason
        assert 'git-lfs (git lfs track "*.bin")' in reason
        files = remote_files(ws)
        assert "notes/small.bin" in files and "notes/dump.bin" not in files
    finally:
        ws.path("notes/dump.bin").unlink()
    flushed(ws)


# Kinds put in the person's own commit; the rest go half to ALLOW (docs/), half to
# ANALYZE (notes/).
OWN_KINDS = {"stripe secret key", "anthropic api key", "jwt", "rsa private key"}


def test_secrets_in_allow_analyze_and_a_persons_commit_never_leave_until_released(env):
    ws, runner = env
    before = ws.remote_head()
    kinds = list(PLANTED)
    assert len(kinds) >= 20
    own = [p for p in kinds if p.kind in OWN_KINDS]
    written = [p for p in kinds if p.kind not in OWN_KINDS]
    slug = {p.kind: re.sub(r"[^a-z0-9]+", "-", p.kind) for p in kinds}
    place = {}
    for p in own:
        place[p.kind] = f"own/{slug[p.kind]}/{os.path.basename(p.path)}"
    for number, p in enumerate(written):
        area = "docs" if number % 2 == 0 else "notes"
        place[p.kind] = f"{area}/{slug[p.kind]}/{os.path.basename(p.path)}"
    # The person's own commit first: from then on no push may happen.
    for p in own:
        ws.path(place[p.kind]).parent.mkdir(parents=True, exist_ok=True)
        ws.path(place[p.kind]).write_bytes(p.content)
    ws.git("add", "own")
    ws.git("commit", "-q", "-m", "my keys")
    mine = ws.head()
    for p in written:
        ws.path(place[p.kind]).parent.mkdir(parents=True, exist_ok=True)
        ws.path(place[p.kind]).write_bytes(p.content)
    ws.write("docs/clean.md", "a clean change, committed, held back by the push gate\n")

    done = flush(ws)

    assert done.returncode == 3, done.stdout
    held = held_lines(done.stdout)
    for p in written:  # each reported, with its rule, never the secret
        assert f"secret found: {place[p.kind]}:" in held.get(place[p.kind], ""), p.kind
        assert f"({p.rule})" in held[place[p.kind]], p.kind
    assert "not pushed" in done.stdout
    assert f"secret found: in your commit {mine[:10]}" in done.stdout
    for p in own:
        assert place[p.kind] in done.stdout, p.kind
    assert ws.remote_head() == before  # nothing left the machine, not even the clean file
    assert "docs/clean.md" in ws.files_at("HEAD")  # committed locally
    ws.git("merge-base", "--is-ancestor", mine, "HEAD")  # the person's commit untouched
    status = gitsieve_cli(ws, "status")
    assert "secret found: in your commit" in status.stdout
    log = runner.log()
    for p in kinds:
        assert_nowhere(p.secret, done.stdout, status.stdout, log)

    # Each released by `gitsieve release`: everything is committed and pushed.
    released = gitsieve_cli(ws, "release", *(place[p.kind] for p in kinds))
    assert released.returncode == 0, released.stderr
    flushed(ws)
    files = remote_files(ws)
    assert {place[p.kind] for p in kinds} | {"docs/clean.md"} <= files
    print(f"\nsecrets held and released: {len(written)} written in ALLOW/ANALYZE areas, "
          f"{len(own)} in a person's own commit")
