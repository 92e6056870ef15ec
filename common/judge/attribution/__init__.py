"""Who wrote a file: exact (fanotify + lineage) and unprivileged techniques."""
from __future__ import annotations

import logging

from gitsieve.common.judge.attribution.exact import ExactAttributor
from gitsieve.common.judge.attribution.sampled import Attributor

log = logging.getLogger(__name__)


def make_attributor(config):
    """The attributor ``[filter] attribution`` asks for: "psutil", "fanotify" (exact; falls
    back with an error line if the kernel refuses) or "auto" (exact when permitted, else one
    info line and the psutil techniques)."""
    if config.attribution != "psutil":
        try:
            return ExactAttributor(config)
        except OSError as exc:
            level = logging.ERROR if config.attribution == "fanotify" else logging.INFO
            log.log(level, "exact attribution unavailable (%s): using psutil open-files, "
                    "sampling and I/O correlation", exc)
    return Attributor(config.autonomous_processes, config.process_cache_ttl)
