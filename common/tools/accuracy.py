"""``gitsieve test``: the labelled corpus run through the real L1-L3 logic, with numbers.

For each attribution mode (exact with L2's own fanotify groups, exact from ``gitsieve
helper``, and psutil; a mode not available here is reported as skipped), a temporary
git repository is made holding every case's ``setup`` files in one commit; a simulated
user's editor and a simulated autonomous process (``scripts/agent_sim.py serve``, real
processes) then perform each case's writes, and every ``judge`` step sends a Change through
the real judges (:class:`~gitsieve.common.judge.pattern.PatternJudge`,
:class:`~gitsieve.common.judge.process.ProcessJudge`,
:class:`~gitsieve.common.judge.content_judge.ContentJudge`: real git, real kernel events),
called directly, no socket involved.  Printed: per layer and overall, the confusion matrix, where a false positive (FP) is a user change held back
and a false negative (FN) a system change let through.  Exit 0 when FP = FN = 0.

``helper`` mode runs the cases of exact attribution (``"fanotify"`` in a case's modes) with
the writes reported by ``gitsieve helper``.  As root, ``gitsieve test`` starts a temporary
helper on a private socket (a fresh 0700 directory of root's) for the run and stops it
afterwards; otherwise it asks the helper at ``--helper-socket`` (default
``/run/gitsieve/helper.sock``, the system unit's).
The ``agent`` mode runs the psutil technique with the simulated autonomous process started
under ``gitsieve agent`` and a command line that matches nothing: the agent journal alone
names it (:mod:`gitsieve.common.judge.attribution.journal`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gitsieve.common.git.gateway import Git
from gitsieve.common.judge.content_judge import ContentJudge
from gitsieve.common.judge.pattern import PatternJudge, observe
from gitsieve.common.judge.process import ProcessJudge
from gitsieve.common.judge.rules import RuleCache
from gitsieve.common.protocol.states import Action, ChangeKind, Content
from gitsieve.common.protocol.trail import Step, reason_text
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


AGENT_MODE = "agent"
# the agent mode's simulated agent: a name no autonomous_processes pattern matches
WRAPPED_AGENT_NAME = "wrapped-agent-sim"


class Helper:
    """One ``agent_sim.py serve`` process taking commands line by line (under ``gitsieve
    agent`` when ``wrapped``)."""

    def __init__(self, workspace: Path, name: str, wrapped: bool = False):
        command = [sys.executable, str(resource(*AGENT_SIM)), "serve", "--name", name,
                   "--workspace", str(workspace)]
        if wrapped:
            command = [sys.executable, "-m", "gitsieve.common.tools.cli", "agent",
                       "--workspace", str(workspace), "--", *command]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
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


class Harness:
    """One temporary repository, the three judges and the two helpers, for one mode."""

    def __init__(self, base: Path, corpus, mode: str, helper_socket: str = ""):
        from gitsieve.common import config as config_mod
        self.corpus, self.mode = corpus, mode
        self.root = base / f"ws-{mode}"
        self.root.mkdir()
        self.git = Git(self.root)
        self.git.run("init", "-q", "-b", "main")
        self.agent_name = f"gitsieve-test-agent-{os.getpid()}-{mode}"
        (self.root / ".gitignore").write_text(corpus.GITIGNORE)
        rules = self.root / ".gitsieve-rules.conf"
        rules.write_text(corpus.RULES)
        (self.root / config_mod.CONFIG_NAME).write_text(
            "[filter]\n"
            f"patterns_file = \".gitsieve-rules.conf\"\n"
            f"autonomous_processes = [\"{self.agent_name}\"]\n"
            f"attribution = \"{'psutil' if mode == AGENT_MODE else mode}\"\n"
            "process_cache_ttl = 0.2\n"
            + (f"helper_socket = \"{helper_socket}\"\n" if helper_socket else "") +
            f"max_analyze_bytes = {corpus.MAX_ANALYZE_BYTES}\nlearning = false\n")
        for case in corpus.CASES:
            for rel, text in case["setup"].items():
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self.git.run("add", "-A")
        self.git.run("commit", "-q", "-m", "corpus setup", env=_GIT_IDENTITY)
        self.config = config_mod.load(self.root)
        self.user = Helper(self.root, "user-editor")
        self.agent = (Helper(self.root, WRAPPED_AGENT_NAME, wrapped=True)
                      if mode == AGENT_MODE else Helper(self.root, self.agent_name))
        self.rules = RuleCache(self.config.patterns_file, workspace=self.config.workspace)
        self.l1 = PatternJudge(self.config)
        self.l2 = ProcessJudge(self.config)
        self.l3 = ContentJudge(self.config, self.git)
        self.seq = 0

    @property
    def attribution_mode(self) -> str:
        return AGENT_MODE if self.mode == AGENT_MODE else self.l2.mode

    def close(self) -> None:
        for helper in (self.user, self.agent):
            helper.close()
        self.l2.close()
        self.l3.close()

    # ----- running ---------------------------------------------------------------------
    def judge(self, path: str, kind: str) -> tuple[bool, Step]:
        """One change through L1 -> L2 -> L3: whether it is committed, and the last step."""
        self.seq += 1
        change = observe(path, ChangeKind(kind), self.seq, 1.0, time.time(), self.rules)
        step = self.l1.judge([change])[0]
        if step.action != Action.ANALYZE:
            return step.action == Action.ALLOW, step
        change = dataclasses.replace(change, trail=(step,))
        self.l2.tick(time.monotonic())
        step = self.l2.judge(change)
        if self.l2.drops(step):
            return False, step
        step = self.l3.judge(dataclasses.replace(change, trail=(*change.trail, step)))
        return step.verdict == Content.USER, step

    def run_case(self, case: dict) -> list[Outcome]:
        outcomes = []
        for step in case["steps"]:
            kind = step[0]
            if kind in ("user", "agent"):
                (self.user if kind == "user" else self.agent).do(*step[1:])
            elif kind == "self":
                self.git.run("checkout", "--", step[2])
            elif kind == "commit":
                self.git.run("add", "--", step[1])
                self.git.run("commit", "-q", "-m", f"{case['id']}", "--", step[1],
                             env=_GIT_IDENTITY)
            else:
                _, path, change_kind, expected = step
                commit, last = self.judge(path, change_kind)
                outcomes.append(Outcome(case["id"], case["rule"], path, expected,
                                        "commit" if commit else "drop", last.LAYER,
                                        reason_text(last)))
        return outcomes


EXACT_MODES = ("fanotify", "helper")


def runs_in(case: dict, mode: str) -> bool:
    """Whether ``case`` is judged in ``mode``: the helper's attribution is the exact one."""
    return (mode in case["modes"] or mode == "helper" and "fanotify" in case["modes"])


