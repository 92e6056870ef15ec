"""Exact attribution for an unprivileged gitsieve, from ``gitsieve helper`` (root).

The helper owns the fanotify groups and the process lineage; this attributor subscribes to
the workspace (:class:`gitsieve.common.helper.client.HelperClient`, which first checks that
the helper is root) and records what it sends in the same :class:`.recorder.WriteRecorder`
L2's own groups feed as root, so the verdicts and their window are the same
(:class:`.exact.RecordedAttributor`).  Before a change is judged, a ``Sync`` round trip
makes sure every write queued before the change was observed has arrived.

Blind spots are UNKNOWN, never USER: the helper's overflow notices, files it found in
directories marked late, and the time the helper is away (from the last thing heard until
it is back and the workspace subscribed again; the client reconnects by itself, with a
growing back-off).  The socket changes on every reconnect, so the actor polls one stable
epoll descriptor that holds the current socket.
"""
from __future__ import annotations

import logging
import os
import select
from typing import Callable

from gitsieve.common.helper.client import Gap, HelperClient, HelperUnavailable
from gitsieve.common.judge.attribution.exact import RecordedAttributor, WriterRules, inside
from gitsieve.common.judge.attribution.recorder import WriteRecorder
from gitsieve.common.judge.attribution.write_history import Missed
from gitsieve.common.protocol.states import Mode, Technique

log = logging.getLogger(__name__)


class HelperAttributor(RecordedAttributor):
    """Raises :class:`HelperUnavailable` (no trustworthy helper answers) or
    :class:`gitsieve.common.helper.client.SubscriptionRefused` (the helper refuses this
    workspace); the caller falls back."""

    mode = Mode.HELPER
    technique = Technique.HELPER

    def __init__(self, config, rules: WriterRules | None = None, name: str = "gitsieve"):
        self.rules = rules or WriterRules.from_config(config)
        self.git_dir = config.git_dir
        self.socket_path = config.helper_socket
        self.client = HelperClient(config.helper_socket, name=f"{name} {config.workspace}")
        self.client.connect()
        try:
            subscribed = self.client.subscribe(config.workspace)
        except Exception:
            self.client.close()
            raise
        root = os.fsdecode(subscribed.path)
        self.recorder = WriteRecorder(root, self.rules.classify,
                                      excluded=inside(config.runtime_dir, root))
        self._poller = select.epoll()
        self._registered = -1
        self._watch_socket()
        self.synced = 0.0  # the helper's wall time at its last Sync answer
        self.syncs = 0
        self.sync_failures = 0

    def _watch_socket(self) -> None:
        """Keep the current socket (a new one after each reconnect) in the epoll set."""
        fd = self.client.fileno()
        if fd == self._registered:
            return
        if self._registered >= 0:
            try:
                self._poller.unregister(self._registered)
            except OSError as exc:  # closed already: the kernel dropped it from the set
                log.debug("old helper socket left the poll set by itself: %s", exc)
        if fd >= 0:
            self._poller.register(fd, select.EPOLLIN)
        self._registered = fd

    def fds(self) -> list[tuple[int, Callable[[], None]]]:
        return [(self._poller.fileno(), self.drain)]

    def drain(self) -> None:
        """Record what arrived; notice a lost helper, and reconnect when it is time."""
        events = self.client.read_events()
        self._watch_socket()
        batch: list = []
        for event in events:
            if type(event) is not Gap:
                batch.append(event)
                continue
            self.recorder.record(batch)
            batch = []
            self.recorder.open_missed(event.since_wall, Missed.HELPER_AWAY)
            if event.until_wall is not None:
                self.recorder.close_missed(event.until_wall)
        self.recorder.record(batch)

    def catch_up(self, observed: float) -> None:
        """Every write the kernel queued before ``observed`` was queued in the helper's
        groups too: a Sync answered after ``observed`` proves they have all arrived."""
        if self.client.connected and self.synced < observed:
            try:
                self.synced = self.client.sync().wall
                self.syncs += 1
            except HelperUnavailable as exc:  # the gap is in the next read's events
                self.sync_failures += 1
                log.debug("sync with the helper failed: %s", exc)
        self.drain()

    def tick(self, now: float) -> None:
        self.drain()

    def wakeup_in(self, now: float) -> float | None:
        return self.client.wakeup_in()

    def status(self) -> dict:
        welcome = self.client.welcome
        return {"technique": self.technique, "helper_socket": str(self.socket_path),
                "helper_connected": self.client.connected,
                "helper_pid": welcome.pid if welcome else None,
                "helper_reconnects": self.client.reconnects, "helper_syncs": self.syncs,
                "helper_sync_failures": self.sync_failures,
                "helper_bad_frames": self.client.bad_frames,
                "helper_away": self.recorder.away_since is not None,
                **self.recorded_status()}

    def close(self) -> None:
        self.client.close()
        self._poller.close()
