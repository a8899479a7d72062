"""The search tool: BM25 over the world's local corpus, or web search through Tavily.

bm25 (the default) needs nothing outside the machine: the index over corpus.jsonl is built once when the tool
is constructed (a few ms for toolscale-mini) and queried in memory. tavily calls a paid web API and is used only
when configured with `backend: tavily` and an `api_key_env` that is set.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import bm25s
import requests
import tavily

from orchestra_rl.config import ToolConfig
from orchestra_rl.tools.base import Pricing, Tool, ToolContext, api_key_from_env
from orchestra_rl.tools.retry import CallFailed, Retry
from orchestra_rl.types import ToolResult

# Worth retrying: timeouts, rate limits, dropped connections and 5xx. A bad key or a bad request is not.
_TRANSIENT_TAVILY_ERRORS = (tavily.errors.TimeoutError, tavily.UsageLimitExceededError,
                            requests.ConnectionError, requests.Timeout, requests.HTTPError)
_PERMANENT_TAVILY_ERRORS = (tavily.InvalidAPIKeyError, tavily.BadRequestError, tavily.errors.ForbiddenError)
_TAVILY_ERRORS = _TRANSIENT_TAVILY_ERRORS + _PERMANENT_TAVILY_ERRORS


def _tokenize(texts: list[str]) -> list[list[str]]:
    """Lowercased words without English stopwords, no stemmer (it would need a download)."""
    return bm25s.tokenize(texts, lower=True, stopwords="en", return_ids=False, show_progress=False)


def _format(passages: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"[{i}] {title}\n{text}" for i, (title, text) in enumerate(passages, 1)) or "No results."


class SearchTool(Tool):
    default_description = "Search for documents."
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1, "description": "what to search for"}},
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, name: str, cfg: ToolConfig, world_dir: str | Path = ""):
        super().__init__(name, cfg.description or self.default_description, Pricing(per_call=cfg.price_per_call))
        self.cfg = cfg
        if cfg.backend == "bm25":
            corpus_path = Path(world_dir) / "corpus.jsonl"
            if not corpus_path.is_file():
                raise FileNotFoundError(f"search tool '{name}': no corpus at {corpus_path} (is the world built?)")
            docs = [json.loads(line) for line in corpus_path.read_text().splitlines() if line.strip()]
            self.passages = [(d["title"], d["text"]) for d in docs]
            self.index = bm25s.BM25()
            self.index.index(_tokenize([f"{t}. {x}" for t, x in self.passages]), show_progress=False)
        else:  # tavily, the one other backend config.validate allows; it also requires api_key_env
            key = api_key_from_env(name, cfg.api_key_env)
            # base_url, when set, points the client at another Tavily-compatible endpoint (a proxy, a test server).
            self.client = tavily.TavilyClient(api_key=key, api_base_url=cfg.base_url or None)
            self.retry = Retry(cfg.max_retries, cfg.timeout_s)

    @property
    def deadline_s(self) -> float:
        return self.retry.deadline_s if self.cfg.backend == "tavily" else self.cfg.timeout_s

    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        start = time.perf_counter()
        if self.cfg.backend == "bm25":
            text, error = self.bm25(arguments["query"]), None
        else:
            text, error = await self._tavily(arguments["query"])
        return ToolResult(text=text, error=error, cost_usd=self.pricing.cost(),
                          latency_s=time.perf_counter() - start)

    def bm25(self, query: str) -> str:
        """The top passages for `query` from the local corpus, formatted as the policy reads them."""
        tokens = [t for t in _tokenize([query])[0] if t in self.index.vocab_dict]
        if not tokens:  # only stopwords or words the corpus never uses
            return "No results."
        k = min(self.cfg.top_k, len(self.passages))
        ids, scores = self.index.retrieve([tokens], k=k, show_progress=False, backend_selection="numpy")
        return _format([self.passages[i] for i, s in zip(ids[0], scores[0]) if s > 0])

    async def _tavily(self, query: str) -> tuple[str, str | None]:
        try:
            response = await self.retry.call(
                lambda: asyncio.to_thread(self.client.search, query, max_results=self.cfg.top_k,
                                          timeout=self.cfg.timeout_s),
                errors=_TAVILY_ERRORS, transient=lambda e: isinstance(e, _TRANSIENT_TAVILY_ERRORS),
                what=f"tool {self.name} (tavily)")
        except CallFailed as failed:
            error = f"web search {failed}"
            return f"Error: {error}", error
        return _format([(r.get("title", ""), r.get("content", "")) for r in response.get("results", [])]), None


TOOL_CLASS = SearchTool  # its parameters and default description, known without building a tool


def from_config(name: str, cfg: ToolConfig, ctx: ToolContext) -> SearchTool:
    return SearchTool(name, cfg, ctx.world_dir)
