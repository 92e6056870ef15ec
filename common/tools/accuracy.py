"""``gitsieve test``: the labelled corpus run through the real L1-L3 logic, with numbers.

For each attribution mode (exact fanotify + lineage when permitted, and psutil), a temporary
git repository is made holding every case's ``setup`` files in one commit; a simulated
user's editor and a simulated autonomous process (``scripts/agent_sim.py serve``, real
processes) then perform each case's writes, and every ``judge`` step sends a Change through
the real layer objects (:class:`gitsieve.actors.pattern_layer.PatternLayer`,
:class:`gitsieve.actors.process_layer.ProcessLayer`, :class:`gitsieve.actors.content_layer.ContentLayer`:
real git, real kernel events), their outputs captured instead of sent.  Printed: per layer
and overall, the confusion matrix, where a false positive (FP) is a user change held back
and a false negative (FN) a system change let through.  Exit 0 when FP = FN = 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gitsieve.common.protocol import messages
from gitsieve.common.tools.resources import resource

log = logging.getLogger(__name__)

CORPUS = ("tests", "corpus", "cases.py")
AGENT_SIM = ("scripts", "agent_sim.py")
LAYERS = ("L1", "L2", "L3")
_GIT_IDENTITY = {"GIT_AUTHOR_NAME": "gitsieve test", "GIT_AUTHOR_EMAIL": "test@gitsieve",
                 "GIT_COMMITTER_NAME": "gitsieve test", "GIT_COMMITTER_EMAIL": "test@gitsieve"}


def load_corpus(path: Path | None = None):
    path = path or resource(*CORPUS)
    spec = importlib.util.spec_from_file_location("gitsieve_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Capture:
    """Stands in for a layer's output socket: keeps every message it is given."""

    def __init__(self):
        self.messages: list = []

    def send(self, frame: bytes, flags: int = 0) -> None:
        self.messages.append(messages.decode(frame))

    def take(self) -> list:
        taken, self.messages = self.messages, []
        return taken


class Helper:
    """One ``agent_sim.py serve`` process taking commands line by line."""

    def __init__(self, workspace: Path, name: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(resource(*AGENT_SIM)), "serve", "--name", name, "--workspace",
             str(workspace)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"agent_sim {name} did not start")

    def do(self, op: str, path: str, text: str) -> None:
        command = {"op": op, "path": path}
        if op == "rename":
            command["to"] = text
        else:
            command["text"] = text
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"{op} {path}: {answer or 'helper exited'}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)
        self.proc.stdout.close()


@dataclass
class Outcome:
    case_id: str
    rule: str
    path: str
    expected: str
    got: str
    layer: str
    reason: str


@dataclass
class ModeResult:
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def matrix(self, layer: str | None = None) -> Counter:
        counts: Counter = Counter()
        for outcome in self.outcomes:
            if layer is None or outcome.layer == layer:
                counts[(outcome.expected, outcome.got)] += 1
        return counts

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.expected != o.got]


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, **_GIT_IDENTITY})


class Harness:
    """One temporary repository, the three layers and the two helpers, for one mode."""

    def __init__(self, base: Path, corpus, mode: str):
        from gitsieve.common import config as config_mod
        self.corpus, self.mode = corpus, mode
        self.root = base / f"ws-{mode}"
        self.root.mkdir()
        _git(self.root, "init", "-q", "-b", "main")
        self.agent_name = f"gitsieve-test-agent-{os.getpid()}-{mode}"
        (self.root / ".gitignore").write_text(corpus.GITIGNORE)
        rules = self.root / ".gitsieve-rules.conf"
        rules.write_text(corpus.RULES)
        (self.root / config_mod.CONFIG_NAME).write_text(
            "[filter]\n"
            f"patterns_file = \".gitsieve-rules.conf\"\n"
            f"autonomous_processes = [\"{self.agent_name}\"]\n"
            f"attribution = \"{mode}\"\nprocess_cache_ttl = 0.2\n"
            f"max_analyze_bytes = {corpus.MAX_ANALYZE_BYTES}\nlearning = false\n")
        for case in corpus.CASES:
            for rel, text in case["setup"].items():
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        _git(self.root, "add", "-A")
        _git(self.root, "commit", "-q", "-m", "corpus setup")
        self.config = config_mod.load(self.root)
        self.user = Helper(self.root, "user-editor")
        self.agent = Helper(self.root, self.agent_name)
        self.layers = self._layers()
        self.seq = 0

    def _layers(self):
        from gitsieve.actors.content_layer import ContentLayer
        from gitsieve.actors.pattern_layer import PatternLayer
        from gitsieve.actors.process_layer import ProcessLayer
        l1, l2, l3 = (PatternLayer(self.config), ProcessLayer(self.config, 1),
                      ContentLayer(self.config, 1))
        for layer in (l1, l2, l3):
            layer.setup()
        l1.to_l2, l1.to_decisions = Capture(), Capture()
        l2.to_content, l2.decisions = Capture(), Capture()
        l3.decisions = Capture()
        return l1, l2, l3

    @property
    def attribution_mode(self) -> str:
        return self.layers[1].mode

    def close(self) -> None:
        for helper in (self.user, self.agent):
            helper.close()
        for layer in self.layers:
            layer.shutdown()
            for sock in layer._sockets:
                sock.close(linger=0)
            layer.context.term()

    # ----- running ---------------------------------------------------------------------
    def judge(self, path: str, kind: str):
        """One Change through L1 -> L2 -> L3; the Decision that ends it."""
        from gitsieve.common.protocol.messages import Change, Decision
        l1, l2, l3 = self.layers
        self.seq += 1
        change = Change(path=path, kind=kind, seq=self.seq, epoch=1.0, observed=time.time())
        l1.on_change(change)
        l1.process_buffer()
        for layer, outputs in ((l2, (l1.to_decisions, l1.to_l2)),
                               (l3, (l2.decisions, l2.to_content))):
            decided, passed = outputs[0].take(), outputs[1].take()
            if decided:
                return decided[-1]
            layer.on_tick(time.monotonic())
            layer.on_change(passed[-1])
        decided = l3.decisions.take()
        if len(decided) != 1 or not isinstance(decided[0], Decision):
            raise RuntimeError(f"L3 gave {decided!r} for {path}")
        return decided[0]

    def run_case(self, case: dict) -> list[Outcome]:
        from gitsieve.common.git import gateway as gitutil
        outcomes = []
        for step in case["steps"]:
            kind = step[0]
            if kind in ("user", "agent"):
                (self.user if kind == "user" else self.agent).do(*step[1:])
            elif kind == "self":
                gitutil.run(self.root, "checkout", "--", step[2])
            elif kind == "commit":
                gitutil.run(self.root, "add", "--", step[1])
                gitutil.run(self.root, "commit", "-q", "-m", f"{case['id']}", "--",
                            step[1], env=_GIT_IDENTITY)
            else:
                _, path, change_kind, expected = step
                decision = self.judge(path, change_kind)
                last = decision.trail[-1]
                outcomes.append(Outcome(case["id"], case["rule"], path, expected,
                                        "commit" if decision.commit else "drop",
                                        last.get("layer", "?"), last.get("reason", "")))
        return outcomes


