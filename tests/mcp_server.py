"""A small MCP server for the tests (tests/tools/test_mcp.py) and conf/tools/mcp_example.yaml.

    python tests/mcp_server.py                     # stdio
    python tests/mcp_server.py --http PORT         # streamable HTTP on 127.0.0.1:PORT/mcp
    MCP_TEST_TOKEN=secret python tests/mcp_server.py --http PORT   # ... answering only "Authorization: Bearer secret"

Tools: add(a, b) -> a + b; lookup(key) -> a capital, an MCP error result for an unknown key; slow(seconds) sleeps,
then says so; served() -> how many calls of the other tools this process has served.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CAPITALS = {"France": "Paris", "Japan": "Tokyo"}

server = MCPServer("orchestra-rl-test-tools", log_level="WARNING")
served = 0


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers and return their sum."""
    global served
    served += 1
    return a + b


@server.tool()
def lookup(key: str) -> str:
    """The capital of a country."""
    global served
    served += 1
    if key not in CAPITALS:
        raise ToolError(f"no capital known for {key!r}")
    return CAPITALS[key]


@server.tool()
async def slow(seconds: float) -> str:
    """Wait `seconds`, then answer."""
    global served
    served += 1
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


@server.tool(name="served")
def served_calls() -> int:
    """How many calls of the other tools this server process has served."""
    return served


def require_bearer(app, token: str):
    """The ASGI app `app`, answering 401 to any HTTP request without the bearer `token`."""
    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != f"Bearer {token}".encode():
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    port = parser.parse_args().http
    if port is None:
        server.run()
        return
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")
    token = os.environ.get("MCP_TEST_TOKEN")
    uvicorn.run(require_bearer(app, token) if token else app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
