from transformers import AutoTokenizer

from orchestra_rl.envs.qa import question_with_preference
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.types import Task

TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                          "required": ["query"]}}}]
TASK = Task(task_id="t1", family="lookup", question="What is the population of Veltoria?", answer="5",
            preference_text="Prefer local tools.")


def test_segments_concatenate_to_the_template_rendering_of_the_conversation(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    chat = ChatFormat(tokenizer, "SYS", TOOLS)
    turn1 = '<tool_call>\n{"name": "search", "arguments": {"query": "Veltoria"}}\n</tool_call>'
    turn2 = "I am not sure.<|im_end|>"  # the policy ended its turn itself (sampled the end-of-turn token)
    ids = (chat.prompt_ids(question_with_preference(TASK)) + tokenizer.encode(turn1, add_special_tokens=False)
           + chat.continuation_ids(["Veltoria has 5 people.", "second"], ended_with_eos=False)
           + tokenizer.encode(turn2, add_special_tokens=False)
           + chat.continuation_ids(["Error: no tool call found"], ended_with_eos=True,
                                   user_message="And its area?"))  # a multi-party episode: the user speaks
    expected = tokenizer.apply_chat_template([
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "What is the population of Veltoria?\n\nUser preference: Prefer local tools."},
        {"role": "assistant", "content": turn1},
        {"role": "tool", "content": "Veltoria has 5 people."},
        {"role": "tool", "content": "second"},
        {"role": "assistant", "content": "I am not sure."},
        {"role": "tool", "content": "Error: no tool call found"},
        {"role": "user", "content": "And its area?"},
    ], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids) == expected


def test_stop_token_for_tool_call_end(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    chat = ChatFormat(tokenizer, "SYS", TOOLS)
    assert tokenizer.decode([chat.tool_call_end_id]) == "</tool_call>"
    assert chat.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
