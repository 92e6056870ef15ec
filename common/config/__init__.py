"""The configuration: one declaration per key drives loading, init and docs."""
from gitsieve.common.config.loader import (  # noqa: F401
                                           ACTIONS,
                                           CONFIG_NAME,
                                           Config,
                                           ConfigError,
                                           DebounceRule,
                                           Endpoints,
                                           default_config_path,
                                           load,
                                           prepare_runtime_dir,
)
