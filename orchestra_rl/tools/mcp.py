"""Tools from MCP servers: one `kind: mcp` entry in conf/tools/ contributes every tool its server offers.

A server is a subprocess spoken to over stdio (`command`) or a streamable HTTP endpoint (`url`), through the `mcp`
package's Client. Its tools keep their names (after an optional `prefix`), descriptions and input schemas; each call
costs `price_per_call`.

One session per server, owned by one task of a private event loop on a thread of its own (MCPServerSession):
anyio's cancel scopes must be left in the task that entered them, while the executor (a Ray async actor) serves
every call in a task of its own. Calls cross over with run_coroutine_threadsafe, cancellation included. The session
is opened when the tools are built (their list is part of the prompt), and opened again after the server died.

A call never raises into the agent loop: a tool result marked isError, a protocol error, or a server that cannot be
reached after bounded retries (tools/retry.py) is a ToolResult with `error` set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import logging
import re
import threading
import time
from typing import Any, Awaitable

import anyio
import httpx2
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from orchestra_rl.config import ConfigError, ToolConfig
from orchestra_rl.tools.base import Pricing, Tool, ToolContext, api_key_from_env, cut_reply
from orchestra_rl.tools.retry import CallFailed, Retry
from orchestra_rl.types import ToolResult

log = logging.getLogger(__name__)

# Opening a session: spawning a stdio server (an interpreter, `npx` fetching a package) or the HTTP handshake.
# Separate from timeout_s, which bounds a call; an opening goes on in the background past a call's timeout.
STARTUP_TIMEOUT_S = 60.0
# Closing a session: the stdio client closes the server's stdin, then terminates, then kills it (bounded itself).
CLOSE_TIMEOUT_S = 15.0
# HTTP client timeouts, as the mcp package's own defaults: a response stream may stay open for long.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# What an OpenAI function name may be; an MCP name's other characters (such as '.') become '_'.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio's task groups wrap a transport's failure in one or two)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def session_broken(exc: BaseException) -> bool:
    """The session is gone (the server exited, the connection dropped): the next attempt opens a new one."""
    if isinstance(exc, MCPError):
        return exc.code == mcp_types.CONNECTION_CLOSED
    if isinstance(exc, TimeoutError):  # an OSError, but one slow call says nothing about the session
        return False
    return isinstance(exc, (OSError, httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError,
                            anyio.EndOfStream))


def is_transient(exc: Exception) -> bool:
    """Worth another attempt: a dropped session or connection, a request timeout, an HTTP 429 or 5xx. Not: a command
    that cannot run, a protocol error the server answered, a reply that does not fit the protocol."""
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(exc, MCPError):
        return exc.code in (mcp_types.CONNECTION_CLOSED, mcp_types.REQUEST_TIMEOUT)
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return session_broken(exc)


class SessionClosed(RuntimeError):
    """A call after the session was closed (the executor is shutting down)."""


class MCPServerSession:
    """The client session of one MCP server, on a private event loop (a daemon thread). Its coroutines run on that
    loop; `run(coro)` awaits one from any other loop, and `open_and_list`/`close_now` block the calling thread."""

    def __init__(self, label: str, *, command: list[str] | None = None, env: dict[str, str] | None = None,
                 url: str = "", headers: dict[str, str] | None = None, retry: Retry):
        self.label, self.command, self.env, self.url, self.headers = label, command or [], env or {}, url, headers
        self.retry = retry
        self._opened: asyncio.Future[Client] | None = None  # resolves to the open session's client
        self._stop: asyncio.Event | None = None  # set: the owner task leaves the session
        self._owner: asyncio.Task | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"mcp-{label}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"MCP server {self.label} ({self.url or ' '.join(self.command)})"

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _submit(self, coro: Awaitable[Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def run(self, coro: Awaitable[Any]) -> Any:
        """Await `coro` on the session's loop from the caller's loop; cancelling the caller cancels it there."""
        if self._closed:
            coro.close()
            raise SessionClosed("the session is closed")
        try:
            return await asyncio.wrap_future(self._submit(coro))
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the caller was cancelled
                raise
            raise SessionClosed("the session was closed during the call") from None

    # --- on the session's loop ---

    async def _own(self, opened: asyncio.Future, stop: asyncio.Event) -> None:
        """Enter the session, hand out its client, wait for `stop`, leave it: all in this one task."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    if self.url:
                        http = await stack.enter_async_context(
                            httpx2.AsyncClient(headers=self.headers, timeout=HTTP_TIMEOUT))
                        server: Any = streamable_http_client(self.url, http_client=http)
                    else:
                        server = StdioServerParameters(command=self.command[0], args=self.command[1:], env=self.env)
                    client = await stack.enter_async_context(Client(server, read_timeout_seconds=self.retry.timeout_s))
                if opened.done():  # the opener gave up
                    return
                opened.set_result(client)
                await stop.wait()
        except asyncio.CancelledError:
            opened.cancel()
            raise
        except Exception as exc:
            cause = root_cause(exc)
            if not opened.done():
                opened.set_exception(cause)
                return
            log.warning("%r: the session ended: %s: %s", self, type(cause).__name__, cause)
            if self._opened is opened:  # the next call opens a new one
                self._opened = self._owner = self._stop = None

    async def _client(self) -> Client:
        """The open session's client; opens one if there is none, or the last opening failed. An opening is shielded
        from the caller's timeout: a call that gives up leaves it to the next one."""
        opened = self._opened
        if opened is None or (opened.done() and (opened.cancelled() or opened.exception() is not None)):
            opened, self._stop = self._loop.create_future(), asyncio.Event()
            self._opened, self._owner = opened, asyncio.create_task(self._own(opened, self._stop))
        return await asyncio.shield(opened)

    def _open_client(self) -> Client | None:
        """The client of the session if one is open (its opening succeeded), else None."""
        opened = self._opened
        ok = opened is not None and opened.done() and not opened.cancelled() and opened.exception() is None
        return opened.result() if ok else None

    async def _reset(self, client: Client | None = None) -> None:
        """Leave the session, if it is still `client`'s (any, if None); the next call opens a new one."""
        if self._opened is None or (client is not None and self._open_client() is not client):
            return
        opening, owner, stop = not self._opened.done(), self._owner, self._stop
        self._opened = self._owner = self._stop = None
        stop.set()
        if opening:  # an opening may take STARTUP_TIMEOUT_S: abandon it
            owner.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(owner, return_exceptions=True)
        except TimeoutError:
            owner.cancel()
            log.warning("%r: the session did not close in %.0f s", self, CLOSE_TIMEOUT_S)

    async def _attempt(self, request: Any) -> Any:
        client = await self._client()
        try:
            return await request(client)
        except Exception as exc:
            if session_broken(exc):
                await self._reset(client)
            raise

    async def _with_retries(self, request: Any, retry: Retry, what: str) -> Any:
        return await retry.call(lambda: self._attempt(request), errors=(Exception,), transient=is_transient,
                                what=f"{self!r}: {what}")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Raises CallFailed when no attempt got an answer."""
        return await self._with_retries(lambda client: client.call_tool(name, arguments), self.retry, f"tool {name}")

    async def list_tools(self) -> list[mcp_types.Tool]:
        async def every_page(client: Client) -> list[mcp_types.Tool]:
            tools, cursor = [], None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    return tools

        # Each attempt may have to start the server.
        startup = Retry(self.retry.max_retries, STARTUP_TIMEOUT_S + self.retry.timeout_s, self.retry.backoff_s)
        return await self._with_retries(every_page, startup, "listing tools")

    async def _shutdown(self) -> None:
        await self._reset()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # --- from other threads ---

    def open_and_list(self) -> list[mcp_types.Tool]:
        """Open the session and list the server's tools, blocking this thread (any thread but the session's)."""
        return self._submit(self.list_tools()).result()

    def close_now(self) -> None:
        """Leave the session (a stdio server exits) and stop the loop, blocking this thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(self._shutdown()).result(timeout=CLOSE_TIMEOUT_S + 5)
        except Exception as exc:
            log.warning("%r: closing failed: %s", self, exc)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_now)


