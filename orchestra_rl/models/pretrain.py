"""Copy pretraining of the tiny base model: what a pretrained language model brings that a random one lacks.

A real orchestrator starts from a pretrained LM, which copies a name or a number from its context into what it
writes without effort. The random-initialised tiny model does not, and SFT on a few hundred demonstrations does
not teach it (it writes plausible but invented names and numbers into its calls: argument fidelity ~0), so RL can
never find that python and search are the cheap right answer for arithmetic and lookups. This stage gives the
tiny model that skill before any demonstration: short drills, each a question with invented names and numbers
followed by one tool call whose argument copies from it. The loss collapses once the model forms copying
(induction) heads, after ~1000 steps of 32 drills on 2 cores.

The drills teach copying, not routing: the tool of a drill is drawn uniformly, independently of the question
(an arithmetic question is as often sent to search as to python), and the names and numbers are invented afresh
(a random stream of their own, not the task world's entities). Argument shapes are those of the default tools
(python: code, search: query, answer: answer, any other tool word: question).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from orchestra_rl.data.world import InventedNames

# The argument each drill tool takes; a tool word not listed here takes a "question" (the experts).
DRILL_ARGUMENT = {"python": "code", "search": "query", "answer": "answer"}
_ENTITY_QUESTIONS = ("In what year was {} founded?", "What is the population of {}?",
                     "How many employees does {} have?", "What is the area of {} in square kilometres?",
                     "Who founded {}?", "What is the internal project codename of {}?")
_PAIR_QUESTIONS = ("How many employees do {} and {} have in total?", "What is the combined population of {} and {}?",
                   "How many years after {} was founded was {} born?", "How much larger is {} than {}?")
_KEYWORDS = ("employees", "population", "founded", "born", "area")
_COMPANY = ("Industries", "Systems", "Labs", "Holdings", "Dynamics", "Works")


@dataclass(frozen=True)
class Drill:
    question: str
    tool: str
    arguments: dict[str, str]

    def prompt(self) -> str:
        return f"<|im_start|>user\n{self.question}<|im_end|>\n<|im_start|>assistant\n"

    def completion(self) -> str:
        call = json.dumps({"name": self.tool, "arguments": self.arguments})
        return f"<tool_call>\n{call}\n</tool_call><|im_end|>"


class DrillMaker:
    """Drills from a seeded stream: invented names (the world's syllables, a stream of their own) and numbers."""

    def __init__(self, tools: list[str], seed: int):
        if not tools:
            raise ValueError("copy pretraining needs the tool words (model.word_tokens) to write calls to")
        self.tools, self.rng = list(tools), random.Random(f"copy-drills/{seed}")
        self.names = InventedNames(self.rng)

    def name(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return f"{self.names.word()} {self.rng.choice(_COMPANY)}"
        if r < 0.6:
            return f"{self.names.word((1, 2))} {self.names.word((1, 2))}"  # a person
        return self.names.word((1, 3))

    def number(self) -> str:
        return str(self.rng.randint(1, 10 ** self.rng.randint(1, 7)))

    def question(self) -> tuple[str, str, list[str]]:
        """(question, its arithmetic expression or "", the names and numbers in it)."""
        kind = self.rng.random()
        if kind < 0.35:
            numbers = [self.number() for _ in range(3)]
            ops = [self.rng.choice("+-*") for _ in range(2)]
            expression = f"{numbers[0]} {ops[0]} {numbers[1]} {ops[1]} {numbers[2]}"
            return f"What is {expression}?", expression, numbers
        if kind < 0.7:
            name = self.name()
            return self.rng.choice(_ENTITY_QUESTIONS).format(name), "", [name]
        names = [self.name(), self.name()]
        return self.rng.choice(_PAIR_QUESTIONS).format(*names), "", names

    def drill(self) -> Drill:
        question, expression, keys = self.question()
        tool = self.rng.choice(self.tools)  # independent of the question: copying, not routing
        argument = DRILL_ARGUMENT.get(tool, "question")
        if argument == "code":
            value = f"print({expression})" if expression else f"print({question!r})"
        elif argument == "query":
            value = question if len(keys) == 1 or expression else \
                f"{self.rng.choice(keys)} {self.rng.choice(_KEYWORDS)}"
        elif argument == "answer":
            value = self.rng.choice(keys)
        else:
            value = question
        return Drill(question, tool, {argument: value})


def encode_drill(tokenizer: Any, drill: Drill) -> tuple[list[int], list[int], list[int]]:
    """(token ids, loss mask: the call's tokens, judged mask: the call's tokens but its tool name's). The name is
    drawn at random, so no model can predict it; copying is judged on the rest, given the name. The text is
    tokenised whole, as the chat template's output is."""
    prompt, completion = drill.prompt(), drill.completion()
    encoded = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    name_start = len(prompt) + completion.index(json.dumps(drill.tool))
    name_end = name_start + len(json.dumps(drill.tool))
    loss = [int(end > len(prompt)) for _, end in encoded["offset_mapping"]]
    judged = [int(keep and not (start < name_end and end > name_start))
              for keep, (start, end) in zip(loss, encoded["offset_mapping"])]
    return encoded["input_ids"], loss, judged


def _batch(tokenizer: Any, drills: list[Drill]) -> tuple[Any, Any, Any]:
    """(token ids, loss mask, judged mask) with the masks aligned to the predicted tokens (ids[:, 1:]),
    right-padded: the padding comes after all that counts."""
    import torch

    encoded = [encode_drill(tokenizer, d) for d in drills]
    width = max(len(ids) for ids, _, _ in encoded)
    ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _, _ in encoded])
    loss, judged = (torch.tensor([m[k] + [0] * (width - len(m[k])) for m in encoded], dtype=torch.bool)[:, 1:]
                    for k in (1, 2))
    return ids, loss, judged


def copy_accuracy(model: Any, tokenizer: Any, drills: list[Drill]) -> float:
    """The share of drills whose call, given its tool name, the model writes exactly when decoding greedily: the
    argmax is right at every judged token given the right ones before it (one forward pass, the verdict of
    generating)."""
    import torch

    ids, _, judged = _batch(tokenizer, drills)
    with torch.no_grad():
        right = model(ids).logits[:, :-1].argmax(-1) == ids[:, 1:]
    return (right | ~judged).all(dim=1).float().mean().item()


def pretrain_copying(model: Any, tokenizer: Any, tools: list[str], steps: int, batch_size: int, lr: float,
                     seed: int, eval_drills: int = 256) -> dict[str, Any]:
    """Train `model` in place on `steps` batches of fresh drills (loss on the call only); returns what it did:
    the loss at its first step and over its last 20, the copy accuracy on held-out drills, seconds."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    evaluator = DrillMaker(tools, seed + 1)
    held_out = [evaluator.drill() for _ in range(eval_drills)]
    maker = DrillMaker(tools, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, losses = time.perf_counter(), []
    model.train()
    with tqdm(range(steps), desc="copy pretraining", unit="step", dynamic_ncols=True) as bar:
        for _ in bar:
            ids, targets, _ = _batch(tokenizer, [maker.drill() for _ in range(batch_size)])
            mask = targets.reshape(-1).float()
            logits = model(ids).logits[:, :-1]
            token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           ids[:, 1:].reshape(-1), reduction="none")
            loss = (token_loss * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "loss_first": losses[0] if losses else None,
            "loss_last": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
            "copy_accuracy": copy_accuracy(model, tokenizer, held_out), "held_out_drills": len(held_out),
            "seconds": time.perf_counter() - start}
