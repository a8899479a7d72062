"""Build the configured tools by kind.

Each kind's module exposes `from_config(name, ToolConfig, ToolContext) -> Tool`: one entry, one tool of that name.
A kind whose one entry contributes several tools (mcp: every tool of a server) exposes instead
`tools_from_config(name, ToolConfig, ToolContext) -> dict[str, Tool]`, by the names the policy sees; a kind whose
tools take fixed parameters exposes its class as TOOL_CLASS, so its schema is known from the config. Modules are
imported only for the kinds a config uses, so, say, a config without the python tool needs no sandbox installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
from typing import Any

from orchestra_rl.config import TOOL_KINDS, ConfigError, ToolConfig, ToolsConfig
from orchestra_rl.tools.base import Tool, ToolContext, function_schema

KIND_MODULES = {kind: f"orchestra_rl.tools.{kind}" for kind in TOOL_KINDS}


def entry_tools(name: str, cfg: ToolConfig, ctx: ToolContext) -> dict[str, Tool]:
    """The tools the entry tools.tools.<name> contributes, by name."""
    module = importlib.import_module(KIND_MODULES[cfg.kind])
    if hasattr(module, "tools_from_config"):  # one entry, several tools (mcp)
        return module.tools_from_config(name, cfg, ctx)
    return {name: module.from_config(name, cfg, ctx)}


def build_tools(tools_cfg: ToolsConfig, ctx: ToolContext) -> dict[str, Tool]:
    """Every tool of the (validated) config's enabled entries, by name, in config order. Two tools of one name are
    a ConfigError. On any failure, the tools built so far are closed first (their MCP servers stopped)."""
    tools: dict[str, Tool] = {}
    built: list[Tool] = []  # every tool built, to close on a failure
    try:
        for name, cfg in tools_cfg.tools.items():
            if not cfg.enabled:
                continue
            contributed = entry_tools(name, cfg, ctx)
            built += contributed.values()
            for tool_name, tool in contributed.items():
                if tool_name in tools:
                    raise ConfigError(f"tools.tools.{name}", f"contributes a tool named {tool_name!r}, as does "
                                                             f"tools.tools.{tools[tool_name].entry}: tool names must "
                                                             "be unique (an mcp entry can set a prefix, or include "
                                                             "fewer tools)")
                tools[tool_name] = tool
    except BaseException:
        close_now(built)
        raise
    return tools


def close_now(tools: list[Tool]) -> None:
    """Close `tools` from synchronous code, even inside a running event loop (on a thread of its own)."""
    async def close_all() -> None:
        await asyncio.gather(*(tool.close() for tool in tools), return_exceptions=True)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, close_all()).result()


def tool_schemas(tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """The OpenAI function schemas of `tools`, in config order (the order the orchestrator's prompt lists them)."""
    return [tool.schema() for tool in tools.values()]


def config_schemas(tools_cfg: ToolsConfig) -> list[dict[str, Any]]:
    """The schemas the enabled entries' tools will show, from the config alone (no sandbox, index, client or server
    started), in config order; entries whose tools only a server can list (mcp) are left out."""
    schemas = []
    for name, cfg in tools_cfg.tools.items():
        if not cfg.enabled:
            continue
        tool_class = getattr(importlib.import_module(KIND_MODULES[cfg.kind]), "TOOL_CLASS", None)
        if tool_class is not None:
            schemas.append(function_schema(name, cfg.description or tool_class.default_description,
                                           tool_class.parameters))
    return schemas
