"""Who wrote a file: exact (fanotify + lineage, own or the helper's) and unprivileged
techniques."""
from __future__ import annotations

import logging

from gitsieve.common.judge.attribution.exact import ExactAttributor
from gitsieve.common.judge.attribution.sampled import Attributor

log = logging.getLogger(__name__)


def make_attributor(config, name: str = "gitsieve"):
    """The attributor ``[filter] attribution`` asks for, and one log line saying which
    (``name`` starts it: the L2 worker's id).

    - "fanotify": L2's own groups (root); "helper": ``gitsieve helper`` at
      ``[filter] helper_socket``; "psutil": the unprivileged techniques.  An explicit choice
      that cannot be had is an error line, then psutil.
    - "auto": own fanotify, else the helper, else psutil; the line says why the earlier
      ones were passed over.  A helper socket that exists but cannot be used has already
      given its own warning (not root's, or no answer).
    """
    from gitsieve.common.helper.client import HelperUnavailable, SubscriptionRefused
    from gitsieve.common.judge.attribution.helper import HelperAttributor
    choice = config.attribution
    passed_over = []
    if choice in ("auto", "fanotify"):
        try:
            chosen = ExactAttributor(config)
        except OSError as exc:
            passed_over.append(f"own fanotify: {exc}")
        else:
            log.info("%s: attribution by own fanotify groups (exact)", name)
            return chosen
    if choice in ("auto", "helper"):
        try:
            chosen = HelperAttributor(config, name=name)
        except (HelperUnavailable, SubscriptionRefused) as exc:
            passed_over.append(f"helper: {exc}")
        else:
            reason = f" ({'; '.join(passed_over)})" if passed_over else ""
            log.info("%s: attribution by gitsieve helper at %s (exact, helper pid %d)%s",
                     name, config.helper_socket, chosen.client.welcome.pid, reason)
            return chosen
    level = logging.ERROR if choice in ("fanotify", "helper") else logging.INFO
    reason = f": exact attribution unavailable ({'; '.join(passed_over)})" if passed_over \
        else ""
    log.log(level, "%s: attribution by psutil open-files, sampling and I/O correlation%s",
            name, reason)
    return Attributor(config.autonomous_processes, config.process_cache_ttl,
                      workspace=config.workspace)
