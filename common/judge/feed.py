"""The debouncer's live feed: every Decision it takes, as ``[topic, frame]`` (a burst as
``[topic, BUNDLE, counts, sizes, payload]``, one topic a message: ``messages.published``,
read back with ``messages.topic_parts``).

The topic says which layer workers keep something of the decision, so each subscribes to
only that (a PUB socket filters by topic prefix before sending): ``d``, then ``P`` when an
L2 worker remembers the writes it accounted for (:func:`.process.accountable`), then ``C``
when an L3 worker remembers a user's version (:func:`.content_judge.remembered_version`).
The watcher and ``actorctl tail`` take everything.  A dirty start of 10,000 new files
thus costs the L2 workers no decode of the feed at all.
"""
from __future__ import annotations

from gitsieve.common.judge.content_judge import remembered_version
from gitsieve.common.judge.process import accountable
from gitsieve.common.protocol.trail import ContentStep, ProcessStep, Trail, step_of

EVERYTHING = (b"",)
PROCESS_TOPICS = (b"dP",)            # prefix of dP and dPC
CONTENT_TOPICS = (b"dC", b"dPC")


def topic_of(trail: Trail) -> bytes:
    """The feed topic of a decision with ``trail``."""
    process = step_of(trail, ProcessStep)
    content = step_of(trail, ContentStep)
    return (b"d" + (b"P" if process is not None and accountable(process) else b"")
            + (b"C" if content is not None and remembered_version(content) else b""))
