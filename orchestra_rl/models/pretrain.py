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

Reading drills (a share `reading_share` of them) teach the other half of what a base model brings: using what a
tool said. Each is a conversation of the default tools' calls and their real responses (BM25 search over a
corpus, the value python prints), then the call that uses them: the answer read out of a search passage, the
expression written from two passages' numbers, the answer read from python's output. Their worlds are built by
the task world's own generator with their own (negative) seeds, so they are of the same genre and share no entity
with any task world (data.seed is non-negative). The conversation is fixed context, not trained on: the loss
falls on the arguments of the final call, never on which tool a drill calls, so drills teach no routing.

The last phase reads every drill after the system turn the policy's prompts open with (`ChatContext`: the
configured system prompt and tool schemas, ~750 tokens), as an episode's calls are. Drills learnt without it are
not written in it: the model that wrote 0.73 of held-out copy drills and 0.68 of reading drills exactly wrote none
of either behind the system turn. Learnt behind it from the start, copying forms slowly (0.42 and 0.07 after 2000
steps); formed without it first and then carried behind it at a lower rate, it holds (0.84 and 0.83 after 600
more steps). The system turn is fixed context: its keys and values are computed once per batch, without gradient.
"""

from __future__ import annotations

import ast
import json
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from orchestra_rl.config import DataConfig, ToolConfig
from orchestra_rl.data.reading import UNKNOWN, find_span, python_code, search_query
from orchestra_rl.data.world import InventedNames, build_world, evaluate_arithmetic, load_tasks
from orchestra_rl.types import Task, ToolCall

DRILLS_VERSION = 4  # part of the model folder's address: bump when the drills or their schedule change

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
    context: tuple[dict[str, str], ...]  # chat messages before the call: the question, earlier calls, responses
    tool: str
    arguments: dict[str, str]
    random_tool: bool = False  # the tool was drawn independently of the context (copy drills)

    @property
    def question(self) -> str:
        return self.context[0]["content"]

    def prompt(self, tokenizer: Any) -> str:
        return tokenizer.apply_chat_template(list(self.context), tokenize=False, add_generation_prompt=True)

    def completion(self) -> str:
        return ToolCall(self.tool, self.arguments).render() + "<|im_end|>"


@dataclass(frozen=True)
class ChatContext:
    """What every prompt of the policy opens with: the system prompt and the tools' schemas."""

    system_prompt: str = ""
    tool_schemas: tuple[dict[str, Any], ...] = ()

    def system_turn(self, tokenizer: Any) -> str:
        """The system turn as the chat template renders it ("" for an empty context)."""
        if not self.system_prompt and not self.tool_schemas:
            return ""
        return tokenizer.apply_chat_template([{"role": "system", "content": self.system_prompt}], tokenize=False,
                                             tools=list(self.tool_schemas) or None)


