"""The synthesis model: an OpenAI-compatible endpoint whose every answer is cached by its request, and answers
asked for as JSON, validated, and asked again with the reason when they do not validate.

The cache is a folder of one file per request (the SHA-256 of model, messages, temperature, max_tokens and seed),
written atomically, so that Ray tasks on one machine (or on a shared filesystem) share it safely: an interrupted run
resumes without paying twice, and a run is reproducible given its seed and its cache. A cached answer keeps what it
cost when it was paid for; `Spend` counts both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import openai
from pydantic import BaseModel, ValidationError

from orchestra_rl.config import ConfigError, EndpointConfig
from orchestra_rl.tools.base import Pricing
from orchestra_rl.tools.llm import NO_API_KEY, MalformedReply, estimate_tokens, is_retryable, reply_text, retry_after_s
from orchestra_rl.tools.retry import CallFailed, Retry


@dataclass
class Spend:
    """The model calls of a stage (or a run): paid now, answered from the cache, failed after their retries."""

    paid: int = 0
    cached: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usage_estimated: int = 0  # paid calls whose endpoint reported no usage: billed by estimate
    cost_usd: float = 0.0  # paid in this run
    cached_cost_usd: float = 0.0  # what the cached answers cost when they were paid for

    def add(self, other: Spend) -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class Answer:
    text: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    usage_estimated: bool


class AnswerCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Answer | None:
        try:
            return Answer(**json.loads(self._path(key).read_text())["answer"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # absent, or a file cut short: ask again
            return None

    def put(self, key: str, request: dict[str, Any], answer: Answer) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"request": request, "answer": answer.__dict__}, f)
        os.replace(tmp, path)  # atomic: a reader sees the whole answer or none


class SynthLLM:
    def __init__(self, endpoint: EndpointConfig, max_tokens: int, seed: int, cache_dir: str | Path):
        self.endpoint, self.max_tokens, self.seed = endpoint, max_tokens, seed
        self.cache = AnswerCache(cache_dir)
        self.pricing = Pricing(endpoint.price_in_per_mtok, endpoint.price_out_per_mtok)
        self.retry = Retry(endpoint.max_retries, endpoint.timeout_s)
        api_key = NO_API_KEY
        if endpoint.api_key_env:
            api_key = os.environ.get(endpoint.api_key_env, "")
            if not api_key:
                raise ConfigError("synth.llm.api_key_env",
                                  f"environment variable {endpoint.api_key_env} is not set (it must hold the API key)")
        self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=api_key, timeout=endpoint.timeout_s,
                                         max_retries=0)

    async def complete(self, messages: list[dict[str, str]], spend: Spend) -> Answer:
        """The answer to `messages`, from the cache or paid for (and then cached). Raises CallFailed."""
        request = {"model": self.endpoint.model, "messages": messages, "temperature": self.endpoint.temperature,
                   "max_tokens": self.max_tokens, "seed": self.seed}
        key = self.cache.key(request)
        cached = self.cache.get(key)
        if cached is not None:
            spend.cached += 1
            spend.cached_cost_usd += cached.cost_usd
            return cached

        async def attempt() -> tuple[Any, str]:
            response = await self.client.chat.completions.create(**request)
            return response, reply_text(response)

        try:
            response, text = await self.retry.call(
                attempt, errors=(openai.APIError, MalformedReply, json.JSONDecodeError), transient=is_retryable,
                what=f"synthesis model {self.endpoint.model}", retry_after=retry_after_s)
        except CallFailed:
            spend.failed += 1
            raise
        usage = getattr(response, "usage", None)
        tokens_in, tokens_out = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        estimated = not isinstance(tokens_in, int) or not isinstance(tokens_out, int)
        if estimated:
            tokens_in, tokens_out = estimate_tokens("\n".join(m["content"] for m in messages)), estimate_tokens(text)
        answer = Answer(text, tokens_in, tokens_out, self.pricing.cost(tokens_in, tokens_out), estimated)
        self.cache.put(key, request, answer)
        spend.paid += 1
        spend.tokens_in += tokens_in
        spend.tokens_out += tokens_out
        spend.usage_estimated += estimated
        spend.cost_usd += answer.cost_usd
        return answer

    async def close(self) -> None:
        await self.client.close()


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json(text: str) -> Any:
    """The JSON value of an answer: the whole text, else its first fenced block, else its outermost braces."""
    candidates = [text.strip()]
    fenced = _FENCE.search(text)
    if fenced:
        candidates.append(fenced.group(1).strip())
    if "{" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("the answer holds no JSON object")


@dataclass
class Asked:
    """The outcome of asking for one validated answer."""

    value: Any = None  # the validated answer; None when every attempt failed
    drop: str | None = None  # why not: invalid_json | schema_violation | check_failed | llm_error
    detail: str = ""  # the last failure's message
    attempts: int = 0
    failures: Counter = field(default_factory=Counter)  # every failed attempt's kind, the retried ones too
    spend: Spend = field(default_factory=Spend)


async def ask(llm: SynthLLM, messages: list[dict[str, str]], answer_model: type[BaseModel],
              check: Callable[[Any], Awaitable[str | None]] | None, max_attempts: int) -> Asked:
    """Ask until an answer parses as JSON, validates against `answer_model` and passes `check` (the reason it does
    not, or None), at most `max_attempts` times; each retry shows the model its answer and what was wrong with it.
    Never raises for what the model or the endpoint does."""
    asked = Asked()
    messages = list(messages)
    for _ in range(max_attempts):
        asked.attempts += 1
        try:
            answer = await llm.complete(messages, asked.spend)
        except CallFailed as e:
            asked.drop, asked.detail = "llm_error", str(e)
            asked.failures["llm_error"] += 1
            return asked  # the endpoint failed after its own retries: asking again would not help
        try:
            value = answer_model.model_validate(parse_json(answer.text))
            problem = await check(value) if check is not None else None
            kind = "check_failed"
        except ValidationError as e:
            error = e.errors()[0]
            problem, kind = f"{'.'.join(map(str, error['loc'])) or '(top)'}: {error['msg']}", "schema_violation"
        except ValueError as e:
            problem, kind = str(e), "invalid_json"
        if problem is None:
            asked.value = value
            return asked
        asked.drop, asked.detail = kind, problem[:500]
        asked.failures[kind] += 1
        messages += [{"role": "assistant", "content": answer.text},
                     {"role": "user", "content": f"That answer is not valid: {problem[:500]}\n"
                                                 "Answer again, with the corrected JSON only."}]
    return asked
