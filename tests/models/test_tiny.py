import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestra_rl.models.tiny import build_tiny_model, chat_context, resolve_model_path


def test_tiny_model_loads_offline_with_auto_classes(tiny_model_path, make_config):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 <= n_params <= 15e6
    assert model.config.model_type == "qwen3" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == "<|im_end|>"
    # Built once: a second call returns the same folder without rebuilding.
    cfg = make_config()
    mtime = (build_tiny_model(cfg.model, chat_context(cfg)) / "model.safetensors").stat().st_mtime
    assert resolve_model_path(make_config()) == tiny_model_path
    assert (build_tiny_model(cfg.model, chat_context(cfg)) / "model.safetensors").stat().st_mtime == mtime
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("What is 2+2?")])).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_tool_markers_are_single_tokens_that_survive_decoding(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    for marker in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|im_end|>"):
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1, marker
    text = '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call><|im_end|>'
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text.removesuffix("<|im_end|>")


def test_chat_template_renders_tools_calls_and_responses(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tools = [{"type": "function", "function": {"name": "search", "description": "d",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
        {"role": "tool", "content": "R1"},
        {"role": "tool", "content": "R2"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nSYS\n\n# Tools\n\nYou may call one of these functions:\n<tools>\n"
        + json.dumps(tools[0]) + "\n</tools>\n\nFor a function call, return a JSON object with the function name "
        "and arguments within <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, "
        "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nQ?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"x\"}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nR1\n</tool_response>\n<tool_response>\nR2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tool_names_are_single_tokens(tiny_model_path, make_config):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    names = make_config().model.word_tokens
    assert "math_expert" in names
    for name in names:
        ids = tokenizer.encode(f'{{"name": "{name}", "arguments": {{}}}}', add_special_tokens=False)
        assert name in [tokenizer.decode([i]) for i in ids], name
