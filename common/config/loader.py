"""The one configuration object: every setting and every socket endpoint.

Loaded from TOML (stdlib ``tomllib``).  Every error is a :class:`ConfigError`
carrying file, line and reason, so CLIs can print one clear line.
"""
from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gitsieve.common.git import gateway as gitutil

ACTIONS = ("BLOCK", "ALLOW", "ANALYZE")
CONFIG_NAME = ".gitsieve.toml"
# sun_path is 108 bytes on Linux; keep room for the socket file name.
_MAX_IPC_DIR = 80


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is a complete one-line message."""

    def __init__(self, source: str, reason: str, line: int | None = None):
        self.source, self.reason, self.line = source, reason, line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class DebounceRule:
    pattern: re.Pattern
    seconds: float


@dataclass(frozen=True)
class Endpoints:
    """Every ZeroMQ address, derived from the runtime directory."""

    ipc_dir: str

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.ipc_dir}/{name}.sock"

    def stage_in(self, stage: str) -> str:
        """Producers PUSH here; the router's PULL binds it."""
        return self._ipc(f"{stage}-in")

    def stage_out(self, stage: str) -> str:
        """The router's PUSH binds it; the stage's workers PULL from it."""
        return self._ipc(f"{stage}-out")

    @property
    def decisions(self) -> str:
        return self._ipc("decisions")

    @property
    def batches(self) -> str:
        return self._ipc("batches")

    @property
    def commits(self) -> str:
        return self._ipc("commits")

    @property
    def health(self) -> str:
        return self._ipc("health")

    @property
    def heartbeat(self) -> str:
        return self._ipc("heartbeat")

    @property
    def feed(self) -> str:
        """Live decision stream (``actorctl tail``): PUB bound by the debouncer."""
        return self._ipc("feed")

    def control(self, actor_id: str) -> str:
        return self._ipc(f"ctl-{actor_id}")

    def control_dir_glob(self) -> str:
        return os.path.join(self.ipc_dir, "ctl-*.sock")


@dataclass(frozen=True)
class Config:
    workspace: Path
    git_dir: Path
    source: str
    # [filter]
    patterns_file: Path
    default_action: str
    autonomous_processes: tuple[str, ...]
    volatile_keys: tuple[str, ...]
    process_cache_ttl: float
    attribution: str
    autonomous_uids: tuple[int, ...]
    autonomous_cgroups: tuple[str, ...]
    autonomous_units: tuple[str, ...]
    text_volatile_patterns: tuple[str, ...]
    max_analyze_bytes: int
    learning: bool
    learn_after: int
    learn_window: float
    # [debounce]
    debounce_allow: float
    debounce_default: float
    debounce_rules: tuple[DebounceRule, ...]
    debounce_max_wait: float
    # [limits]
    max_commits_per_hour: int
    max_commits_per_day: int
    cooldown_seconds: float
    runaway_commits_per_hour: int
    # [git]
    remote: str
    branch: str
    retry_attempts: int
    retry_backoff: float
    pull_strategy: str
    push_backoff_max: float
    stale_lock_age: float
    remove_stale_locks: bool
    # [health]
    min_free_mb: float
    health_interval: float
    fsck_interval: float
    autonomous_restart_limit: int
    autonomous_restart_window: float
    # [watcher]
    reconcile_interval: float
    modify_interval: float
    # [workers]
    l2_workers: int
    l3_workers: int
    # changes a layer worker may hold (taken from the router, not yet passed on)
    stage_window: int
    # [runtime]
    runtime_dir: Path
    heartbeat_interval: float
    metrics_interval: float
    log_level: str
    endpoints: Endpoints = field(repr=False)

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "gitsieve.lock"

    @property
    def log_dir(self) -> Path:
        return self.runtime_dir / "logs"

    @property
    def learned_file(self) -> Path:
        return self.runtime_dir / "learned.json"

    @property
    def metrics_file(self) -> Path:
        return self.runtime_dir / "performance-metrics.json"

    def debounce_for(self, path: str, action: str) -> float:
        if action == "ALLOW":
            return self.debounce_allow
        for rule in self.debounce_rules:
            if rule.pattern.fullmatch(path):
                return rule.seconds
        return self.debounce_default


