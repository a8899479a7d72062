"""Shared fixtures: a local Ray instance, and a stand-in for a remote paid OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import ray
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.helpers import PRETRAIN


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A Ray instance of this test session only ("local": never attach to someone else's cluster)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


@dataclass
class OpenAIStub:
    """Knobs and observations of the stub API. Handlers run on the server's thread; fields are plain values."""

    base_url: str = ""
    answer: str = "42"
    script: list[str] = field(default_factory=list)  # if set, call k answers script[k-1] (then its last line)
    responder: Callable[[dict], str] | None = None  # if set, the answer to a request body (recorded answers)
    prompt_tokens: int = 1000
    completion_tokens: int = 500
    fail_first: int = 0  # the first k calls answer `fail_status`
    fail_status: int = 503
    always_status: int | None = None  # every call answers this status (e.g. 400)
    delay_s: float = 0.0  # sleep before answering (longer than a client timeout simulates a hung server)
    empty_choices: bool = False  # a malformed 200 response with no choices
    not_json_first: int = 0  # the first k calls answer 200 with a body that is not JSON
    no_usage: bool = False  # replies without a usage field
    retry_after: str | None = None  # the Retry-After header of non-200 replies
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level fields of every reply (orchestration...)
    calls: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)  # request bodies
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (arrival, reply) of each call, monotonic
    api_keys: list[str] = field(default_factory=list)  # the bearer token of each request


def make_stub_app(stub: OpenAIStub) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        body = await request.json()
        stub.calls += 1
        stub.requests.append(body)
        stub.api_keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        call = stub.calls
        stub.in_flight += 1
        stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
        arrival = time.monotonic()
        try:
            await asyncio.sleep(stub.delay_s)
        finally:
            stub.in_flight -= 1
            stub.intervals.append((arrival, time.monotonic()))
        status = stub.always_status or (stub.fail_status if call <= stub.fail_first else 200)
        if status != 200:
            headers = {"retry-after": stub.retry_after} if stub.retry_after else None
            return JSONResponse({"error": {"message": f"stub status {status}", "type": "stub"}}, status_code=status,
                                headers=headers)
        if call <= stub.not_json_first:
            return Response('{"id": "chatcmpl-cut", "choi', media_type="application/json")
        choices = [] if stub.empty_choices else [
            {"index": 0, "message": {"role": "assistant", "content": stub.responder(body) if stub.responder
                                     else stub.script[min(call, len(stub.script)) - 1] if stub.script
                                     else stub.answer}, "finish_reason": "stop"}
        ]
        return JSONResponse({
            "id": f"chatcmpl-{call}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            **({} if stub.no_usage else {"usage": {
                "prompt_tokens": stub.prompt_tokens,
                "completion_tokens": stub.completion_tokens,
                "total_tokens": stub.prompt_tokens + stub.completion_tokens,
            }}),
            **stub.extra,
        })

    return app


@contextlib.contextmanager
def serve_stub() -> Iterator[OpenAIStub]:
    """An OpenAI-compatible server on 127.0.0.1, simulating a remote paid API; stopped on exit."""
    stub = OpenAIStub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; the server takes over the bound socket
    stub.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    config = uvicorn.Config(make_stub_app(stub), log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stub OpenAI server did not start"
        time.sleep(0.01)
    try:
        yield stub
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def openai_stub_server() -> Iterator[OpenAIStub]:
    """A fresh stub API per test."""
    with serve_stub() as stub:
        yield stub


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where this test session builds its tiny model and task worlds (never the user's cache)."""
    return str(tmp_path_factory.mktemp("orchestra-cache"))


@pytest.fixture(scope="session")
def sized_overrides(cache_dir: str) -> list[str]:
    """The overrides every test composes the real conf/ with (make_config; a CLI test passes them as arguments)."""
    return [f"model.cache_dir={cache_dir}/models", PRETRAIN, f"data.cache_dir={cache_dir}/worlds",
            "data.tasks_per_family=8"]


@pytest.fixture(scope="session")
def make_config(sized_overrides: list[str]):
    """Compose the real conf/ with test-sized overrides: make_config("rollout.max_turns=3", ...)."""
    from orchestra_rl.config import load_config

    def make(*overrides: str):
        return load_config([*sized_overrides, *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_model_path(make_config) -> str:
    from orchestra_rl.models.tiny import resolve_model_path

    return resolve_model_path(make_config())


@pytest.fixture(scope="session")
def random_model_path(make_config) -> str:
    """The tiny model without copy pretraining: random weights, which never choose to stop, so a generation runs
    to its max_tokens (tests of the engine's mechanics count on that)."""
    from orchestra_rl.models.tiny import resolve_model_path

    return resolve_model_path(make_config("model.pretrain_steps=0"))


# Enough for the policy to make calls when sampling at temperature 1 (64 demos x 6 epochs of 8 left it writing
# broken calls only; these: accuracy ~0.2 and most turns well-formed calls), ~3.5 min on 2 cores.
SFT_EPOCHS = 8
SFT_REPLAY_DRILLS = 16  # a few of the base's drills mixed in (sft/replay.py), so the session's SFT runs that path
SFT_OVERRIDES = ("sft.num_demos=128", f"sft.epochs={SFT_EPOCHS}", "sft.batch_size=4", "sft.lr=3e-3",
                 "sft.num_workers=2", f"sft.replay_drills={SFT_REPLAY_DRILLS}")


@pytest.fixture(scope="session")
def sft_run(make_config, ray_local, tmp_path_factory) -> tuple[str, str]:
    """One small SFT warm start for the whole test session: (its output folder, the HF checkpoint). The SFT test
    checks it; the train tests start RL from it, as `orchestra-rl train` does, so their rollouts make calls."""
    from orchestra_rl.sft.train import run_sft
    from tests.helpers import free_port

    out = tmp_path_factory.mktemp("sft")
    cfg = make_config(f"serve.port={free_port()}", f"sft.output_dir={out}", *SFT_OVERRIDES)
    return str(out), run_sft(cfg)
