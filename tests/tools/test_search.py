import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestra_rl.config import ConfigError, DataConfig, ToolConfig
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.reward.outcome import normalize_answer
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.search import SearchTool, from_config


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return build_world(DataConfig(cache_dir=str(tmp_path_factory.mktemp("worlds")), num_countries=8,
                                  num_companies=8, num_people=8, tasks_per_family=40))


@pytest.fixture(scope="module")
def tool(world_dir):
    return from_config("search", ToolConfig(kind="search", top_k=3, price_per_call=1e-5),
                       ToolContext(world_dir=str(world_dir)))


def _contains(text: str, answer: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(normalize_answer(answer))}(?!\w)", normalize_answer(text)) is not None


async def test_lookup_answers_are_in_the_top_3(tool, world_dir):
    tasks = [t for split in ("train", "test") for t in load_tasks(world_dir, split) if t.family == "lookup"]
    assert len(tasks) == 40
    found = 0
    for t in tasks:
        result = await tool.call({"query": t.question})
        assert result.error is None and result.text.count("\n\n") <= 2  # at most top_k passages
        found += _contains(result.text, t.answer)
    assert found / len(tasks) >= 0.9


async def test_result_format_cost_and_latency(tool):
    result = await tool.call({"query": "population"})
    assert result.text.startswith("[1] ") and "[3] " in result.text and "[4] " not in result.text
    assert result.cost_usd == pytest.approx(1e-5) and 0 < result.latency_s < 1


async def test_queries_without_known_words(tool):
    for query in ("the of and", "zzzqqq", "   "):
        result = await tool.call({"query": query})
        assert result.text == "No results." and result.error is None


async def test_bad_arguments_are_argument_errors(tool):
    for arguments in ({"query": ""}, {}, {"query": 3}, {"query": "x", "other": 1}):
        result = await tool.call(arguments)
        assert result.error and result.error.startswith("invalid arguments for tool 'search'")
        assert result.text == f"Error: {result.error}"
    assert tool.schema()["function"]["parameters"]["required"] == ["query"]


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no corpus at .*corpus.jsonl"):
        SearchTool("search", ToolConfig(kind="search"), tmp_path)


def test_tavily_key_variable_not_set_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ORCHESTRA_TEST_TAVILY_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"tools\.tools\.web\.api_key_env: environment variable "
                                          r"ORCHESTRA_TEST_TAVILY_KEY is not set"):
        from_config("web", ToolConfig(kind="search", backend="tavily", api_key_env="ORCHESTRA_TEST_TAVILY_KEY"),
                    ToolContext())


class _FakeTavily(BaseHTTPRequestHandler):
    """A Tavily-compatible endpoint on loopback that fails the first `failures` requests with a 500."""

    failures = 0
    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if len(type(self).requests) <= type(self).failures:
            self.send_response(500)
            self.end_headers()
            return
        result = {"title": "Veltoria", "url": "http://x", "content": "Veltoria has 12 people."}
        payload = json.dumps({"results": [result]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_tavily(monkeypatch):
    monkeypatch.setenv("ORCHESTRA_TEST_TAVILY_KEY", "test-key")
    _FakeTavily.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTavily)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _tavily_tool(base_url: str, max_retries: int) -> SearchTool:
    cfg = ToolConfig(kind="search", backend="tavily", api_key_env="ORCHESTRA_TEST_TAVILY_KEY", base_url=base_url,
                     max_retries=max_retries, top_k=2, price_per_call=0.008)
    return from_config("web", cfg, ToolContext())


async def test_tavily_retries_transient_errors(fake_tavily):
    _FakeTavily.failures = 1
    result = await _tavily_tool(fake_tavily, max_retries=2).call({"query": "population of Veltoria"})
    assert result.error is None and result.text == "[1] Veltoria\nVeltoria has 12 people."
    assert result.cost_usd == pytest.approx(0.008)
    assert [r["query"] for r in _FakeTavily.requests] == ["population of Veltoria"] * 2
    assert _FakeTavily.requests[0]["max_results"] == 2


def test_deadline_leaves_room_for_the_tavily_retries(tool, monkeypatch):
    monkeypatch.setenv("ORCHESTRA_TEST_TAVILY_KEY", "test-key")
    web = _tavily_tool("http://127.0.0.1:9", max_retries=2)
    assert web.deadline_s == 3 * web.cfg.timeout_s + 2 * web.retry.backoff_max_s  # every attempt times out, two waits
    assert tool.deadline_s == tool.cfg.timeout_s  # bm25: one lookup in memory


async def test_tavily_gives_up_after_max_retries(fake_tavily):
    _FakeTavily.failures = 10
    result = await _tavily_tool(fake_tavily, max_retries=1).call({"query": "anything"})
    assert result.error.startswith("web search failed after 2 attempt(s): HTTPError")
    assert result.text == f"Error: {result.error}" and len(_FakeTavily.requests) == 2