# (section, key) -> (type(s), default).  Defaults are the seed's figures.
_SCHEMA: dict[tuple[str, str], tuple[tuple[type, ...], object]] = {
    ("filter", "patterns_file"): ((str,), ".claude/sync-filter/system-patterns.conf"),
    ("filter", "default"): ((str,), "ANALYZE"),
    ("filter", "autonomous_processes"): ((list,), ["claude-autonomous", "claude-.*-monitor"]),
    ("filter", "volatile_keys"): ((list,), ["last_update", "timestamp", "session_id"]),
    ("filter", "process_cache_ttl"): ((int, float), 30),
    # "auto": fanotify + proc connector when permitted, else the psutil techniques.
    ("filter", "attribution"): ((str,), "auto"),
    ("filter", "autonomous_uids"): ((list,), []),
    ("filter", "autonomous_cgroups"): ((list,), []),   # regexes on /proc/PID/cgroup lines
    ("filter", "autonomous_units"): ((list,), []),     # systemd unit names, e.g. "agent.service"
    # Tokens that make a text change "timestamp-only" when they are all that differ.
    ("filter", "text_volatile_patterns"): ((list,), [
        r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?",
        r"\d{2}:\d{2}:\d{2}(\.\d+)?",
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        r"\b1[5-9]\d{8}(\.\d+)?\b",
    ]),
    ("filter", "max_analyze_bytes"): ((int,), 5 * 1024 * 1024),
    ("filter", "learning"): ((bool,), True),
    ("filter", "learn_after"): ((int,), 5),            # K system-only changes...
    ("filter", "learn_window_minutes"): ((int, float), 10),  # ...within M minutes
    ("debounce", "allow"): ((int, float), 2),
    ("debounce", "default"): ((int, float), 30),
    ("debounce", "rules"): ((list,), [
        {"pattern": r"\.claude/autonomous/.*", "seconds": 300},
        {"pattern": r".*\.(sh|py|js|ts)", "seconds": 5},
    ]),
    ("debounce", "max_wait"): ((int, float), 10),
    ("limits", "max_commits_per_hour"): ((int,), 10),
    ("limits", "max_commits_per_day"): ((int,), 50),
    ("limits", "cooldown_seconds"): ((int, float), 300),
    ("limits", "runaway_commits_per_hour"): ((int,), 30),  # one path; 0: no cap
    ("git", "remote"): ((str,), "origin"),
    ("git", "branch"): ((str,), "main"),
    ("git", "retry_attempts"): ((int,), 3),
    ("git", "retry_backoff"): ((int, float), 2),
    ("git", "pull_strategy"): ((str,), "rebase"),       # when a push is rejected: rebase|merge
    ("git", "push_backoff_max"): ((int, float), 300),
    ("git", "stale_lock_age"): ((int, float), 60),
    ("git", "remove_stale_locks"): ((bool,), False),
    ("health", "min_free_mb"): ((int, float), 100),
    ("health", "interval"): ((int, float), 2),
    ("health", "fsck_interval"): ((int, float), 3600),  # 0: never
    ("health", "autonomous_restart_limit"): ((int,), 5),
    ("health", "autonomous_restart_window"): ((int, float), 300),
    ("watcher", "reconcile_interval"): ((int, float), 60),
    ("watcher", "modify_interval"): ((int, float), 1),
    ("workers", "l2"): ((int,), 2),
    ("workers", "l3"): ((int,), 2),
    ("workers", "stage_window"): ((int,), 1000),
    ("runtime", "dir"): ((str,), ""),
    ("runtime", "heartbeat_interval"): ((int, float), 1),
    ("runtime", "metrics_interval"): ((int, float), 10),
    ("runtime", "log_level"): ((str,), "INFO"),
}


def _key_line(text: str, section: str, key: str) -> int | None:
    """Best-effort line number of ``key`` inside ``[section]`` for error messages."""
    current = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[] ")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", line):
            return number
    return None


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"\(at line (\d+)", message)
    return int(match.group(1)) if match else None


