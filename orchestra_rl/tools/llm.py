"""A model behind any OpenAI-compatible /v1/chat/completions endpoint, used as a tool (expert or generalist).

An endpoint that is itself an orchestrator (`orchestra-rl serve`, or any server that adds the same field) reports
what it paid for the call — its tools, experts and own tokens — in `orchestration.cost_usd`; that cost is added to
the call's, so an orchestrator of orchestrators pays for the whole tree.

A call is retried (tools/retry.py) on timeouts, connection errors, rate limits and server errors; a request the
server rejects as wrong (other 4xx) is not retried. A call never raises into the agent loop for such failures: it
returns a ToolResult with `error` set, which the policy sees and the reward counts.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import openai

from orchestra_rl.config import ConfigError, ToolConfig
from orchestra_rl.tools.base import Pricing, Tool, ToolContext, api_key_from_env, cut_reply
from orchestra_rl.tools.retry import CallFailed, Retry
from orchestra_rl.types import ToolResult

# Sent when the endpoint needs no key (local servers); the openai client refuses an empty one.
NO_API_KEY = "not-needed"


def is_retryable(exc: Exception) -> bool:
    """Transient API failures: connection errors, rate limits (429), server errors (5xx) and malformed replies
    (a truncated or garbled body is the server's or the network's fault, not the request's)."""
    # APITimeoutError is an APIConnectionError; json.JSONDecodeError: a 200 whose body is not JSON.
    if isinstance(exc, (openai.APIConnectionError, MalformedReply, json.JSONDecodeError)):
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)


def retry_after_s(exc: Exception) -> float | None:
    """The wait a rate-limited server asks for (its Retry-After header, in seconds), if any."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare from model APIs; our own backoff applies
        return None


class MalformedReply(ValueError):
    """A 200 reply that is not a chat completion: not JSON, no choices, no message."""


def estimate_tokens(text: str) -> int:
    """Tokens of `text` by the usual ~4 characters per token of English BPE vocabularies: for billing a reply whose
    endpoint reported no usage (flagged as estimated), never for anything exact."""
    return max(1, round(len(text) / 4)) if text else 0


def reported_cost(response: Any) -> float:
    """The dollar cost an orchestrator endpoint reports for the call (its reply's `orchestration.cost_usd`); 0 for
    a plain model. A report that is not a finite number >= 0 is not a cost: it is a malformed reply."""
    orchestration = (getattr(response, "model_extra", None) or {}).get("orchestration")
    if orchestration is None:
        return 0.0
    cost = orchestration.get("cost_usd") if isinstance(orchestration, dict) else None
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        raise MalformedReply(f"the reply's orchestration.cost_usd is not a dollar amount: {cost!r}")
    return float(cost)


def reply_text(response: Any) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("the reply has no choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise MalformedReply("the reply's first choice has no message")
    content = message.content
    if content is not None and not isinstance(content, str):
        raise MalformedReply(f"the reply's content is a {type(content).__name__}, not text")
    return content or ""


class LLMTool(Tool):
    parameters = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "description": "What to ask the model."},
            "context": {"type": "string", "description": "Optional background the model should use."},
        },
        "required": ["question"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        name: str,
        description: str,
        *,
        model: str,
        base_url: str,
        api_key: str = NO_API_KEY,
        pricing: Pricing = Pricing(),
        timeout_s: float = 30.0,
        max_retries: int = 2,
        max_tokens: int = 256,
        temperature: float = 0.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        include_task: bool = False,
        max_reply_chars: int = 4096,
    ):
        super().__init__(name, description, pricing)
        self.model = model
        self.include_task = include_task
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_reply_chars = max_reply_chars
        self.retry = Retry(max_retries, timeout_s, backoff_s, backoff_max_s)
        # max_retries=0: the client's own retries would multiply ours and hide attempts from latency and logs.
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    @property
    def deadline_s(self) -> float:
        return self.retry.deadline_s

    def messages(self, arguments: dict[str, Any], task: str = "") -> list[dict[str, str]]:
        # The question is the last user message, so a server can read it without parsing the context; with
        # include_task the user's task comes first in it: the expert is handed the problem, not a paraphrase.
        context = arguments.get("context")
        system = [{"role": "system", "content": f"Context:\n{context}"}] if context else []
        question = f"Task: {task}\n\n{arguments['question']}" if self.include_task and task else arguments["question"]
        return system + [{"role": "user", "content": question}]

    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        messages = self.messages(arguments, task)
        start = time.perf_counter()

        async def attempt() -> tuple[Any, str, float]:
            response = await self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature)
            return response, reply_text(response), reported_cost(response)

        try:
            response, text, reported = await self.retry.call(
                attempt, errors=(openai.APIError, MalformedReply, json.JSONDecodeError), transient=is_retryable,
                what=f"tool {self.name} (model {self.model})", retry_after=retry_after_s)
        except CallFailed as failed:
            return self.failure(failed, time.perf_counter() - start)
        usage = getattr(response, "usage", None)
        tokens_in, tokens_out = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        estimated = not isinstance(tokens_in, int) or not isinstance(tokens_out, int)
        if estimated:  # billed all the same: the provider charged for the tokens it did not report
            tokens_in = estimate_tokens("\n".join(m["content"] for m in messages))
            tokens_out = estimate_tokens(text)
        text = cut_reply(text, self.max_reply_chars)
        return ToolResult(
            text=text,
            cost_usd=self.pricing.cost(tokens_in, tokens_out) + reported,
            reported_cost_usd=reported,
            latency_s=time.perf_counter() - start,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usage_estimated=estimated,
        )

    def failure(self, failed: CallFailed, latency_s: float) -> ToolResult:
        # A failed call is not billed: providers do not charge for requests that return no completion.
        error = f"model {self.model!r} {failed}"
        return ToolResult(text=f"Error: {error}", latency_s=latency_s, error=error)

    async def close(self) -> None:
        await self.client.close()


TOOL_CLASS = LLMTool  # its parameters and default description, known without building a tool


def from_config(name: str, cfg: ToolConfig, ctx: ToolContext) -> LLMTool:
    """`cfg` is validated (model, base_url and prices are set); what is checked here is the running system: that
    the simulated experts are up when base_url is "experts", and that the key's environment variable is set."""
    base_url = ctx.experts_base_url if cfg.base_url == "experts" else cfg.base_url
    if not base_url:
        raise ConfigError(f"tools.tools.{name}.base_url", f"no endpoint for model {cfg.model!r} (base_url 'experts' "
                                                          "needs the simulated experts to be running)")
    api_key = api_key_from_env(name, cfg.api_key_env) if cfg.api_key_env else NO_API_KEY
    return LLMTool(
        name,
        cfg.description,
        model=cfg.model,
        base_url=base_url,
        api_key=api_key,
        pricing=Pricing(cfg.price_in_per_mtok, cfg.price_out_per_mtok, cfg.price_per_call),
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        include_task=cfg.include_task,
        max_reply_chars=cfg.max_reply_chars,
    )
