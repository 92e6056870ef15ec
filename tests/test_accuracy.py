"""``gitsieve test`` (common.tools.accuracy): the labelled corpus through the real L1-L3
judges with real writer processes, in every attribution mode (``agent``: psutil with the
simulated agent under ``gitsieve agent``); the target is 0 FP and 0 FN."""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from gitsieve.common.tools import accuracy, cli

# as root, helper mode starts a temporary helper of its own
MODES = ["psutil", "agent"] + (["fanotify", "helper"] if os.geteuid() == 0 else [])


def test_corpus_has_at_least_200_labelled_changes_covering_every_rule_and_hard_case():
    corpus = accuracy.load_corpus()
    judged = [step for case in corpus.CASES for step in case["steps"] if step[0] == "judge"]
    assert len(judged) >= 200
    rules = {case["rule"] for case in corpus.CASES}
    for needed in ("L1 editor junk", "L1 ignored by git", "L1 BLOCK rule", "L1 ALLOW rule",
                   "L3 append-only log growth by an autonomous process",
                   "L3 timestamp-only text", "L3 volatile JSON keys only",
                   "L3 binary file changed by the user",
                   "L3 file over max_analyze_bytes changed by the user",
                   "L2 short-lived child of an autonomous process (new file)",
                   "L2 new file with real content by an autonomous process",
                   "rename by the user of a committed file",
                   "gitsieve's own git restores a file"):
        assert needed in rules
    assert any(rule.startswith("a file both sides write") for rule in rules)
    both = Counter(mode for case in corpus.CASES for mode in case["modes"])
    assert both["fanotify"] >= 200 and both["psutil"] >= 150 and both["agent"] >= 200
    assert all(case["why"] for case in corpus.CASES if set(case["modes"]) != {
        "fanotify", "psutil", "agent"})  # every mode a case is excluded from says why


@pytest.mark.parametrize("mode", MODES)
def test_corpus_has_no_false_positive_and_no_false_negative(mode, capsys):
    assert cli.main(["test", "--mode", mode, "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["mode"] == mode and not result["note"]
    assert result["wrong"] == []
    assert result["judged"] >= 170
    overall = result["matrix"]["null"]
    assert overall.get("commit->drop", 0) == 0 and overall.get("drop->commit", 0) == 0
    assert overall["commit->commit"] > 50 and overall["drop->drop"] > 100


def test_the_runner_reports_what_a_mode_cannot_decide():
    """The exact-only cases run unprivileged are false negatives: the matrix is real."""
    corpus = accuracy.load_corpus()
    exact_only = [case for case in corpus.CASES if "psutil" not in case["modes"]
                  and case["rule"].startswith("L2 new file")]

    class Subset:
        RULES, GITIGNORE, MAX_ANALYZE_BYTES = (corpus.RULES, corpus.GITIGNORE,
                                               corpus.MAX_ANALYZE_BYTES)
        CASES = [{**case, "modes": ("psutil",)} for case in exact_only]
    result = accuracy.run_mode(Subset, "psutil")
    assert len(result.outcomes) == len(exact_only) > 0
    assert all(o.expected == "drop" and o.got == "commit" for o in result.wrong)
    assert len(result.wrong) == len(exact_only)
    assert "FN (system change let through)" in accuracy.report([result])
