"""Token segments of a multi-turn tool-calling conversation, cut from the model's own chat template.

The policy's sampled tokens are never re-tokenised; only the pieces *between* its turns (prompt, the close of
an assistant turn, tool responses, the next assistant header) are rendered with the chat template and
tokenised here. Cutting those pieces out of a full render keeps any HF chat template (tiny, Qwen3, ...) exact.
"""

from __future__ import annotations

from typing import Any

_MARK = "\u2063orchestra-mark\u2063"  # a string no template or tool output contains


class ChatFormat:
    def __init__(self, tokenizer: Any, system_prompt: str, tool_schemas: list[dict[str, Any]]):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.tool_schemas = tool_schemas
        self.eos_token_id: int = tokenizer.eos_token_id
        close_ids = tokenizer.encode("</tool_call>", add_special_tokens=False)
        # </tool_call> as one token (tiny, Qwen3) lets the engine stop on its id; else stop on the string.
        self.tool_call_end_id: int | None = close_ids[0] if len(close_ids) == 1 else None

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool,
                tools: list[dict[str, Any]] | None = None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tool_schemas if tools is None else tools,
                                                  tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, opening: str, system_prompt: str | None = None,
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The system prompt and the user's first message, then the assistant's header. An episode may bring its
        own system prompt and tools (a τ²-Bench domain's policy and tools); None: the configured ones."""
        messages = [{"role": "system", "content": self.system_prompt if system_prompt is None else system_prompt},
                    {"role": "user", "content": opening}]
        return self._encode(self._render(messages, add_generation_prompt=True, tools=tools))

    def continuation_ids(self, tool_responses: list[str], ended_with_eos: bool,
                         user_message: str | None = None) -> list[int]:
        """Tokens after a policy turn: close the assistant turn, add one tool response per call (and the user's
        next message, in a multi-party episode), and open the next assistant turn. If the policy already sampled
        the end-of-turn token, it is not added again."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": "q"},
                    {"role": "assistant", "content": _MARK}]
        messages += [{"role": "tool", "content": r} for r in tool_responses]
        if user_message is not None:
            messages.append({"role": "user", "content": user_message})
        text = self._render(messages, add_generation_prompt=True)
        text = text[text.rindex(_MARK) + len(_MARK):]
        eos = self.tokenizer.eos_token
        if ended_with_eos and text.startswith(eos):
            text = text[len(eos):]
        return self._encode(text)
