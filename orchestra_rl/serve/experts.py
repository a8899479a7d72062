"""Simulated expert models behind a real OpenAI-compatible HTTP API (Ray Serve on 127.0.0.1).

The orchestrator calls them exactly as it would call a paid API: POST /v1/chat/completions with a `model` name.
Each expert (data.experts) answers from the world's ground truth with its configured per-family accuracy, after
a lognormal latency, and reports token usage so calls have a dollar cost.

How an answer is found: the question of every task (both splits) and every fact question of the world, hidden
ones included, is indexed by its normalised text; the longest indexed question contained in the last user
message is the one asked. Otherwise a plain arithmetic expression in the message is evaluated (with `ast`, never
`eval`). Otherwise the expert says it does not know.

Usage is simulated: prompt_tokens = characters of all messages // 4 (at least 1); completion_tokens is drawn
uniformly within ±25 % of the expert's output_tokens (a real model's reasoning is longer than its short reply).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from orchestra_rl.config import Config
from orchestra_rl.serve.openai_api import message_text, read_chat_request, wait_until_serving
from orchestra_rl.data.world import evaluate_arithmetic, fact_questions, load_tasks, load_world

APP_NAME = "experts"
DONT_KNOW = "I don't know the answer to that question."
_ARITHMETIC = re.compile(r"[-(\d][-+*/%().\d\s]*")  # candidate spans; evaluate_arithmetic decides

app = FastAPI(title="orchestra_rl simulated experts")


def _match_key(text: str) -> str:
    """Lowercase words, numbers and arithmetic operators, space-separated and padded, so that `key in message`
    matches whole words whatever other punctuation, spacing or casing the orchestrator used."""
    return " " + " ".join(re.findall(r"[a-z0-9]+|[-+*/%()]", text.lower().replace(",", ""))) + " "


def question_index(world_dir: str | Path) -> list[tuple[str, str, str]]:
    """(match key, family, answer) for every question an expert can answer, longest question first."""
    entries = {(t.question, t.family, t.answer) for split in ("train", "test") for t in load_tasks(world_dir, split)}
    entries |= {(q, family, answer) for family, q, answer, _ in fact_questions(load_world(world_dir))}
    return sorted(((_match_key(q), f, a) for q, f, a in entries), key=lambda e: (-len(e[0]), e[0]))


# Experts are I/O-bound (they sleep to simulate latency): no CPU reserved, many requests in flight at once.
# No access log: a training run makes thousands of calls, and their cost and latency land on the trajectories.
@serve.deployment(num_replicas=1, max_ongoing_requests=512, ray_actor_options={"num_cpus": 0},
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class ExpertServer:
    def __init__(self, experts: dict[str, dict[str, Any]], index: list[tuple[str, str, str]],
                 latency_scale: float, seed: int):
        self.experts, self.index, self.latency_scale = experts, index, latency_scale
        # One stream per replica: reproducible start, different every call, and not the other replicas' stream.
        self.rng = random.Random(f"{seed}/{serve.get_replica_context().rank.rank}")
        self.string_answers = sorted({a for _, _, a in index if not re.fullmatch(r"-?\d+", a)})

    def _find(self, message: str) -> tuple[str, str] | None:
        """(family, correct answer) of what the message asks, or None."""
        key = _match_key(message)
        for question, family, answer in self.index:
            if question in key:
                return family, answer
        for expression in sorted(_ARITHMETIC.findall(message), key=len, reverse=True):
            if re.search(r"\d\s*[-+*/%]", expression):
                try:
                    value = evaluate_arithmetic(expression)
                except ValueError:
                    continue
                return "arithmetic", str(int(value)) if float(value).is_integer() else f"{value:g}"
        return None

    def _wrong(self, answer: str) -> str:
        """A plausible wrong answer: a nearby number, or another name of the world with as many words."""
        if re.fullmatch(r"-?\d+", answer):
            gold = int(answer)
            return str(gold + self.rng.choice((-1, 1)) * max(1, round(abs(gold) * self.rng.uniform(0.02, 0.3))))
        words = len(answer.split())
        return self.rng.choice([a for a in self.string_answers if a != answer and len(a.split()) == words]
                               or ["unknown"])

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "orchestra_rl"}
                                           for name in self.experts]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        parsed = await read_chat_request(request, self.experts, "the simulated experts")
        if isinstance(parsed, JSONResponse):
            return parsed
        model, messages, user = parsed

        expert = self.experts[model]
        found = self._find(user[-1])
        if found is None:
            content = DONT_KNOW
        else:
            family, answer = found
            correct = self.rng.random() < expert["accuracy"].get(family, 0.0)
            content = f"The answer is {answer if correct else self._wrong(answer)}."

        if expert["latency_mean_s"] > 0 and self.latency_scale > 0:
            sigma = expert["latency_sigma"]  # lognormal with the configured mean: mu = ln(mean) - sigma^2 / 2
            latency = self.rng.lognormvariate(math.log(expert["latency_mean_s"]) - sigma ** 2 / 2, sigma)
            await asyncio.sleep(latency * self.latency_scale)

        prompt_tokens = max(1, sum(len(message_text(m.get("content"))) for m in messages) // 4)
        completion_tokens = max(1, round(expert["output_tokens"] * self.rng.uniform(0.75, 1.25)))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def start_experts(cfg: Config, world_dir: str | Path, ready_timeout_s: float = 120.0) -> str:
    """Serve every expert of cfg.data.experts on cfg.serve.host:port; returns the base URL (".../v1").

    Runs on the caller's Ray when it is initialised (the driver's cluster config decides which); otherwise Serve
    calls ray.init() itself. The question index is built here and shipped to the replica, so the replica needs
    no access to world_dir (it may run on another node). Serve has one HTTP address per Ray cluster: a second
    call with another port keeps the first address; call stop_experts() in between.
    """
    experts = {name: asdict(e) for name, e in cfg.data.experts.items()}
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's start-up INFO lines, not over progress bars
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    deployment = ExpertServer.options(num_replicas=cfg.serve.num_replicas)
    serve.run(deployment.bind(experts, question_index(world_dir), cfg.serve.latency_scale, cfg.seed),
              name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "") else cfg.serve.host
    return wait_until_serving(f"http://{host}:{cfg.serve.port}/v1", ready_timeout_s, "simulated experts")


def stop_experts() -> None:
    """Shut Ray Serve down (the experts application with it); Ray itself keeps running."""
    serve.shutdown()
