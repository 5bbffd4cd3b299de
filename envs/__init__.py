"""Gymnasium-style multi-turn tool environments.

`import envs` registers the built-in environments, then those of installed plugins
(entry-point group `toolgym.envs`) and of YAML files listed in `TOOLGYM_ENVS`.
`EpisodeRecord` is what an episode did (`ToolEnv.record`), typed; Gymnasium's `info` is its
`as_info()`.
"""

from envs.record import CallRecord, EpisodeRecord
from envs.registry import (
    list_envs,
    load_plugins,
    load_yaml_from_env,
    register_builtin,
    register_yaml,
)

register_builtin()
load_plugins()
load_yaml_from_env()

__all__ = ["CallRecord", "EpisodeRecord", "list_envs", "register_yaml"]
