"""The default policy: a random-initialised Qwen3-architecture LM with a locally trained byte-level BPE tokenizer.

Nothing is downloaded. The folder written is an ordinary HF model directory (config.json, model.safetensors,
tokenizer.json with a Qwen3-style chat template) that `transformers` Auto* classes and vLLM load offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from orchestra_rl.config import Config, ModelConfig
from orchestra_rl.models.pretrain import DRILLS_VERSION, ChatContext, pretrain_copying
from orchestra_rl.tools.registry import config_schemas

# Added tokens as in Qwen3: the chat markers are special (dropped when decoding with skip_special_tokens); the
# tool-call markers are plain added tokens, so they survive detokenisation and </tool_call> is one stop token.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

PRETRAIN_FILE = "pretrain.json"  # what copy pretraining did (models/pretrain.py), in the model folder

# A compact Qwen3-style template (HF renders with trim_blocks, hence {{ '\\n' }} after tags): tools listed in the system turn, assistant tool calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results in a user turn inside <tool_response>.
CHAT_TEMPLATE = (
    "{% set sys = messages[0].content if messages and messages[0].role == 'system' else '' %}"
    "{% if tools %}"
    "<|im_start|>system\n{% if sys %}{{ sys }}\n\n{% endif %}# Tools\n\nYou may call one of these functions:\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\n"
    "For a function call, return a JSON object with the function name and arguments within <tool_call></tool_call> "
    "tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif sys %}<|im_start|>system\n{{ sys }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for call in m.tool_calls or [] %}{% set f = call.function if call.function is defined else call %}"
    "<tool_call>\n{\"name\": {{ f.name | tojson }}, \"arguments\": "
    "{{ f.arguments if f.arguments is string else f.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ m.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the BPE merges are learnt from: the shapes the orchestrator reads and writes (tool calls, numbers, code,
# questions). Byte-level BPE encodes any text; this only makes common pieces short.
_TRAINING_LINES = [
    '{"name": "python", "arguments": {"code": "print(12 * 34 + 5)"}}',
    '{"name": "search", "arguments": {"query": "population of the country"}}',
    '{"name": "answer", "arguments": {"answer": "42"}}',
    '{"name": "large_generalist", "arguments": {"question": "What is the codename?"}}',
    '{"name": "math_expert", "arguments": {"question": "What is 17 + 25?"}}',
    '{"name": "small_generalist", "arguments": {"question": "Who founded the company?"}}',
    "What is the population of the country? How many employees does the company have?",
    "What is the combined revenue of the two companies? In which year was the person born?",
    "The country has a population of 4812331 people and an area of 5120 square kilometres.",
    "The company was founded in 1987 and employs 5400 people. Its revenue is 812 million dollars.",
    "You are an orchestrator. Solve the user's task by calling tools. Finish by calling the answer tool.",
    "Error: invalid arguments for tool. Unknown tool. Several tool calls in one turn.",
    "def f(x):\n    return x * 2\nprint(f(21))\n",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } : , . ? ! \" '",
    # The fixed text of the chat template and of tool schemas, which every prompt repeats.
    "# Tools\n\nYou may call one of these functions:\n<tools>\n</tools>\n\nFor a function call, return a JSON "
    "object with the function name and arguments within <tool_call></tool_call> tags:",
    '{"type": "function", "function": {"name": "search", "description": "Search the local document corpus; returns '
    'the top passages. Use it to look facts up.", "parameters": {"type": "object", "properties": {"query": '
    '{"type": "string", "description": "What to search for."}}, "required": ["query"], "additionalProperties": false}}}',
    '{"type": "function", "function": {"name": "python", "description": "Run a Python 3 program in a sandbox and '
    'return what it prints.", "parameters": {"type": "object", "properties": {"code": {"type": "string", '
    '"description": "The program."}}, "required": ["code"]}}}',
    '{"name": "math_expert", "description": "A small, cheap mathematics specialist model. Ask it a math question in '
    'plain words.", "parameters": {"type": "object", "properties": {"question": {"type": "string"}, "context": '
    '{"type": "string"}}, "required": ["question"]}}',
    '{"name": "answer", "description": "Give the final answer to the user\'s task. Ends the episode.", '
    '"parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}',
    "A large, expensive and slow frontier model; the most capable expert for hard questions. A small, cheap "
    "general-purpose model. User preference: Avoid the large generalist model. Prefer local tools. Keep the cost "
    "as low as possible.",
] + [f"{a} * {b} + {a + b} = {a * b + a + b}" for a in range(3, 400, 7) for b in range(11, 90, 13)]


def pre_tokenizer():
    """Every digit a token of its own, then byte-level BPE: a number is the same tokens wherever it is written
    (" 4812331" in a question and "(4812331" in code would otherwise share none), so copying it into a tool call
    is copying tokens — which a small transformer learns — not re-spelling it. The generated names of the world
    are rare words, spelt in short pieces that are the same after a space or a quote."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])


