"""Build the configured tools by kind.

Each kind's module exposes `from_config(name, ToolConfig, ToolContext) -> Tool`. Modules are imported only for
the kinds a config uses, so, say, a config without the python tool needs no sandbox installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestra_rl.config import TOOL_KINDS, ToolsConfig
from orchestra_rl.tools.base import Tool, ToolContext

KIND_MODULES = {kind: f"orchestra_rl.tools.{kind}" for kind in TOOL_KINDS}


def build_tools(tools_cfg: ToolsConfig, ctx: ToolContext) -> dict[str, Tool]:
    """Every enabled tool of the (validated) config, by name."""
    return {name: importlib.import_module(KIND_MODULES[cfg.kind]).from_config(name, cfg, ctx)
            for name, cfg in tools_cfg.tools.items() if cfg.enabled}


def tool_schemas(tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """The OpenAI function schemas of `tools`, in config order (the order the orchestrator's prompt lists them)."""
    return [tool.schema() for tool in tools.values()]
