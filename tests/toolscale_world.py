"""A small library domain with a code toolkit, as ToolScale synthesis would write it: used as a domain folder by
the environment tests, and as the recorded answers of a model by the synthesis tests."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = {"entities": {
    "book": {"key": "book_id", "fields": {"title": {}, "author": {},
                                          "status": {"values": ["available", "lent", "lost"]}}, "find_by": ["author"]},
    "member": {"key": "member_id", "fields": {"name": {}}},
}}
POLICY = ("You are the librarian's assistant. Look a book up before acting on it. Only an available book can be "
          "lent; a lent book can be returned. End with ###STOP### once the member's request is done.")
DB = {
    "book": {"B1": {"title": "Dune", "author": "Herbert", "status": "available"},
             "B2": {"title": "Emma", "author": "Austen", "status": "lent"},
             "B3": {"title": "Persuasion", "author": "Austen", "status": "available"},
             "B4": {"title": "Ulysses", "author": "Joyce", "status": "lost"}},
    "member": {"M1": {"name": "Ana"}, "M2": {"name": "Ben"}},
}
CODE = '''
def get_book(db, book_id):
    if book_id not in db["book"]:
        raise KeyError(f"no book {book_id}")
    return {"book_id": book_id, **db["book"][book_id]}


def find_books_by_author(db, author):
    return sorted(k for k, b in db["book"].items() if b["author"] == author)


def lend_book(db, book_id, member_id):
    book = db["book"][book_id]
    if member_id not in db["member"]:
        raise KeyError(f"no member {member_id}")
    if book["status"] != "available":
        raise ValueError(f"{book_id} is {book['status']}, not available")
    book["status"] = "lent"
    return {"book_id": book_id, "status": "lent"}


def return_book(db, book_id):
    db["book"][book_id]["status"] = "available"
    return {"book_id": book_id, "status": "available"}
'''


def _params(**props: str) -> dict:
    return {"type": "object", "properties": {k: {"type": "string", "description": v} for k, v in props.items()},
            "required": list(props)}


TOOLS = [
    {"name": "get_book", "description": "A book's record.", "parameters": _params(book_id="the book"),
     "writes": False},
    {"name": "find_books_by_author", "description": "The ids of an author's books.",
     "parameters": _params(author="the author's name"), "writes": False},
    {"name": "lend_book", "description": "Lend an available book to a member.",
     "parameters": _params(book_id="the book", member_id="the member"), "writes": True},
    {"name": "return_book", "description": "Take a lent book back.", "parameters": _params(book_id="the book"),
     "writes": True},
]


def task(reason: str, actions: list[tuple[str, dict]], info: list[str] = (), basis: list[str] = ("DB",)) -> dict:
    return {"user": {"reason_for_call": reason, "known_info": "My member id is M1.",
                     "task_instructions": "Accept what the librarian says."},
            "actions": [{"name": n, "arguments": a} for n, a in actions],
            "communicate_info": list(info), "reward_basis": list(basis)}


TASKS = [
    task("Is Dune (B1) available?", [("get_book", {"book_id": "B1"})], ["available"], ["DB", "COMMUNICATE"]),
    task("I would like to borrow Persuasion, B3.", [("get_book", {"book_id": "B3"}),
                                                     ("lend_book", {"book_id": "B3", "member_id": "M1"})]),
    task("I am bringing Emma (B2) back.", [("return_book", {"book_id": "B2"})]),
]


def write_library(folder: Path, tasks: list[dict] = TASKS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"domain.json": {"name": "library", **SCHEMA}, "db.json": DB, "tools.json": TOOLS,
             "tasks.json": [{"id": f"t{i}", "split": "train", **t} for i, t in enumerate(tasks)]}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=1))
    (folder / "tools.py").write_text(CODE)
    (folder / "policy.md").write_text(POLICY)
    return folder