def run_mode(corpus, mode: str, helper_socket: str = "") -> ModeResult:
    result = ModeResult(mode)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gitsieve-test-") as base:
        harness = Harness(Path(base), corpus, mode, helper_socket)
        try:
            if harness.attribution_mode != mode:
                result.note = (f"{mode} not available here (running as uid {os.getuid()}"
                               f"{', helper socket ' + helper_socket if mode == 'helper' else ''}"
                               "); skipped")
                return result
            for case in corpus.CASES:
                if runs_in(case, mode):
                    result.outcomes += harness.run_case(case)
                else:
                    result.excluded.append(case)
        finally:
            harness.close()
    result.seconds = time.monotonic() - started
    return result


class TemporaryHelper:
    """``gitsieve helper`` on a private socket for one run (root only): a fresh 0700
    directory of root's, which the client's ownership checks accept."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="gitsieve-test-helper-")
        self.socket_path = os.path.join(self.directory, "helper.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitsieve.common.tools.cli", "helper", "--socket",
             self.socket_path, "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the temporary gitsieve helper did not start")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(self.socket_path) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)
        os.rmdir(self.directory)


def run_helper_mode(corpus, helper_socket: str) -> ModeResult:
    """Helper mode: as root with a temporary helper of its own, else the given socket's."""
    if os.geteuid() != 0:
        return run_mode(corpus, "helper", helper_socket)
    helper = TemporaryHelper()
    try:
        return run_mode(corpus, "helper", helper.socket_path)
    finally:
        helper.close()


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


MODES = {"all": ("fanotify", "helper", "psutil", AGENT_MODE), "both": ("fanotify", "psutil")}
DEFAULT_HELPER_SOCKET = "/run/gitsieve/helper.sock"


def run(mode: str = "all", as_json: bool = False, verbose: bool = False,
        helper_socket: str = DEFAULT_HELPER_SOCKET) -> int:
    """``gitsieve test``: run the corpus in ``mode`` ("all", "both" = fanotify and psutil,
    or one mode) and print the report; exit 1 when any change was misjudged."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    corpus = load_corpus()
    results = [run_helper_mode(corpus, helper_socket) if name == "helper"
               else run_mode(corpus, name) for name in MODES.get(mode, (mode,))]
    wrong = sum(len(result.wrong) for result in results)
    if as_json:
        print(json.dumps([{"mode": r.mode, "note": r.note, "seconds": round(r.seconds, 2),
                           "judged": len(r.outcomes), "excluded": len(r.excluded),
                           "matrix": {layer: {f"{e}->{g}": n for (e, g), n in
                                              r.matrix(layer).items()}
                                      for layer in (*LAYERS, None)},
                           "wrong": [vars(o) for o in r.wrong]} for r in results],
                         indent=1, default=str))
    else:
        print(report(results, verbose))
    return 1 if wrong else 0
