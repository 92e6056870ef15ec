"""Loading the configuration: TOML (stdlib ``tomllib``) checked against :mod:`.schema`.

Every error is a :class:`ConfigError` carrying file, line and reason, so CLIs print one
clear line.  The file must be a regular file of at most ``MAX_CONFIG_BYTES`` (a FIFO would
hang the reader, a huge file would take seconds to parse).
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gitsieve.common.config import bounded_regex
from gitsieve.common.config.bounded_regex import BoundedPattern, RegexTimeout
from gitsieve.common.config.endpoints import Endpoints, ipc_dir_for
from gitsieve.common.config.schema import (
    DEBOUNCE_RULES,
    KEYS,
    LIST_OF_INT,
    LIST_OF_STR,
    SECTIONS,
    Key,
)
from gitsieve.common.git import gateway
from gitsieve.common.git.head import checked_out_branch
from gitsieve.common.protocol.states import Action

CONFIG_NAME = ".gitsieve.toml"
MAX_CONFIG_BYTES = 1024 * 1024
ACTIONS = tuple(Action)


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is a complete one-line message."""

    def __init__(self, source: str, reason: str, line: int | None = None):
        self.source, self.reason, self.line = source, reason, line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class DebounceRule:
    pattern: BoundedPattern
    seconds: float


class Config:
    """Every setting (one attribute per :data:`schema.KEYS` entry) and every path and
    socket endpoint derived from them.  Read-only once loaded."""

    def __init__(self, workspace: Path, git_dir: Path, source: str, values: dict,
                 configured: frozenset[str] = frozenset()):
        setattr_ = object.__setattr__
        setattr_(self, "workspace", workspace)
        setattr_(self, "git_dir", git_dir)
        setattr_(self, "source", source)
        setattr_(self, "configured", configured)  # "section.name" of each key the file sets
        for name, value in values.items():
            setattr_(self, name, value)
        runtime = Path(self.runtime_dir_setting or git_dir / "gitsieve")
        setattr_(self, "runtime_dir", runtime if runtime.is_absolute() else workspace / runtime)
        patterns = Path(self.patterns_file)
        setattr_(self, "patterns_file", patterns if patterns.is_absolute()
                 else workspace / patterns)
        setattr_(self, "endpoints", Endpoints(ipc_dir_for(self.runtime_dir)))

    def __setattr__(self, name, value):
        raise AttributeError("the configuration is read-only")

    def __repr__(self) -> str:
        return f"Config(workspace={self.workspace!s}, source={self.source!s})"

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
        if action == Action.ALLOW:
            return self.debounce_allow
        for rule in self.debounce_rules:
            try:
                if rule.pattern.fullmatch(path):
                    return rule.seconds
            except RegexTimeout:  # undecided: the default quiet period (never a drop)
                break
        return self.debounce_default


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


def default_config_path(workspace: Path) -> Path:
    return workspace / CONFIG_NAME


