"""The models a τ²-Bench episode calls for itself, through litellm as tau2 does, on OpenAI-compatible endpoints
(config `EndpointConfig`): tau2's LLM user simulator (`LLMUser`) and the judge of NL assertions (`judging`). Their
calls, tokens and $ are counted per episode, never charged to the orchestrator."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from orchestra_rl.config import EndpointConfig, UserConfig
from orchestra_rl.tools.base import Pricing


def litellm_args(endpoint: EndpointConfig, api_key: str) -> dict[str, Any]:
    return {"api_base": endpoint.base_url, "api_key": api_key, "temperature": endpoint.temperature,
            "timeout": endpoint.timeout_s, "num_retries": endpoint.max_retries}


def new_usage() -> dict[str, Any]:
    return {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}


def add_usage(usage: dict[str, Any], pricing: Pricing, reply_usage: dict | None) -> None:
    reply_usage = reply_usage or {}
    tokens_in, tokens_out = reply_usage.get("prompt_tokens", 0), reply_usage.get("completion_tokens", 0)
    usage["calls"] += 1
    usage["tokens_in"] += tokens_in
    usage["tokens_out"] += tokens_out
    usage["cost_usd"] += pricing.cost(tokens_in, tokens_out)


# tau2's NL-assertion evaluator calls the module-level `generate` with its module constants as the judge model; we
# replace that one name (once, per process) by a call to the judge bound to the grading thread, so that episodes of
# environments with different judges grade concurrently and each judge's usage lands in its own episode.
_judge_binding = threading.local()


def _judged_generate(model: str, messages: list, **_: Any):
    from tau2.utils.llm_utils import generate

    binding = getattr(_judge_binding, "judge", None)
    if binding is None:
        raise RuntimeError("NL assertions graded outside an episode with a configured judge")
    endpoint, api_key, usage = binding
    reply = generate(model=f"openai/{endpoint.model}", messages=messages, **litellm_args(endpoint, api_key))
    add_usage(usage, Pricing(endpoint.price_in_per_mtok, endpoint.price_out_per_mtok), reply.usage)
    return reply


def install_judge() -> None:
    from tau2.evaluator import evaluator_nl_assertions

    evaluator_nl_assertions.generate = _judged_generate


@contextlib.contextmanager
def judging(endpoint: EndpointConfig, api_key: str, usage: dict[str, Any]) -> Iterator[None]:
    """In this thread, tau2's NL-assertion evaluator asks `endpoint` and counts its calls into `usage`."""
    _judge_binding.judge = (endpoint, api_key, usage)
    try:
        yield
    finally:
        _judge_binding.judge = None


class LLMUser:
    """tau2's LLM user simulator: `UserSimulator` with its guidelines and the task's scenario, calling the
    configured endpoint through litellm (as tau2 does) as an OpenAI-compatible model. Where the domain gives the
    user tools (telecom), the simulator's calls run against this episode's environment and their results go back
    to it, as in tau2's orchestrator. Blocking: called in a thread. Its token use and cost (at the configured
    prices) are tracked, never charged to the orchestrator."""

    def __init__(self, task, cfg: UserConfig, api_key: str, domain, history: list):
        from tau2.user.base import is_valid_user_history_message
        from tau2.user.user_simulator import UserSimulator

        self.domain = domain
        self.pricing = Pricing(cfg.price_in_per_mtok, cfg.price_out_per_mtok)
        tools = domain.get_user_tools() if domain.user_tools else None
        self.sim = UserSimulator(tools=tools, instructions=str(task.user_scenario), llm=f"openai/{cfg.model}",
                                 llm_args=litellm_args(cfg, api_key))
        self.state = self.sim.get_init_state([m for m in history if is_valid_user_history_message(m)])
        self.usage = new_usage()

    def reply(self, message, transcript: list, transferred: bool) -> tuple[str, bool]:
        """The user's next words after the agent's `message` (and any tool calls of their own, appended to the
        `transcript` with their results); whether they end the conversation. A transfer to a human agent is in
        the conversation the simulator reads (tau2's guidelines say how to answer it)."""
        from tau2.data_model.message import MultiToolMessage

        while True:
            said, self.state = self.sim.generate_next_message(message, self.state)
            add_usage(self.usage, self.pricing, said.usage)
            transcript.append(said)
            if not said.is_tool_call():
                return said.content or "", self.sim.is_stop(said)
            results = [self.domain.get_response(call) for call in said.tool_calls]
            self.domain.sync_tools()
            transcript.extend(results)
            message = results[0] if len(results) == 1 else MultiToolMessage(role="tool", tool_messages=results)