def _compile(pattern: str, source: str, line: int | None, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(source, f"bad regex in {what} {pattern!r}: {exc}", line) from None


def _ipc_dir_for(runtime_dir: Path) -> str:
    """A short directory for ipc sockets: the runtime dir, or a 0700 symlink to it."""
    text = str(runtime_dir)
    if len(text) <= _MAX_IPC_DIR:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    return f"/tmp/gitsieve-{os.getuid()}-{digest}"


def default_config_path(workspace: Path) -> Path:
    return workspace / CONFIG_NAME


def load(workspace: str | os.PathLike | None = None,
         config_file: str | os.PathLike | None = None) -> Config:
    """Build the Config for ``workspace`` from ``config_file`` (or the workspace default).

    A missing default file means built-in defaults; an explicitly named file must exist.
    """
    try:
        root, git_dir = gitutil.discover(Path(workspace or os.getcwd()))
    except gitutil.NotARepository as exc:
        raise ConfigError(str(workspace or os.getcwd()), str(exc)) from None
    explicit = config_file is not None
    path = Path(config_file) if explicit else default_config_path(root)
    source = str(path)
    data: dict = {}
    text = ""
    if path.exists() or explicit:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(source, f"cannot read config: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, f"invalid TOML: {exc}", _toml_error_line(str(exc))) from None

    known_sections = {section for section, _ in _SCHEMA}
    for section, body in data.items():
        if section not in known_sections:
            raise ConfigError(source, f"unknown section [{section}]", _key_line(text, "", section))
        if not isinstance(body, dict):
            raise ConfigError(source, f"[{section}] must be a table")
        for key in body:
            if (section, key) not in _SCHEMA:
                raise ConfigError(source, f"unknown key {key!r} in [{section}]",
                                  _key_line(text, section, key))

    values: dict[tuple[str, str], object] = {}
    for (section, key), (types, default) in _SCHEMA.items():
        value = data.get(section, {}).get(key, default)
        line = _key_line(text, section, key)
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(source, f"[{section}].{key} must be {names}, got {value!r}", line)
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(source, f"[{section}].{key} must not be negative", line)
        values[(section, key)] = value

    def get(section: str, key: str):
        return values[(section, key)]

    def str_list(section: str, key: str) -> tuple[str, ...]:
        items = get(section, key)
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(source, f"[{section}].{key} must be a list of strings",
                              _key_line(text, section, key))
        return tuple(items)

    default_action = str(get("filter", "default")).upper()
    if default_action not in ACTIONS:
        raise ConfigError(source, f"[filter].default must be one of {', '.join(ACTIONS)}",
                          _key_line(text, "filter", "default"))
    autonomous = str_list("filter", "autonomous_processes")
    for key in ("autonomous_processes", "autonomous_cgroups", "text_volatile_patterns"):
        for pattern in str_list("filter", key):
            _compile(pattern, source, _key_line(text, "filter", key), f"[filter].{key}")
    uids = get("filter", "autonomous_uids")
    if not all(isinstance(uid, int) and not isinstance(uid, bool) for uid in uids):
        raise ConfigError(source, "[filter].autonomous_uids must be a list of integers",
                          _key_line(text, "filter", "autonomous_uids"))
    attribution = str(get("filter", "attribution")).lower()
    if attribution not in ("auto", "fanotify", "psutil"):
        raise ConfigError(source, "[filter].attribution must be auto, fanotify or psutil",
                          _key_line(text, "filter", "attribution"))
    pull_strategy = str(get("git", "pull_strategy")).lower()
    if pull_strategy not in ("rebase", "merge"):
        raise ConfigError(source, "[git].pull_strategy must be rebase or merge",
                          _key_line(text, "git", "pull_strategy"))

    rules = []
    rules_line = _key_line(text, "debounce", "rules")
    for rule in get("debounce", "rules"):
        if (not isinstance(rule, dict) or set(rule) != {"pattern", "seconds"}
                or not isinstance(rule["pattern"], str)
                or isinstance(rule["seconds"], bool)
                or not isinstance(rule["seconds"], (int, float)) or rule["seconds"] < 0):
            raise ConfigError(source, "each [debounce].rules entry must be "
                              "{ pattern = \"REGEX\", seconds = N }", rules_line)
        rules.append(DebounceRule(_compile(rule["pattern"], source, rules_line,
                                           "[debounce].rules"), float(rule["seconds"])))

    level = str(get("runtime", "log_level")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(source, "[runtime].log_level must be DEBUG, INFO, WARNING or ERROR",
                          _key_line(text, "runtime", "log_level"))
    for key in ("l2", "l3", "stage_window"):
        if get("workers", key) < 1:
            raise ConfigError(source, f"[workers].{key} must be at least 1",
                              _key_line(text, "workers", key))

    runtime_dir = Path(get("runtime", "dir") or git_dir / "gitsieve")
    if not runtime_dir.is_absolute():
        runtime_dir = root / runtime_dir
    patterns_file = Path(get("filter", "patterns_file"))
    if not patterns_file.is_absolute():
        patterns_file = root / patterns_file

    return Config(
        workspace=root, git_dir=git_dir, source=source,
        patterns_file=patterns_file, default_action=default_action,
        autonomous_processes=autonomous, volatile_keys=str_list("filter", "volatile_keys"),
        process_cache_ttl=float(get("filter", "process_cache_ttl")),
        attribution=attribution, autonomous_uids=tuple(uids),
        autonomous_cgroups=str_list("filter", "autonomous_cgroups"),
        autonomous_units=str_list("filter", "autonomous_units"),
        text_volatile_patterns=str_list("filter", "text_volatile_patterns"),
        max_analyze_bytes=get("filter", "max_analyze_bytes"),
        learning=get("filter", "learning"), learn_after=get("filter", "learn_after"),
        learn_window=float(get("filter", "learn_window_minutes")) * 60,
        debounce_allow=float(get("debounce", "allow")),
        debounce_default=float(get("debounce", "default")),
        debounce_rules=tuple(rules),
        debounce_max_wait=float(get("debounce", "max_wait")),
        max_commits_per_hour=get("limits", "max_commits_per_hour"),
        max_commits_per_day=get("limits", "max_commits_per_day"),
        cooldown_seconds=float(get("limits", "cooldown_seconds")),
        runaway_commits_per_hour=get("limits", "runaway_commits_per_hour"),
        remote=get("git", "remote"), branch=get("git", "branch"),
        retry_attempts=get("git", "retry_attempts"),
        retry_backoff=float(get("git", "retry_backoff")),
        pull_strategy=pull_strategy,
        push_backoff_max=float(get("git", "push_backoff_max")),
        stale_lock_age=float(get("git", "stale_lock_age")),
        remove_stale_locks=get("git", "remove_stale_locks"),
        min_free_mb=float(get("health", "min_free_mb")),
        health_interval=float(get("health", "interval")),
        fsck_interval=float(get("health", "fsck_interval")),
        autonomous_restart_limit=get("health", "autonomous_restart_limit"),
        autonomous_restart_window=float(get("health", "autonomous_restart_window")),
        reconcile_interval=float(get("watcher", "reconcile_interval")),
        modify_interval=float(get("watcher", "modify_interval")),
        l2_workers=get("workers", "l2"), l3_workers=get("workers", "l3"),
        stage_window=get("workers", "stage_window"),
        runtime_dir=runtime_dir,
        heartbeat_interval=float(get("runtime", "heartbeat_interval")),
        metrics_interval=float(get("runtime", "metrics_interval")),
        log_level=level,
        endpoints=Endpoints(_ipc_dir_for(runtime_dir)),
    )


def prepare_runtime_dir(config: Config) -> None:
    """Create the 0700 runtime directory (and its short ipc alias if one is needed)."""
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.runtime_dir, 0o700)
    config.log_dir.mkdir(exist_ok=True)
    ipc_dir = config.endpoints.ipc_dir
    if ipc_dir != str(config.runtime_dir):
        try:
            os.symlink(config.runtime_dir, ipc_dir)
        except FileExistsError:
            if os.path.realpath(ipc_dir) != str(config.runtime_dir.resolve()):
                os.unlink(ipc_dir)
                os.symlink(config.runtime_dir, ipc_dir)
