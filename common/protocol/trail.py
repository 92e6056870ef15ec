"""The trail: one typed step per layer that judged a change, carried on Change and Decision.

Each step is a frozen dataclass; on the wire it is ``[layer, {field: value}]`` and
:mod:`.messages` checks every field at decode like any other.  Code asks a trail for the
step of a layer (:func:`step_of`) and decides on the step's enum fields; :func:`describe`
renders a step for people.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from gitsieve.common.protocol.states import (
    Action,
    Content,
    L1Reason,
    L2Reason,
    L3Reason,
    Mode,
    ProcessAction,
    Technique,
    Writer,
    render,
)


@dataclass(frozen=True)
class PatternStep:
    """L1: what the path alone says."""

    LAYER: ClassVar[str] = "L1"
    action: Action
    reason: L1Reason
    detail: str = ""
    # the path is learned as system-only: L2 drops it unless the user is its writer
    learned: bool = False

    @property
    def verdict(self) -> str:
        return self.action


@dataclass(frozen=True)
class Suspect:
    """An autonomous process whose write counters moved near the change (evidence only)."""

    pid: int
    cmdline: str


@dataclass(frozen=True)
class ProcessStep:
    """L2: who wrote the change, with the evidence that says so."""

    LAYER: ClassVar[str] = "L2"
    verdict: Writer
    reason: L2Reason
    mode: Mode
    technique: Technique | None = None
    pid: int | None = None
    cmdline: str = ""
    confidence: float = 0.0
    # the process of the writer's lineage that decided (the writer itself or an ancestor)
    ancestor_pid: int | None = None
    ancestor_cmdline: str = ""
    matched_by: str = ""
    did: ProcessAction | None = None
    writes: int = 0
    # wall time of the newest write weighed: later changes of the path weigh only newer ones
    writes_until: float | None = None
    io_suspects: tuple[Suspect, ...] = ()
    repeated: bool = False  # the same writes as an earlier change: its verdict repeated
    learned: bool = False   # dropped because the path is learned as system-only


@dataclass(frozen=True)
class ContentStep:
    """L3: what changed versus HEAD."""

    LAYER: ClassVar[str] = "L3"
    verdict: Content
    reason: L3Reason
    detail: str = ""
    # digest of the version blind to volatile data (USER verdicts): a later version that
    # differs only in volatile data is the same change, not a new one
    masked: str | None = None
    # sha1 of the version's exact bytes (USER verdicts): the same bytes reported again are
    # still the user's change
    exact: str | None = None


Step = PatternStep | ProcessStep | ContentStep
STEP_TYPES: dict[str, type] = {cls.LAYER: cls for cls in (PatternStep, ProcessStep,
                                                           ContentStep)}
Trail = tuple[Step, ...]


def step_of(trail: Trail, kind: type) -> Step | None:
    """The (last) step of type ``kind`` in ``trail``, or None."""
    for step in reversed(trail):
        if type(step) is kind:
            return step
    return None


def l1_action(trail: Trail) -> Action:
    """The action L1 gave the change (ANALYZE if no L1 step: the debouncer keys on it)."""
    step = step_of(trail, PatternStep)
    return step.action if step is not None else Action.ANALYZE


def written_by_user(trail: Trail) -> bool:
    """L2 positively named a user process as the writer."""
    step = step_of(trail, ProcessStep)
    return step is not None and step.verdict == Writer.USER


def declared_the_systems(trail: Trail) -> bool:
    """L2 found this exact version declared the system's (`gitsieve mark --system`)."""
    step = step_of(trail, ProcessStep)
    return step is not None and step.verdict == Writer.SYSTEM and \
        step.technique == Technique.AGENT_MARK


def is_learned(trail: Trail) -> bool:
    step = step_of(trail, PatternStep)
    return step is not None and step.learned


def judged_by_content_alone(trail: Trail) -> bool:
    """The last word is L3's on a change whose writer was not positively the user."""
    return bool(trail) and type(trail[-1]) is ContentStep and not written_by_user(trail)


def _process_reason(step: ProcessStep) -> str:
    if step.reason != L2Reason.IDENTIFIED:
        return render(step.reason, step.matched_by)
    prefix = "deleted: " if step.did in (ProcessAction.REMOVED, ProcessAction.MOVED_AWAY) else ""
    action = step.did or ProcessAction.WRITTEN
    who = f"process {step.pid}"
    if step.ancestor_pid not in (None, step.pid):
        who += f" (descendant of {step.ancestor_pid})"
    if step.verdict == Writer.USER:
        return f"{prefix}{action} by non-autonomous {who}"
    if step.verdict == Writer.SELF:
        return f"{prefix}{action} by gitsieve's own {who}"
    if step.technique == Technique.OPEN_FILES:
        return f"autonomous process {step.pid} holds it open for writing"
    if step.technique == Technique.OPEN_FILES_SAMPLED:
        return f"autonomous process {step.pid} was seen writing it"
    return f"{prefix}{action} by autonomous {who}: {step.matched_by}"


def reason_text(step: Step) -> str:
    """The step's reason as a sentence."""
    if isinstance(step, ProcessStep):
        text = _process_reason(step)
        if step.repeated:
            text = f"same writes as an earlier change: {text}"
        if step.learned:
            text = f"learned: {text}"
        return text
    text = render(step.reason, step.detail)
    if isinstance(step, PatternStep) and step.learned:
        text = f"learned BLOCK (system-only writes); {text}"
    return text


def describe(step: Step) -> str:
    """One line for people: layer, verdict, reason and the writer's evidence."""
    evidence = []
    if isinstance(step, ProcessStep):
        if step.pid:
            evidence.append(f"pid {step.pid}")
        if step.cmdline:
            evidence.append(step.cmdline)
        if step.technique:
            evidence.append(f"via {step.technique}")
    extra = f" [{'; '.join(evidence)}]" if evidence else ""
    return f"{step.LAYER} {step.verdict}: {reason_text(step)}{extra}"


def as_dict(step: Step) -> dict:
    """A JSON-ready view of a step (``actorctl --json``, the metrics file)."""
    return {"layer": step.LAYER, "verdict": str(step.verdict), "reason_text": reason_text(step),
            **{key: value for key, value in asdict(step).items()}}