def content_text(result: mcp_types.CallToolResult) -> str:
    """The text of a tool result: its text blocks (and texts of embedded resources), one per line; other blocks are
    named, not shown. A result with no text but structured content: that content as JSON."""
    parts = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource) and isinstance(block.resource,
                                                                          mcp_types.TextResourceContents):
            parts.append(block.resource.text)
        else:
            mime = getattr(block, "mime_type", None) or getattr(getattr(block, "resource", None), "mime_type", None)
            parts.append(f"[{block.type} content{f' ({mime})' if mime else ''} not shown]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


class MCPTool(Tool):
    """One tool of an MCP server. `parameters` is the server's input schema for it."""

    def __init__(self, name: str, remote_name: str, description: str, parameters: dict[str, Any],
                 server: MCPServerSession, *, entry: str, pricing: Pricing = Pricing(), max_reply_chars: int = 4096):
        super().__init__(name, description, pricing, entry=entry)
        self.remote_name, self.parameters, self.server = remote_name, parameters, server
        self.max_reply_chars = max_reply_chars

    @property
    def deadline_s(self) -> float:
        return self.server.retry.deadline_s

    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        start = time.perf_counter()
        try:
            result = await self.server.run(self.server.call_tool(self.remote_name, arguments))
        except (CallFailed, SessionClosed) as failed:  # not billed: the server answered nothing
            error = f"{self.server!r}, tool {self.remote_name!r}: {failed}"
            return ToolResult(text=f"Error: {error}", latency_s=time.perf_counter() - start, error=error)
        text = content_text(result)
        text = cut_reply(text, self.max_reply_chars)
        latency, cost = time.perf_counter() - start, self.pricing.cost()  # answered: billed, error or not
        if result.is_error:
            error = text or f"tool {self.name!r} reported an error"
            return ToolResult(text=f"Error: {error}", cost_usd=cost, latency_s=latency, error=error)
        return ToolResult(text=text, cost_usd=cost, latency_s=latency)

    async def close(self) -> None:
        await self.server.close()  # shared by the server's tools: the first close closes it


def tools_from_config(name: str, cfg: ToolConfig, ctx: ToolContext) -> dict[str, Tool]:
    """The tools of the MCP server entry `name` (validated: exactly one of command and url), by the names the policy
    sees. Starts or reaches the server and lists its tools, blocking this thread; a server that cannot be started
    or reached, or that lacks a tool `include` names, is a ConfigError naming the key."""
    key = f"tools.tools.{name}.{'url' if cfg.url else 'command'}"
    headers = {"Authorization": f"Bearer {api_key_from_env(name, cfg.api_key_env)}"} if cfg.api_key_env else None
    server = MCPServerSession(name, command=list(cfg.command), env=dict(cfg.env), url=cfg.url, headers=headers,
                              retry=Retry(cfg.max_retries, cfg.timeout_s))
    try:
        try:
            offered = server.open_and_list()
        except CallFailed as failed:
            raise ConfigError(key, f"{server!r} could not be started or reached: {failed}") from failed
        by_name = {t.name: t for t in offered}
        missing = [n for n in cfg.include if n not in by_name]
        if missing:
            raise ConfigError(f"tools.tools.{name}.include", f"{server!r} offers no tool {', '.join(missing)}; "
                                                             f"it offers: {', '.join(by_name) or 'none'}")
        tools: dict[str, Tool] = {}
        for remote in (by_name[n] for n in cfg.include) if cfg.include else offered:
            local = re.sub(r"[^A-Za-z0-9_-]", "_", cfg.prefix + remote.name)
            if not FUNCTION_NAME.fullmatch(local) or local in tools:
                raise ConfigError(f"tools.tools.{name}.prefix", f"tool {remote.name!r} of {server!r} cannot be "
                                                                f"offered as {local!r}: names must be unique, 1-64 "
                                                                "letters, digits, _ or -")
            tools[local] = MCPTool(local, remote.name, remote.description or remote.title or "",
                                   copy.deepcopy(remote.input_schema), server, entry=name,
                                   pricing=Pricing(per_call=cfg.price_per_call), max_reply_chars=cfg.max_reply_chars)
        return tools
    except BaseException:
        server.close_now()
        raise
