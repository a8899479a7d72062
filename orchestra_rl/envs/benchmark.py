"""QA benchmarks (HLE, FRAMES: data/benchmarks.py) as an environment: the QA loop of the built-in world (a question,
the configured tools, the episode ends on a final answer), graded by the benchmark's own rules.

The grade is the rule of the task's answer type (exact match with numeric equality; the letter of a multiple
choice); where the rules reject an answer and `env.<name>.judge` names a model, that model decides in HLE's style
(extract the final answer, compare it with the correct one: reward/outcome.py). A failed judge call or a reply
without a verdict leaves the rule's grade, said in the grade's info. The judge's calls, tokens and $ are counted
per episode (env_info.judge), never charged to the orchestrator: grading is the benchmark's cost, not the policy's.
"""

from __future__ import annotations

from orchestra_rl.config import EnvSourceConfig
from orchestra_rl.envs.base import Grade, Observation, endpoint_api_key
from orchestra_rl.envs.qa import CallTool, QAEnvironment, QAEpisode, question_with_preference
from orchestra_rl.reward.outcome import (ANSWER_TYPE_VERIFIERS, BENCHMARK_JUDGE_PROMPT, exact_match,
                                         parse_benchmark_verdict)
from orchestra_rl.tools.base import Pricing
from orchestra_rl.tools.llm import LLMTool
from orchestra_rl.types import Task, ToolCall

JUDGE_MAX_TOKENS = 512  # the extracted answer, a line of reasoning and the verdict


class BenchmarkEnvironment(QAEnvironment):
    def __init__(self, name: str, source: EnvSourceConfig, call_tool: CallTool, final_tools: set[str]):
        super().__init__(call_tool, final_tools)
        self.name, self.source = name, source
        # The key is checked now (a missing variable is an error before any episode); the client is made on first
        # use, on the event loop that runs the episodes.
        self.judge_api_key = endpoint_api_key(source.judge, f"env.{name}.judge") if source.judge.model else ""
        self._judge: LLMTool | None = None

    @property
    def judge(self) -> LLMTool | None:
        j = self.source.judge
        if j.model and self._judge is None:
            self._judge = LLMTool(f"env.{self.name}.judge", "the benchmark's answer judge", model=j.model,
                                  base_url=j.base_url, api_key=self.judge_api_key,
                                  pricing=Pricing(j.price_in_per_mtok, j.price_out_per_mtok), timeout_s=j.timeout_s,
                                  max_retries=j.max_retries, max_tokens=JUDGE_MAX_TOKENS, temperature=j.temperature)
        return self._judge

    async def reset(self, task: Task, group_index: int) -> BenchmarkEpisode:
        return BenchmarkEpisode(self, task)

    async def close(self) -> None:
        if self._judge is not None:
            judge, self._judge = self._judge, None  # a later episode would get a fresh client
            await judge.close()


def rule_score(answer: str | None, task: Task) -> float:
    if answer is None:
        return 0.0
    return ANSWER_TYPE_VERIFIERS.get(task.metadata.get("answer_type", ""), exact_match)(answer, task.answer)


class BenchmarkEpisode(QAEpisode):
    def __init__(self, env: BenchmarkEnvironment, task: Task):
        super().__init__(env, question_with_preference(task))
        self.env: BenchmarkEnvironment = env
        self.task = task
        self.final_answer: str | None = None

    async def step(self, turn_index: int, message: str, calls: list[ToolCall]) -> Observation:
        observation = await super().step(turn_index, message, calls)
        if observation.done:
            self.final_answer = observation.final_answer
        return observation

    async def grade(self, stop_reason: str) -> Grade:
        rule = rule_score(self.final_answer, self.task)
        info: dict = {"rule": rule, "answer_type": self.task.metadata.get("answer_type", "exactMatch")}
        judge = self.env.judge
        if judge is None or self.final_answer is None or rule == 1.0:  # a rule match is certain and costs nothing
            return Grade(rule, info)
        prompt = BENCHMARK_JUDGE_PROMPT.format(question=self.task.question, response=self.final_answer,
                                               gold=self.task.answer)
        result = await judge.call({"question": prompt})
        verdict = None if result.error else parse_benchmark_verdict(result.text)
        info["judge"] = {"calls": 1, "tokens_in": result.tokens_in, "tokens_out": result.tokens_out,
                         "cost_usd": result.cost_usd, "usage_estimated": result.usage_estimated,
                         "verdict": verdict, "error": result.error}
        if verdict is None:
            info["judge"]["error"] = result.error or f"no 'correct: yes|no' in the reply: {result.text[:200]!r}"
            return Grade(rule, info)
        return Grade(verdict, info)