def _user(question: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": question},)


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
        return Drill(_user(question), tool, {argument: value}, random_tool=True)


# The default tools' ways through each family a reading drill is drawn from (search, then python, then answer).
READING_PLANS = {"lookup": ("search",), "multihop": ("search", "search", "python"), "arithmetic": ("python",)}
# How often each step of those ways is drilled, (family, responses before the call): weight. Weighted by difficulty:
# the multihop chain's python call, which writes the numbers of two passages (often with thousands separators) into
# one expression without them, was written exactly on 0.25 of held-out drills when every family was drawn alike
# (it was 1/9 of the drills), while reading python's printed answer (1/3 of them) was at 1.00.
READING_STEPS = {("lookup", 1): 2, ("multihop", 1): 1, ("multihop", 2): 3, ("multihop", 3): 1, ("arithmetic", 1): 1}
CHAIN_STEP = ("multihop", 2)  # judged apart as well ("chain" drills): the step the multihop family needs most
READING_TOOLS = ("search", "python", "answer")
# The phases, as shares of the steps. Reading builds on copying: copy drills alone until READING_FROM (their loss
# collapses, the model copies, after ~500-1000 steps), then reading drills join; mixed in from the start, copying
# did not form in 2000 steps. From CONTEXT_FROM every drill is read after the system turn, at a lower rate: what
# formed in short drills is carried to where the policy will use it.
READING_FROM = 0.4
CONTEXT_FROM = 0.75
CONTEXT_LR_SCALE = 1 / 3
READING_BATCH_DIVISOR = 4  # a reading batch holds a quarter of batch_size: its drills are ~6 times longer
READING_TOP_K = 3  # passages per search, as conf/tools/default.yaml
READING_WORLDS = 8  # worlds per reading stream (each 24 countries, companies and people, as the default world)
HELD_OUT_WORLDS = 4  # worlds of the held-out stream: enough distinct multihop questions for 256 chain drills


def reads(tools: list[str], reading_share: float) -> bool:
    """Whether reading drills join the copy drills: a share of them is configured and they can call their tools."""
    return reading_share > 0 and set(READING_TOOLS) <= set(tools)


def _printed(code: str) -> str:
    """What python prints for a drill's program: print(<arithmetic>) or print(<a string literal>)."""
    inner = code.removeprefix("print(").removesuffix(")")
    try:
        return str(evaluate_arithmetic(inner))
    except ValueError:
        return str(ast.literal_eval(inner))


def reading_call(task: Task, responses: list[str]) -> tuple[str, dict[str, str]]:
    """The call after `responses` on the task's READING_PLANS way, its arguments filled as the SFT demonstrations
    fill them (search_query, python_code), then the answer the last response gives."""
    plan, step = READING_PLANS[task.family], len(responses)
    if step < len(plan):
        if plan[step] == "search":
            return "search", {"query": search_query(task, step)}
        return "python", {"code": python_code(task, responses)}
    if plan[-1] == "search":  # a lookup: the fact as the passage writes it
        return "answer", {"answer": find_span(responses[-1], task.answer) or UNKNOWN}
    return "answer", {"answer": responses[-1].strip().splitlines()[-1]}  # python's output


class ReadingDrillMaker:
    """Reading drills from a seeded stream over `worlds` worlds of their own: stream `seed` uses world seeds
    -(1 + seed * READING_WORLDS + k), so the held-out stream (seed + 1) reads about entities never trained on."""

    def __init__(self, seed: int, worlds: int = READING_WORLDS):
        from orchestra_rl.tools.search import SearchTool

        if not 0 < worlds <= READING_WORLDS:
            raise ValueError(f"worlds must be in 1..{READING_WORLDS}, got {worlds}")
        self.rng = random.Random(f"reading-drills/{seed}")
        self.worlds = []
        with tempfile.TemporaryDirectory() as tmp:  # the tasks and the search index are read into memory
            for k in range(worlds):
                data = DataConfig(seed=-(1 + seed * READING_WORLDS + k), cache_dir=tmp, test_fraction=0.0,
                                  families=list(READING_PLANS), tasks_per_family=200)
                folder = build_world(data)
                search = SearchTool("search", ToolConfig(kind="search", top_k=READING_TOP_K), folder)
                by_family: dict[str, list[Task]] = {family: [] for family in READING_PLANS}
                for task in load_tasks(folder, "train"):
                    by_family[task.family].append(task)
                self.worlds.append((by_family, search))

    def drill(self, step: tuple[str, int] | None = None) -> Drill:
        """A drill of `step` (family, responses before the call), by default drawn by READING_STEPS' weights."""
        family, target = step or self.rng.choices(list(READING_STEPS), weights=list(READING_STEPS.values()))[0]
        tasks, search = self.rng.choice(self.worlds)
        task = self.rng.choice(tasks[family])
        context, responses = list(_user(task.question)), []
        for _ in range(target):
            name, arguments = reading_call(task, responses)
            response = search.bm25(arguments["query"]) if name == "search" else _printed(arguments["code"])
            context += [{"role": "assistant", "content": ToolCall(name, arguments).render()},
                        {"role": "tool", "content": response}]
            responses.append(response)
        name, arguments = reading_call(task, responses)
        return Drill(tuple(context), name, arguments)


def encode_drill(tokenizer: Any, drill: Drill) -> tuple[list[int], list[int], list[int]]:
    """(token ids, loss mask, judged mask). Both cover the call; the judged mask never its tool name (copying is
    judged given the tool), the loss mask only where the name was drawn at random (copy drills: a uniform prior, no
    routing). A reading drill's tool follows its fixed plan, so training on it would teach routing. The text is
    tokenised whole, as the chat template's output is."""
    prompt, completion = drill.prompt(tokenizer), drill.completion()
    encoded = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    name = json.dumps(drill.tool)
    name_start = len(prompt) + completion.index(name)
    name_end = name_start + len(name)
    call = [int(end > len(prompt)) for _, end in encoded["offset_mapping"]]
    judged = [int(keep and not (start < name_end and end > name_start))
              for keep, (start, end) in zip(call, encoded["offset_mapping"])]
    return encoded["input_ids"], call if drill.random_tool else judged, judged


def _batch(tokenizer: Any, drills: list[Drill]) -> tuple[Any, Any, Any]:
    """(token ids, loss mask, judged mask), the masks aligned to the predicted tokens ids[:, 1:]; right-padded: the
    padding comes after all that counts."""
    import torch

    encoded = [encode_drill(tokenizer, d) for d in drills]
    width = max(len(ids) for ids, _, _ in encoded)
    ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _, _ in encoded])
    loss, judged = (torch.tensor([m[k] + [0] * (width - len(m[k])) for m in encoded], dtype=torch.bool)[:, 1:]
                    for k in (1, 2))
    return ids, loss, judged


