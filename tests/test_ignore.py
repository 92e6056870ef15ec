"""The long-lived check-ignore (common.git.ignore) against git's own one-shot answer."""
from __future__ import annotations

import os

import pytest

from gitsieve.common.git.gateway import Git
from gitsieve.common.git.ignore import IgnoreChecker

NAMES = ["a.log", "keep.log", "tracked.log", "b.txt", "build/x.o", "src/build/y.o",
         "src/deep/z.tmp", ":colon.log", "new\nline.log", "spaced name.log",
         os.fsdecode(b"latin-\xe9.log"), "src/.gitignore"]


@pytest.fixture
def checker(workspace):
    workspace.write(".gitignore", "*.log\n!keep.log\nbuild/\n")
    workspace.write("src/.gitignore", "*.tmp\n")
    workspace.write("tracked.log", "tracked although ignored\n")
    workspace.git("add", "-f", ".gitignore", "src/.gitignore", "tracked.log")
    workspace.git("commit", "-q", "-m", "ignore rules")
    found = IgnoreChecker(Git(workspace.root), workspace.path(".git"))
    yield found
    found.close()


def test_answers_are_git_check_ignores_and_one_process_serves_them(workspace, checker):
    expected = Git(workspace.root).ignored(NAMES)
    assert expected == {"a.log", "build/x.o", "src/build/y.o", "src/deep/z.tmp", ":colon.log",
                        "new\nline.log", "spaced name.log", os.fsdecode(b"latin-\xe9.log")}
    for _ in range(3):
        assert checker.ignored(NAMES[:-1]) == expected
    assert checker.starts == 1 and checker.fallbacks == 0


def test_a_thousand_paths_in_one_exchange(workspace, checker):
    names = [f"dir{i % 7}/file{i}.{'log' if i % 3 else 'txt'}" for i in range(1000)]
    assert checker.ignored(names) == Git(workspace.root).ignored(names)
    assert checker.starts == 1


def test_a_changed_gitignore_among_the_paths_replaces_the_child(workspace, checker):
    assert checker.ignored(["b.txt"]) == set()
    workspace.write(".gitignore", "*.log\n!keep.log\nbuild/\n*.txt\n")
    assert checker.ignored([".gitignore", "b.txt"]) == {"b.txt"}
    assert checker.starts == 2


def test_a_force_added_file_is_no_longer_ignored(workspace, checker):
    workspace.write("later.log", "x\n")
    assert checker.ignored(["later.log"]) == {"later.log"}
    workspace.git("add", "-f", "later.log")  # the index changed: tracked now
    assert checker.ignored(["later.log"]) == set()


def test_info_exclude_is_seen(workspace, checker):
    assert checker.ignored(["notes.md"]) == set()
    exclude = workspace.path(".git/info/exclude")
    exclude.parent.mkdir(exist_ok=True)
    exclude.write_text("notes.md\n")
    assert checker.ignored(["notes.md"]) == {"notes.md"}


def test_paths_beyond_a_symlink_or_in_a_submodule_are_answered_not_ignored(
        workspace, checker, tmp_path):
    """check-ignore refuses a whole request for one such path ("fatal: pathspec ... is
    beyond a symbolic link", "... is in submodule"): L1 logged an ERROR and counted an
    error for a directory replaced by a link or an edit in a submodule (fails before)."""
    workspace.path("real").mkdir()
    os.symlink("real", workspace.path("link"))
    module = tmp_path / "module"
    module.mkdir()
    for args in (("init", "-q"), ("commit", "-q", "--allow-empty", "-m", "m")):
        workspace.git("-C", str(module), *args)
    workspace.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(module),
                  "sub")
    workspace.write("sub/x.log", "in the submodule\n")
    assert checker.ignored(["a.log", "link/f.log", "sub/x.log", "b.txt"]) == {"a.log"}
    assert checker.fallbacks == 0


def test_refresh_replaces_the_child_only_when_the_index_changed(workspace, checker):
    """After a commit L1 refreshes: the new child reads the new index then, not when the
    next path waits for it; an unchanged index keeps the child."""
    workspace.write("later.log", "x\n")
    assert checker.ignored(["later.log"]) == {"later.log"}
    checker.refresh()
    assert checker.starts == 1
    workspace.git("add", "-f", "later.log")
    checker.refresh()
    assert checker.starts == 2
    assert checker.ignored(["later.log"]) == set() and checker.starts == 2
