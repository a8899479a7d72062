"""The trained orchestrator as an OpenAI-compatible endpoint (`orchestra-rl serve`): a Ray Serve application on
{serve.host}:{serve.port}{serve.route}/v1 with /models and /chat/completions.

A request runs the whole orchestration loop: its last user message is the task (as in the QA world: the user asks,
the policy reasons and calls the configured tools and experts, and its final answer is the reply). The replica only
routes: each request is one agent loop on a rollout worker's vLLM engine, so concurrent requests are batched by the
engine (continuous batching), never queued behind a lock. `usage` counts the orchestrator's own tokens (read, and
sampled); `orchestration` carries what an OpenAI reply has no field for: the dollar cost (tools, experts and the
orchestrator's tokens), tool latency, wall time and the trace of tool calls. An llm tool of another orchestrator
pointed at this endpoint adds that cost to its own (tools/llm.py): orchestrators call orchestrators, and pay for
what the callee paid.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from orchestra_rl.config import Config, ConfigError, env_sources
from orchestra_rl.serve.openai_api import error_response, read_chat_request, wait_until_serving
from orchestra_rl.types import Task, Trajectory

MAX_TRACE_CHARS = 2000  # of each tool result in the trace

app = FastAPI()


def trace(trajectory: Trajectory) -> list[dict[str, Any]]:
    return [{"turn": c.turn, "name": c.name, "arguments": c.arguments, "result": c.result.text[:MAX_TRACE_CHARS],
             "tokens_in": c.result.tokens_in, "tokens_out": c.result.tokens_out, "cost_usd": c.result.cost_usd,
             "reported_cost_usd": c.result.reported_cost_usd, "latency_s": c.result.latency_s, "error": c.result.error}
            for c in trajectory.tool_calls]


def completion(trajectory: Trajectory, model: str, started: float) -> dict[str, Any]:
    """The OpenAI chat.completion body of a finished orchestration."""
    answered = trajectory.final_answer is not None
    completion_tokens = trajectory.num_policy_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(started), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": trajectory.final_answer or ""},
                     "finish_reason": "stop" if answered else "length"}],
        "usage": {"prompt_tokens": trajectory.policy_tokens_in, "completion_tokens": completion_tokens,
                  "total_tokens": trajectory.policy_tokens_in + completion_tokens},
        "orchestration": {
            "cost_usd": trajectory.cost_usd, "tool_cost_usd": trajectory.tool_cost_usd,
            "policy_cost_usd": trajectory.policy_cost_usd, "latency_s": trajectory.latency_s,
            "wall_time_s": trajectory.wall_time_s, "started": started, "finished": time.time(),
            "stop_reason": trajectory.stop_reason, "turns": len(trajectory.turns), "tool_calls": trace(trajectory),
        },
    }


@serve.deployment(num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0},
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class OrchestratorServer:
    def __init__(self, model_name: str, workers: list, env: str):
        self.model_name, self.workers, self.env = model_name, workers, env
        self._next = itertools.cycle(range(len(workers)))

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "orchestra_rl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        parsed = await read_chat_request(request, [self.model_name], "the orchestrator")
        if isinstance(parsed, JSONResponse):
            return parsed
        model, _, user = parsed
        started = time.time()
        task = Task(task_id=f"request-{uuid.uuid4().hex[:12]}", family="served", question=user[-1], answer="",
                    env=self.env)
        worker = self.workers[next(self._next)]
        try:
            _, (trajectory,) = await worker.rollout.remote([task], [0], False)
        except ray.exceptions.RayError as e:  # a dead worker: this request fails, the server goes on
            logging.getLogger(__name__).warning("orchestration failed: %s", e)
            return error_response(503, f"the rollout worker failed: {type(e).__name__}")
        if trajectory.stop_reason == "error":
            return error_response(502, f"the orchestration failed: {trajectory.error}")
        return completion(trajectory, model, started)


def served_env(cfg: Config) -> str:
    """A request is a question: it runs in the first configured question-answering environment (with its tools)."""
    env = next((name for name, s in env_sources(cfg).items() if s.kind in ("qa", "benchmark")), None)
    if env is None:
        raise ConfigError("env", "serving needs a question-answering source (qa, or a benchmark) among "
                                 f"{', '.join(env_sources(cfg))}")
    return env


def app_name(cfg: Config) -> str:
    """The Serve application of the orchestrator on cfg.serve.route (one per route)."""
    return "orchestrator" + cfg.serve.route.replace("/", "-")


def start_orchestrator(cfg: Config, workers: list, ready_timeout_s: float = 120.0) -> str:
    """Serve the orchestrator on `workers` (rollout worker actors) at cfg.serve.host:port{route}; returns the base
    URL. Serve keeps one HTTP address per cluster: where the simulated experts run, it is theirs (the same port)."""
    env = served_env(cfg)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(OrchestratorServer.bind(cfg.serve.model_name, workers, env), name=app_name(cfg),
              route_prefix=cfg.serve.route)
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "") else cfg.serve.host
    return wait_until_serving(f"http://{host}:{cfg.serve.port}{cfg.serve.route}/v1", ready_timeout_s,
                              "the orchestrator")


def stop_orchestrator(cfg: Config) -> None:
    serve.delete(app_name(cfg))