def run_mode(corpus, mode: str) -> ModeResult:
    result = ModeResult(mode)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gitsieve-test-") as base:
        harness = Harness(Path(base), corpus, mode)
        try:
            if harness.attribution_mode != mode:
                result.note = (f"{mode} not available here (running as uid {os.getuid()}); "
                               "skipped")
                return result
            for case in corpus.CASES:
                if mode in case["modes"]:
                    result.outcomes += harness.run_case(case)
                else:
                    result.excluded.append(case)
        finally:
            harness.close()
    result.seconds = time.monotonic() - started
    return result


# ----- report ----------------------------------------------------------------------------
def _row(name: str, counts: Counter) -> str:
    commit_ok, drop_ok = counts[("commit", "commit")], counts[("drop", "drop")]
    fp, fn = counts[("commit", "drop")], counts[("drop", "commit")]
    total = commit_ok + drop_ok + fp + fn
    return (f"  {name:<8} {total:>6} {commit_ok:>10} {drop_ok:>10} {fp:>6} {fn:>6}"
            f"   FP {100 * fp / max(1, commit_ok + fp):5.1f}%  FN "
            f"{100 * fn / max(1, drop_ok + fn):5.1f}%")


def report(results: list[ModeResult], verbose: bool = False) -> str:
    lines = []
    overall = Counter()
    for result in results:
        if result.note:
            lines.append(f"[{result.mode}] {result.note}")
            continue
        lines.append(f"[{result.mode}] {len(result.outcomes)} judged changes in "
                     f"{result.seconds:.1f} s; {len(result.excluded)} case(s) excluded")
        lines.append("  layer     cases  user:kept  sys:dropped     FP     FN")
        for layer in LAYERS:
            lines.append(_row(layer, result.matrix(layer)))
        lines.append(_row("all", result.matrix()))
        overall += result.matrix()
        for outcome in result.wrong:
            kind = "FP (user change held back)" if outcome.expected == "commit" else \
                "FN (system change let through)"
            lines.append(f"  {kind}: {outcome.case_id} {outcome.path} [{outcome.rule}] "
                         f"by {outcome.layer}: {outcome.reason}")
        if verbose:
            for case in result.excluded:
                lines.append(f"  excluded {case['id']} [{case['rule']}]: {case['why']}")
    lines.append("overall" + _row("", overall)[9:])
    return "\n".join(lines)


def accuracy_main(argv: list[str] | None = None) -> int:
    """``gitsieve test [--mode fanotify|psutil|both] [--json] [--verbose]``."""
    parser = argparse.ArgumentParser(prog="gitsieve test", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fanotify", "psutil", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="list excluded cases")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    corpus = load_corpus()
    modes = ("fanotify", "psutil") if args.mode == "both" else (args.mode,)
    results = [run_mode(corpus, mode) for mode in modes]
    wrong = sum(len(result.wrong) for result in results)
    if args.json:
        print(json.dumps([{"mode": r.mode, "note": r.note, "seconds": round(r.seconds, 2),
                           "judged": len(r.outcomes), "excluded": len(r.excluded),
                           "matrix": {layer: {f"{e}->{g}": n for (e, g), n in
                                              r.matrix(layer).items()}
                                      for layer in (*LAYERS, None)},
                           "wrong": [vars(o) for o in r.wrong]} for r in results],
                         indent=1, default=str))
    else:
        print(report(results, args.verbose))
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(accuracy_main())
