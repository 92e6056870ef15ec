"""The configuration: one declaration per key (:mod:`.schema`) drives loading (:mod:`.loader`),
``gitsieve init`` and the README's table; :mod:`.runtime` guards the runtime directory."""
from gitsieve.common.config.endpoints import Endpoints  # noqa: F401
from gitsieve.common.config.loader import (  # noqa: F401
    ACTIONS,
    CONFIG_NAME,
    Config,
    ConfigError,
    DebounceRule,
    default_config_path,
    load,
    start_warnings,
)
from gitsieve.common.config.runtime import RuntimeDirError, prepare_runtime_dir  # noqa: F401


def add_location_arguments(parser) -> None:
    """``--workspace`` and ``--config``, the same for every command that loads a config
    (they may come before or after a subcommand: the default is suppressed, not None)."""
    import argparse
    parser.add_argument("--workspace", default=argparse.SUPPRESS,
                        help="the git work tree (default: $GITSIEVE_WORKSPACE, else the "
                             "current directory)")
    parser.add_argument("--config", default=argparse.SUPPRESS,
                        help="TOML config (default: $GITSIEVE_CONFIG, else "
                             "WORKSPACE/.gitsieve.toml)")


def workspace_argument(args) -> str:
    """The directory ``--workspace`` names, else $GITSIEVE_WORKSPACE, else the current one."""
    import os
    return (getattr(args, "workspace", None) or os.environ.get("GITSIEVE_WORKSPACE")
            or os.getcwd())


def load_from_arguments(args) -> Config:
    """The Config ``--workspace``/``--config`` (or the environment, or the current
    directory) name; ConfigError when it cannot be loaded."""
    import os
    config_file = getattr(args, "config", None) or os.environ.get("GITSIEVE_CONFIG") or None
    return load(workspace_argument(args), config_file)
