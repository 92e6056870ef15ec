"""The performance metrics file (``config.metrics_file``), written by the health monitor.

JSON, rewritten atomically every ``[runtime].metrics_interval`` seconds:
``{"written": UNIX_TIME, "workspace": ..., "actors": {actor_id: {...}}, "layers": {...}}``
where each actor carries its pid, liveness, restarts seen, message counts, errors, handler
latency percentiles (from its heartbeat) and resource usage (rss, cpu) read with psutil,
and ``layers`` sums the ``verdict_*`` counts of every worker of L1, L2 and L3.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from gitsieve.common.config import runtime

# Actor id prefix -> the layer its verdict counts belong to.
LAYER_OF = {"l1": "L1", "l2": "L2", "l3": "L3"}


def layer_of(actor_id: str) -> str | None:
    return LAYER_OF.get(actor_id.split("-", 1)[0])


class ResourceSampler:
    """rss and cpu of actor processes; cpu is the share since the previous sample."""

    def __init__(self):
        self.processes: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> dict:
        try:
            proc = self.processes.get(pid)
            if proc is None:
                proc = self.processes[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only sets the reference point
            with proc.oneshot():
                return {"rss_mb": round(proc.memory_info().rss / (1024 * 1024), 1),
                        "cpu_percent": proc.cpu_percent(None),
                        "threads": proc.num_threads()}
        except psutil.Error as exc:
            # Gone or not ours to read: the entry says so instead of failing the file.
            self.processes.pop(pid, None)
            return {"rss_mb": None, "cpu_percent": None, "threads": None,
                    "resource_error": type(exc).__name__}

    def forget_except(self, pids: set[int]) -> None:
        for pid in [p for p in self.processes if p not in pids]:
            del self.processes[pid]


def verdict_counts(stats: dict) -> dict:
    return {key[len("verdict_"):]: value for key, value in stats.items()
            if key.startswith("verdict_") and isinstance(value, int)}


def build(workspace: str, actors: dict, sampler: ResourceSampler) -> dict:
    """``actors``: the health monitor's table {actor_id: {pid, alive, restarts, stats}}."""
    table = {}
    layers: dict[str, dict] = {}
    for actor_id, info in sorted(actors.items()):
        stats = info.get("stats") or {}
        pid = info.get("pid")
        entry = {"pid": pid, "alive": info.get("alive", False),
                 "restarts": info.get("restarts", 0),
                 "messages_in": stats.get("messages_in"),
                 "messages_out": stats.get("messages_out"),
                 "errors": stats.get("errors"), "bad_frames": stats.get("bad_frames"),
                 "latency": stats.get("latency", {})}
        if info.get("alive") and isinstance(pid, int):
            entry.update(sampler.sample(pid))
        counts = verdict_counts(stats)
        if counts:
            entry["verdicts"] = counts
            layer = layers.setdefault(layer_of(actor_id) or actor_id, {})
            for verdict, count in counts.items():
                layer[verdict] = layer.get(verdict, 0) + count
        table[actor_id] = entry
    sampler.forget_except({info.get("pid") for info in actors.values()})
    return {"written": time.time(), "workspace": workspace, "actors": table, "layers": layers}


def write_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over: readers never
    see a half-written file."""
    runtime.write_atomic(path, json.dumps(data, indent=1, sort_keys=True,
                                          default=str).encode("utf-8"))