def context_ids(tokenizer: Any, context: ChatContext) -> list[int]:
    return tokenizer.encode(context.system_turn(tokenizer), add_special_tokens=False)


def _logits(model: Any, prefix: list[int], ids: Any) -> Any:
    """The model's logits on the batch `ids`, each row read after the `prefix` tokens; their keys and values are
    computed once, without gradient (fixed context, never trained on)."""
    import torch

    if not prefix:
        return model(ids).logits
    with torch.no_grad():
        cache = model(torch.tensor([prefix]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    return model(ids, past_key_values=cache, use_cache=True).logits


def copy_accuracy(model: Any, tokenizer: Any, drills: list[Drill], context: ChatContext = ChatContext(),
                  batch_size: int = 64) -> float:
    """The share of drills whose call, given its tool name, the model writes exactly when decoding greedily after
    `context`: the argmax is right at every judged token given the right ones before it (a forward pass, the
    verdict of generating)."""
    import torch

    right, prefix = [], context_ids(tokenizer, context)
    for i in range(0, len(drills), batch_size):
        ids, _, judged = _batch(tokenizer, drills[i:i + batch_size])
        with torch.no_grad():
            correct = _logits(model, prefix, ids)[:, :-1].argmax(-1) == ids[:, 1:]
        right += (correct | ~judged).all(dim=1).tolist()
    return sum(right) / len(right)


def held_out_drills(tools: list[str], seed: int, n: int, reading: bool) -> dict[str, list[Drill]]:
    """The drills the stage is judged on, by kind: n of each, from the streams of seed + 1 (reading drills: about a
    world never trained on): copy, reading (drawn as trained) and chain (the multihop chain's python call)."""
    copy_maker = DrillMaker(tools, seed + 1)
    held_out = {"copy": [copy_maker.drill() for _ in range(n)]}
    if reading:
        reading_maker = ReadingDrillMaker(seed + 1, worlds=HELD_OUT_WORLDS)
        held_out["reading"] = [reading_maker.drill() for _ in range(n)]
        held_out["chain"] = [reading_maker.drill(CHAIN_STEP) for _ in range(n)]
    return held_out


def pretrain_copying(model: Any, tokenizer: Any, tools: list[str], steps: int, batch_size: int, lr: float,
                     seed: int, reading_share: float = 0.0, context: ChatContext = ChatContext(),
                     eval_drills: int = 256) -> dict[str, Any]:
    """Train `model` in place on `steps` batches of fresh drills, after the first READING_FROM of the steps a share
    `reading_share` of them of reading drills (they need the default tools' names among `tools`), after CONTEXT_FROM
    all read after `context`; returns what it did: the loss at its first step and over its last 20, the held-out
    accuracy (after `context`) of copy and of reading drills (these about a world never trained on), seconds."""
    import torch
    from tqdm import tqdm

    reading = reads(tools, reading_share)
    if reading_share > 0 and not reading:
        raise ValueError(f"reading drills call the tools {', '.join(READING_TOOLS)}: add them to model.word_tokens "
                         "or set model.pretrain_reading_share to 0")
    torch.manual_seed(seed)
    held_out = held_out_drills(tools, seed, eval_drills, reading)
    copier, reader = DrillMaker(tools, seed), ReadingDrillMaker(seed) if reading else None
    mixer, prefix = random.Random(f"drill-mix/{seed}"), context_ids(tokenizer, context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, losses = time.perf_counter(), []
    model.train()
    with tqdm(range(steps), desc="copy pretraining", unit="step", dynamic_ncols=True) as bar:
        for step in bar:
            if reader is not None and step >= steps * READING_FROM and mixer.random() < reading_share:
                drills = [reader.drill() for _ in range(max(1, batch_size // READING_BATCH_DIVISOR))]
            else:
                drills = [copier.drill() for _ in range(batch_size)]
            in_context = step >= steps * CONTEXT_FROM
            for group in optimizer.param_groups:
                group["lr"] = lr * CONTEXT_LR_SCALE if in_context else lr
            ids, mask, _ = _batch(tokenizer, drills)
            logits = _logits(model, prefix if in_context else [], ids)[:, :-1]
            token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           ids[:, 1:].reshape(-1), reduction="none")
            weights = mask.reshape(-1).float()
            loss = (token_loss * weights).sum() / weights.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    report = {"steps": steps, "batch_size": batch_size, "lr": lr, "reading_share": reading_share,
              "loss_first": losses[0], "loss_last": sum(losses[-20:]) / len(losses[-20:]),
              "context_tokens": len(prefix), "held_out_drills": eval_drills, "seconds": time.perf_counter() - start}
    report.update({f"{kind}_accuracy": copy_accuracy(model, tokenizer, drills, context)
                   for kind, drills in held_out.items()})
    return report