def _train_tokenizer(vocab_size: int, word_tokens: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS) - len(TOOL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_LINES * 8, trainer=trainer)
    # padding_side etc. must go to the constructor, or save_pretrained does not record them.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=1 << 16,
        chat_template=CHAT_TEMPLATE,
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    fast.add_tokens(TOOL_TOKENS)
    # Whole words as single tokens (the tool names): choosing a tool is then one decision, not a spelling.
    fast.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in word_tokens])
    return fast


def chat_context(cfg: Config) -> ChatContext:
    """The system turn the configured policy's prompts open with, which copy pretraining reads its drills after."""
    return ChatContext(cfg.rollout.system_prompt, tuple(config_schemas(cfg.tools)))


def tiny_model_dir(cfg: ModelConfig, context: ChatContext = ChatContext()) -> Path:
    """Where the tiny model for this architecture config and pretraining context lives (content-addressed)."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "seed", "word_tokens", "pretrain_steps",
            "pretrain_batch_size", "pretrain_lr", "pretrain_reading_share")
    spec = {k: asdict(cfg)[k] for k in keys} | {"template": CHAT_TEMPLATE, "lines": _TRAINING_LINES,
                                                 "pre_tokenizer": repr(pre_tokenizer()),
                                                 "drills": DRILLS_VERSION if cfg.pretrain_steps else 0,
                                                 "context": asdict(context) if cfg.pretrain_steps else None}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return Path(os.path.expanduser(cfg.cache_dir)) / f"tiny-qwen3-{digest}"


def build_tiny_model(cfg: ModelConfig, context: ChatContext = ChatContext()) -> Path:
    """Build (once) and return the tiny model's HF directory; copy pretraining reads its drills after `context`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tiny_model_dir(cfg, context)
    if (out / "model.safetensors").exists():
        return out
    tokenizer = _train_tokenizer(cfg.vocab_size, list(cfg.word_tokens))
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    pretrained = None
    if cfg.pretrain_steps > 0:
        pretrained = pretrain_copying(model, tokenizer, list(cfg.word_tokens), cfg.pretrain_steps,
                                      cfg.pretrain_batch_size, cfg.pretrain_lr, cfg.seed,
                                      reading_share=cfg.pretrain_reading_share, context=context)
        print(f"copy pretraining: {cfg.pretrain_steps} steps in {pretrained['seconds']:.0f} s, loss "
              f"{pretrained['loss_first']:.2f} -> {pretrained['loss_last']:.2f}, held-out calls written exactly "
              f"{pretrained['copy_accuracy']:.2f}"
              + "".join(f", {kind} {pretrained[f'{kind}_accuracy']:.2f}" for kind in ("reading", "chain")
                        if f"{kind}_accuracy" in pretrained))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if pretrained is not None:
            (tmp / PRETRAIN_FILE).write_text(json.dumps(pretrained, indent=1) + "\n")
        os.replace(tmp, out)  # atomic: concurrent builders never see a half-written folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "model.safetensors").exists():
            raise
    return out


def resolve_model_path(cfg: Config) -> str:
    """The HF directory of the configured policy: model.path if set, else the (built-once) tiny model, pretrained
    in the configured prompts' system turn."""
    if cfg.model.path:
        path = Path(os.path.expanduser(cfg.model.path))
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.path={cfg.model.path}: no HF model directory there (config.json missing)")
        return str(path)
    return str(build_tiny_model(cfg.model, chat_context(cfg)))
