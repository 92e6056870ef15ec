"""Every configuration key, declared once: section, name, type, range, default, doc.

The declarations drive loading and validation (:mod:`.loader`), the commented file
``gitsieve init`` writes (:func:`render_toml`) and the README's reference table
(:func:`render_markdown`; a test keeps the README in step).  A key's value lands on the
Config as attribute ``attr`` after ``convert``.  Profiles (``gitsieve init --profile``)
override some defaults: ``conservative`` restores the original design's limits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

LIST_OF_STR, LIST_OF_INT, DEBOUNCE_RULES = "list of strings", "list of integers", "rules"


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: object  # bool, int, float, str, LIST_OF_STR, LIST_OF_INT, DEBOUNCE_RULES
    default: object
    doc: str
    attr: str = ""          # Config attribute; default: the key's name
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    convert: Callable[[object], object] | None = None
    profiles: dict = field(default_factory=dict)  # profile name -> default there
    regex: bool = False     # a regex (or list of regexes) that must compile
    unit: str = ""          # shown after the range in docs ("s", "bytes", ...)

    @property
    def attribute(self) -> str:
        return self.attr or self.name

    def default_in(self, profile: str | None) -> object:
        return self.profiles.get(profile, self.default) if profile else self.default

    def range_text(self) -> str:
        if self.choices:
            return " / ".join(f'"{choice}"' for choice in self.choices)
        if self.minimum is None and self.maximum is None:
            return ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.minimum:g}-{self.maximum:g}{unit}"


_MINUTES = 60.0
SEED_DEBOUNCE_RULES = [{"pattern": r"\.claude/autonomous/.*", "seconds": 300},
                       {"pattern": r".*\.(sh|py|js|ts)", "seconds": 5}]
DEFAULT_VOLATILE_PATTERNS = [
    # ISO-8601 dates with times, fractions (. or ,) and zones
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?(Z|[+-]\d{2}:?\d{2})?",
    r"\d{2}:\d{2}:\d{2}([.,]\d+)?",
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    # Unix epochs in seconds, milli-, micro- and nanoseconds (date +%s%N), 2017-2033
    r"\b1[5-9]\d{8}(\d{3}|\d{6}|\d{9})?(\.\d+)?\b",
]

KEYS: tuple[Key, ...] = (
    # [filter]
    Key("filter", "patterns_file", str, ".claude/sync-filter/system-patterns.conf",
        "rules file (ACTION:REGEX[:DESCRIPTION] a line), relative to the workspace"),
    Key("filter", "default", str, "ANALYZE", "action for paths no rule matches",
        attr="default_action", choices=("BLOCK", "ALLOW", "ANALYZE")),
    Key("filter", "autonomous_processes", LIST_OF_STR,
        ["claude-autonomous", "claude-.*-monitor"],
        "command-line regexes (searched) of the autonomous processes", regex=True),
    Key("filter", "volatile_keys", LIST_OF_STR, ["last_update", "timestamp", "session_id"],
        "JSON keys, at any depth, whose changes alone are not worth a commit"),
    Key("filter", "process_cache_ttl", float, 30, "seconds between full scans for autonomous "
        "processes (unprivileged attribution)", minimum=0.1, maximum=3600, unit="s"),
    Key("filter", "attribution", str, "auto",
        '"fanotify": exact, own fanotify groups, needs root; "helper": exact, from `gitsieve '
        'helper` run by root; "psutil": unprivileged sampling; "auto": the first of these '
        "that works", choices=("auto", "fanotify", "helper", "psutil")),
    Key("filter", "autonomous_uids", LIST_OF_INT, [],
        "uids whose processes are autonomous"),
    Key("filter", "autonomous_cgroups", LIST_OF_STR, [],
        "regexes on /proc/PID/cgroup lines of autonomous processes", regex=True),
    Key("filter", "autonomous_units", LIST_OF_STR, [],
        'systemd unit names of autonomous processes, e.g. "agent.service"'),
    Key("filter", "text_volatile_patterns", LIST_OF_STR, DEFAULT_VOLATILE_PATTERNS,
        "regexes of tokens (timestamps, uuids, epochs) whose changes alone make a text "
        "change the system's", regex=True),
    Key("filter", "max_analyze_bytes", int, 5 * 1024 * 1024,
        "larger files are compared by size and object id only", minimum=1024,
        maximum=1024 ** 3, unit="bytes"),
    Key("filter", "learning", bool, True,
        "learn a path as BLOCK after learn_after system-only changes"),
    Key("filter", "learn_after", int, 5, "system-only changes that teach a path",
        minimum=1, maximum=1000),
    Key("filter", "learn_window_minutes", float, 10, "...within this many minutes",
        attr="learn_window", minimum=0.1, maximum=10080, unit="min",
        convert=lambda minutes: float(minutes) * _MINUTES),
    Key("filter", "helper_socket", str, "/run/gitsieve/helper.sock",
        "socket of `gitsieve helper` (attribution \"helper\" or \"auto\"); used only if "
        "it and its directory are root's"),
    # [debounce]
    Key("debounce", "allow", float, 0.5, "quiet period for ALLOW paths", attr="debounce_allow",
        minimum=0, maximum=3600, unit="s", profiles={"conservative": 2}),
    Key("debounce", "default", float, 1, "quiet period for other paths no debounce rule "
        "matches", attr="debounce_default", minimum=0, maximum=3600, unit="s",
        profiles={"conservative": 30}),
    Key("debounce", "rules", DEBOUNCE_RULES, [],
        "quiet periods by path: [{pattern = REGEX, seconds = N}], first fullmatch wins",
        attr="debounce_rules", profiles={"conservative": SEED_DEBOUNCE_RULES}),
    Key("debounce", "max_wait", float, 5, "a path written continuously is committed after "
        "max(its quiet period, max_wait)", attr="debounce_max_wait", minimum=0,
        maximum=86400, unit="s", profiles={"conservative": 10}),
    Key("debounce", "open_max", float, 60, "a file a process still holds open for writing "
        "is committed once closed, or once open this long (logs, databases): then after its "
        "quiet period", attr="debounce_open_max", minimum=0.1, maximum=86400, unit="s"),
    # [limits]
    Key("limits", "max_commits_per_hour", int, 600, "commits an hour; reaching it delays and "
        "coalesces, nothing is dropped; 0: no limit", minimum=0, maximum=100_000,
        profiles={"conservative": 10}),
    Key("limits", "max_commits_per_day", int, 5000, "commits a day; 0: no limit", minimum=0,
        maximum=1_000_000, profiles={"conservative": 50}),
    Key("limits", "cooldown_seconds", float, 0.5, "minimum time between two commits",
        minimum=0, maximum=86400, unit="s", profiles={"conservative": 300}),
    Key("limits", "runaway_commits_per_hour", int, 120,
        "one path committed this often within an hour is held until the hour lets it in "
        "(never a change positively written by you); 0: no cap", minimum=0, maximum=100_000,
        profiles={"conservative": 30}),
    # [git]
    Key("git", "remote", str, "origin", "push target; empty: commit only"),
    Key("git", "branch", str, "main", "commit only while this branch is checked out; "
        "empty: any branch; unset in a repository without this branch: \"master\" if it "
        "has that, else any branch"),
    Key("git", "retry_attempts", int, 3, "retries of a commit that met a lock or a race",
        minimum=0, maximum=100),
    Key("git", "retry_backoff", float, 1, "back-off base for commit retries (n x base)",
        minimum=0.01, maximum=600, unit="s"),
    Key("git", "pull_strategy", str, "rebase", "when a push is rejected: replay local commits "
        "on the remote's, or merge", choices=("rebase", "merge")),
    Key("git", "push_backoff_max", float, 300, "cap of the push retry back-off",
        minimum=1, maximum=86400, unit="s"),
    Key("git", "stale_lock_age", float, 60, "an index.lock older than this with no git "
        "process alive is reported", minimum=1, maximum=86400, unit="s"),
    Key("git", "remove_stale_locks", bool, False, "remove such a stale index.lock"),
    # [health]
    Key("health", "min_free_mb", float, 100, "commits pause below this much free disk",
        minimum=0, maximum=10_000_000, unit="MB"),
    Key("health", "interval", float, 2, "seconds between health checks (free disk, silent "
        "actors; git operations and restarts are seen at once); while the verdict stays the "
        "same, checks and publishing stretch to ten intervals apart",
        attr="health_interval", minimum=0.1, maximum=3600, unit="s"),
    Key("health", "fsck_interval", float, 3600, "seconds between git fsck "
        "--connectivity-only runs; 0: never", minimum=0, maximum=604800, unit="s"),
    Key("health", "autonomous_restart_limit", int, 5, "more autonomous process starts than "
        "this within the window is reported as a restart loop", minimum=0, maximum=10000),
    Key("health", "autonomous_restart_window", float, 300, "...window", minimum=1,
        maximum=86400, unit="s"),
    # [watcher]
    Key("watcher", "reconcile_interval", float, 60, "seconds between re-reads of git status; "
        "0: only at start and after restarts", minimum=0, maximum=86400, unit="s"),
    Key("watcher", "modify_interval", float, 1, "a file written but never closed is "
        "reported this often", minimum=0.05, maximum=3600, unit="s"),
    # [workers]
    # One worker a layer keeps up with an agent's storm on 2 cores (the router sends a path
    # once, however often it is written); each more costs about 10 MB.
    Key("workers", "l2", int, 1, "process-layer workers under gitsieve run (each more: "
        "about 10 MB, worth it with cores to spare)", attr="l2_workers", minimum=1, maximum=16),
    Key("workers", "l3", int, 1, "content-layer workers under gitsieve run (each more: "
        "about 10 MB, worth it with cores to spare)", attr="l3_workers", minimum=1, maximum=16),
    Key("workers", "stage_window", int, 128, "changes one layer worker may hold; the rest "
        "wait in the router, where a person's change goes first and a path waits once",
        minimum=1, maximum=100_000),
    # [runtime]
    Key("runtime", "dir", str, "", "runtime directory (0700: sockets, lock, logs); empty: "
        ".git/gitsieve", attr="runtime_dir_setting"),
    Key("runtime", "heartbeat_interval", float, 1, "seconds between heartbeats",
        minimum=0.1, maximum=60, unit="s"),
    Key("runtime", "metrics_interval", float, 10, "seconds between metrics file writes; "
        "0: never", minimum=0, maximum=86400, unit="s"),
    Key("runtime", "log_level", str, "INFO", "log level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    # [loop]
    Key("loop", "after", int, 3, "a path whose changes (writer not known to be you) come "
        "right after gitsieve's commits this many times in a row, and at no other time, is "
        "held as a feedback loop until you write it, it changes at a time no commit explains, "
        "or `gitsieve learned --forget` it; the "
        "last one follows a probe of a few seconds without commits; 0: never (1 acts as 2)",
        attr="loop_after", minimum=0, maximum=100),
    Key("loop", "window", float, 1.5, "...right after: within this many seconds of the commit",
        attr="loop_window", minimum=0.1, maximum=60, unit="s"),
    # [guard]
    Key("guard", "secrets", bool, True, "hold a path whose content or name holds a secret "
        "(tokens, keys, passwords, .env, id_rsa, ...), and stop a push of commits holding "
        "one", attr="guard_secrets"),
    Key("guard", "max_new_file_mb", float, 10, "a new file above this size, or a tracked "
        "file grown past it, is held (store it with git-lfs); 0: no limit", minimum=0,
        maximum=1_000_000, unit="MiB"),
    Key("guard", "allowlist_file", str, ".gitsieve-allow", "released fingerprints, paths "
        "(path:GLOB) and rules (rule:ID [GLOB]), one a line, relative to the workspace; "
        "empty: none"),
    Key("guard", "inline_allow", bool, True, "a `gitsieve:allow` comment on a finding's line "
        "releases it"),
)

PROFILES = ("default", "conservative")
SECTIONS = tuple(dict.fromkeys(key.section for key in KEYS))
BY_NAME = {(key.section, key.name): key for key in KEYS}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_toml(profile: str | None = None, chosen: dict | None = None) -> str:
    """The commented config ``gitsieve init`` writes: every key at its default, or at the
    value ``chosen`` gives for its attribute (what suits this workspace)."""
    chosen = chosen or {}
    name = profile or "default"
    lines = [f"# gitsieve configuration (TOML), profile {name!r}.  Every key is optional;",
             "# shown are the defaults of this profile, and the branch checked out.",
             "# `gitsieve init --help` lists profiles.",
             "# Reference: the README's configuration table.", ""]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key in (k for k in KEYS if k.section == section):
            extra = f" ({key.range_text()})" if key.range_text() else ""
            lines.append(f"# {key.doc}{extra}")
            value = chosen.get(key.attribute, key.default_in(profile))
            lines.append(f"{key.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def render_markdown() -> str:
    """The README's configuration table."""
    rows = ["| key | default | range | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        default = _toml_value(key.default).replace("|", "\\|")
        conservative = key.profiles.get("conservative")
        if conservative is not None:
            default += f" (conservative: {_toml_value(conservative)})".replace("|", "\\|")
        doc = key.doc.replace("|", "\\|")
        rows.append(f"| `[{key.section}] {key.name}` | `{default}` | {key.range_text()} | "
                    f"{doc} |")
    return "\n".join(rows)