def read_small_file(path: Path, source: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """A regular file's text, refusing FIFOs and devices (they could block) and files over
    ``limit`` bytes; ConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(source, f"cannot read config: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory cannot even be opened as a file object
        os.close(fd)
        raise ConfigError(source, "not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            raise ConfigError(source, f"larger than {limit} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(source, f"larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "not UTF-8 text") from None


class _Checker:
    """Checks one file's values against the declarations."""

    def __init__(self, source: str, text: str):
        self.source, self.text = source, text

    def fail(self, key: Key, reason: str):
        raise ConfigError(self.source, f"[{key.section}].{key.name} {reason}",
                          _key_line(self.text, key.section, key.name))

    def value(self, key: Key, value):
        kind = key.kind
        if kind is bool:
            if not isinstance(value, bool):
                self.fail(key, "must be true or false")
        elif kind in (int, float):
            allowed = (int,) if kind is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                self.fail(key, "must be " + ("an integer" if kind is int else "a number"))
            if value != value or value in (float("inf"), float("-inf")):
                self.fail(key, "must be a finite number")
            if key.minimum is not None and value < key.minimum or (
                    key.maximum is not None and value > key.maximum):
                self.fail(key, f"must be within {key.range_text()}, got {value:g}")
            value = float(value) if kind is float else value
        elif kind is str:
            if not isinstance(value, str):
                self.fail(key, "must be a string")
            if key.choices:
                folded = {choice.lower(): choice for choice in key.choices}
                if value.lower() not in folded:
                    self.fail(key, f"must be one of {key.range_text()}")
                value = folded[value.lower()]
        elif kind == LIST_OF_STR:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.fail(key, "must be a list of strings")
            value = tuple(value)
        elif kind == LIST_OF_INT:
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                self.fail(key, "must be a list of integers")
            value = tuple(value)
        elif kind == DEBOUNCE_RULES:
            value = self.debounce_rules(key, value)
        if key.regex:
            for pattern in value:
                self.regex(key, pattern)
        return key.convert(value) if key.convert else value

    def regex(self, key: Key, pattern: str, consequence: str = "") -> BoundedPattern:
        """The pattern compiled by the engine that will run it (bounded in time)."""
        try:
            return BoundedPattern(pattern, f"[{key.section}].{key.name} {pattern!r}",
                                  consequence)
        except bounded_regex.error as exc:
            self.fail(key, f"has a bad regex {pattern!r}: {exc}")

    def debounce_rules(self, key: Key, rules) -> tuple[DebounceRule, ...]:
        shape = "entries must be { pattern = \"REGEX\", seconds = N } (N within 0-86400)"
        if not isinstance(rules, list):
            self.fail(key, shape)
        made = []
        for rule in rules:
            if (not isinstance(rule, dict) or set(rule) != {"pattern", "seconds"}
                    or not isinstance(rule["pattern"], str)
                    or isinstance(rule["seconds"], bool)
                    or not isinstance(rule["seconds"], (int, float))
                    or not 0 <= rule["seconds"] <= 86400):
                self.fail(key, shape)
            made.append(DebounceRule(self.regex(key, rule["pattern"], "such paths get the "
                                                "[debounce] default quiet period"),
                                     float(rule["seconds"])))
        return tuple(made)


def load(workspace: str | os.PathLike | None = None,
         config_file: str | os.PathLike | None = None) -> Config:
    """The Config of ``workspace`` from ``config_file`` (or the workspace default).

    A missing default file means built-in defaults; an explicitly named file must exist.
    """
    try:
        root, git_dir = gateway.discover(Path(workspace or os.getcwd()))
    except gateway.NotARepository as exc:
        raise ConfigError(str(workspace or os.getcwd()), str(exc)) from None
    explicit = config_file is not None
    path = Path(config_file) if explicit else default_config_path(root)
    source = str(path)
    data: dict = {}
    text = ""
    if explicit or os.path.lexists(path):
        text = read_small_file(path, source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, f"invalid TOML: {exc}", _toml_error_line(str(exc))) from None
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(source, f"unknown section [{section}]", _key_line(text, "", section))
        if not isinstance(body, dict):
            raise ConfigError(source, f"[{section}] must be a table")
        for name in body:
            if not any(key.section == section and key.name == name for key in KEYS):
                raise ConfigError(source, f"unknown key {name!r} in [{section}]",
                                  _key_line(text, section, name))
    checker = _Checker(source, text)
    values = {key.attribute: checker.value(key, data.get(key.section, {}).get(key.name,
                                                                             key.default))
              for key in KEYS}
    values["default_action"] = Action(values["default_action"])
    if "branch" not in data.get("git", {}):
        values["branch"] = branch_to_sync(root, git_dir, values["branch"])
    configured = frozenset(f"{section}.{name}" for section, body in data.items()
                           for name in body)
    return Config(root, git_dir, source, values, configured)


def start_warnings(config: Config) -> list[str]:
    """One line for each file the configuration names that is not there, for ``gitsieve
    run`` to say as it starts.  Not errors: each is read once it appears (and the
    defaults' own rules file is optional)."""
    warnings = []
    if "filter.patterns_file" in config.configured and not os.path.lexists(
            config.patterns_file):
        warnings.append(f"{config.source}: [filter] patterns_file: {config.patterns_file} does "
                        f"not exist: no rules are in force, every path gets [filter] default "
                        f"({config.default_action}), until it is created")
    return warnings


def branch_to_sync(root: Path, git_dir: Path, default: str) -> str:
    """The branch gitsieve commits on when the config names none: the default where the
    repository has it, else ``master`` where it has that (``git init`` still makes it, and
    holding every change of such a repository is what nobody wants), else any branch.
    It depends on the repository's branches only, not on which one is checked out, so
    every command that loads the config agrees with the running actors."""
    try:
        if checked_out_branch(git_dir) == default:
            return default  # the usual case, without a git process
    except OSError:  # HEAD mid-rewrite: ask git below
        pass
    git = gateway.Git(root)
    for candidate in (default, "master"):
        if git.result("rev-parse", "--verify", "--quiet", f"refs/heads/{candidate}")[0] == 0:
            return candidate
    return ""
