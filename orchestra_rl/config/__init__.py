"""Typed configuration: dataclasses (schema.py) registered with Hydra's ConfigStore, composed from conf/ and
validated (validate.py) once before any actor starts.

Hydra/OmegaConf already reject unknown keys and wrong types against the schema; `validate` adds the checks a
schema cannot express. Every error is reported as one line: `config error: <key>: <problem>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from orchestra_rl.config.env import (
    BENCHMARK_LAYOUTS, ENV_KINDS, TAU2_DOMAINS, USER_KINDS, EndpointConfig, EnvSourceConfig, UserConfig,
)
from orchestra_rl.config.schema import (
    DEFAULT_CACHE, TASK_FAMILIES, TOOL_KINDS, AlgoConfig, BenchConfig, ClusterConfig, Config, DataConfig,
    EngineConfig, EvalConfig, ExpertModelConfig, LearnerConfig, ModelConfig, RewardConfig, RolloutConfig, ServeConfig,
    SFTConfig, SynthConfig, ToolConfig, ToolsConfig, TrainConfig, env_sources, final_tool_names,
)
from orchestra_rl.config.validate import ConfigError, validate

__all__ = [
    "BENCHMARK_LAYOUTS", "CONF_DIR", "DEFAULT_CACHE", "ENV_KINDS", "TASK_FAMILIES", "TAU2_DOMAINS", "TOOL_KINDS", "USER_KINDS",
    "AlgoConfig", "BenchConfig", "ClusterConfig", "Config", "ConfigError", "DataConfig", "EndpointConfig", "EngineConfig",
    "EnvSourceConfig", "EvalConfig", "ExpertModelConfig", "LearnerConfig", "ModelConfig", "RewardConfig",
    "RolloutConfig", "SFTConfig", "ServeConfig", "SynthConfig", "ToolConfig", "ToolsConfig", "TrainConfig", "UserConfig",
    "as_plain", "describe_error", "env_sources", "final_tool_names", "load_config", "register_configs", "to_config",
    "validate",
]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


def to_config(cfg: DictConfig | Config) -> Config:
    """Turn a composed DictConfig into the typed `Config` object and validate it."""
    if isinstance(cfg, Config):
        return validate(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    return validate(OmegaConf.to_object(merged))  # type: ignore[arg-type]


def load_config(overrides: list[str] | None = None, config_name: str = "config") -> Config:
    """Compose conf/config.yaml with Hydra overrides (as on the command line) and validate."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        composed = compose(config_name=config_name, overrides=list(overrides or []))
    return to_config(composed)


def describe_error(exc: BaseException) -> str | None:
    """One line for a configuration error from Hydra, OmegaConf or `validate`; None if `exc` is not one."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen = exc
    while seen is not None:
        if isinstance(seen, ConfigError):
            return f"config error: {seen}"
        if isinstance(seen, OmegaConfBaseException):
            key = getattr(seen, "full_key", None)
            msg = str(getattr(seen, "msg", None) or seen).strip().splitlines()[0]
            return f"config error: {key}: {msg}" if key else f"config error: {msg}"
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    if isinstance(exc, HydraException):
        return "config error: " + " ".join(str(exc).split(" Config search path")[0].split())
    return None


def as_plain(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config object (for reports and actor arguments)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
