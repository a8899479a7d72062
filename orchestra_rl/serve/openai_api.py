"""What the OpenAI-compatible applications on Ray Serve share (the simulated experts, the served orchestrator): the
API's error bodies, reading a chat request, and waiting until an application answers over HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Collection
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An error body as the OpenAI API sends it, so OpenAI clients raise their usual exception types."""
    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})


def message_text(content: Any) -> str:
    """A message's text: a plain string or the text parts of a list of content parts."""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


async def read_chat_request(request: Request, models: Collection[str],
                            server: str) -> tuple[str, list[dict], list[str]] | JSONResponse:
    """(model, messages, the user messages' texts) of a /v1/chat/completions request, or the 4xx response that says
    what is wrong with it. Streaming is refused (`server` names who refuses)."""
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    model = body.get("model")
    if model not in models:
        return error_response(404, f"The model '{model}' does not exist; available: {', '.join(models)}",
                              param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return error_response(400, "'messages' must be a list of message objects", param="messages")
    user = [message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    if not user or not user[-1].strip():
        return error_response(400, "'messages' has no user message with text", param="messages")
    if body.get("stream"):
        return error_response(400, f"streaming is not supported by {server}", param="stream")
    return model, messages, user


def wait_until_serving(base_url: str, timeout_s: float, what: str) -> str:
    """Block until GET {base_url}/models answers 200 (serve.run returns once the replica runs; the HTTP proxy may
    learn the route a moment later); returns base_url."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
                if response.status == 200:
                    return base_url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not answering at {base_url} after {timeout_s:.0f} s")
        time.sleep(0.2)
