"""The built-in function-call domain `orders`, generated from a seed (no model): a shop's customers and orders,
tools to look orders up and change their status, and tasks with golden actions (docs/environments.md).

Small on purpose, so that the tiny CPU policy can learn it: every task needs one call and a message.

  status   "What is the status of my order ORD-7?"   golden get_order(ORD-7); the status must be said
  cancel   "Please cancel my order ORD-3." (pending) golden set_order_status(ORD-3, cancelled)
  refuse   the same for a shipped/delivered order    golden get_order only: the policy forbids the cancellation
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

STATUSES = ["pending", "shipped", "delivered", "cancelled"]
ITEMS = ["lamp", "kettle", "backpack", "chair", "headphones", "blender", "umbrella", "notebook", "toaster", "rug"]
NAMES = ["Ada", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
VERSION = 1  # bump when the generator changes: the cache folder name holds it

POLICY = """You are the customer service agent of a small shop. You help customers with their orders.
- Look an order up with get_order before you act on it.
- When a customer asks for the status of an order, tell them its status.
- Only a pending order can be cancelled: call set_order_status with value cancelled. A shipped or delivered order
  cannot be cancelled: tell the customer so, and change nothing.
- When the customer's request is done, write a last message that ends with ###STOP###."""

SCHEMA = {"name": "orders", "entities": {
    "customer": {"key": "customer_id", "fields": {"name": {}}, "find_by": ["name"]},
    "order": {"key": "order_id", "fields": {"customer_id": {}, "item": {}, "status": {"values": STATUSES,
                                                                                      "writable": True}},
              "find_by": ["customer_id"]},
}}


def generate(seed: int = 0, num_orders: int = 24, test_fraction: float = 0.25) -> dict[str, object]:
    """The domain's files as Python objects: domain.json, db.json, policy.md, tasks.json."""
    rng = random.Random(seed)
    customers = {f"C-{i + 1}": {"name": name} for i, name in enumerate(NAMES)}
    orders = {f"ORD-{i + 1}": {"customer_id": rng.choice(list(customers)), "item": rng.choice(ITEMS),
                               "status": STATUSES[i % 3]} for i in range(num_orders)}  # pending/shipped/delivered
    tasks = []
    for order_id, order in orders.items():
        item = order["item"]
        tasks.append({"id": f"status_{order_id}", "user": {
            "reason_for_call": f"Hi, what is the status of my order {order_id}?",
            "known_info": f"It is my {item}.", "task_instructions": "You only want to know the status."},
            "actions": [{"name": "get_order", "arguments": {"order_id": order_id}}],
            "communicate_info": [order["status"]], "reward_basis": ["DB", "COMMUNICATE"]})
        cancel = {"reason_for_call": f"Hi, please cancel my order {order_id}.", "known_info": f"It is my {item}.",
                  "task_instructions": "If it cannot be cancelled, you accept that."}
        if order["status"] == "pending":
            tasks.append({"id": f"cancel_{order_id}", "user": cancel, "reward_basis": ["DB"], "actions": [
                {"name": "set_order_status", "arguments": {"order_id": order_id, "value": "cancelled"}}]})
        else:
            tasks.append({"id": f"refuse_{order_id}", "user": cancel, "reward_basis": ["DB"], "actions": [
                {"name": "get_order", "arguments": {"order_id": order_id}}]})
    rng.shuffle(tasks)
    n_test = round(len(tasks) * test_fraction)
    for i, task in enumerate(tasks):
        task["split"] = "test" if i < n_test else "train"
    return {"domain.json": SCHEMA, "db.json": {"customer": customers, "order": orders}, "policy.md": POLICY,
            "tasks.json": tasks}


def write_domain(files: dict[str, object], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=1)
        (folder / name).write_text(text + ("" if text.endswith("\n") else "\n"))


def build_orders_domain(cache_dir: Path, seed: int = 0) -> Path:
    """The generated domain's folder in `cache_dir`, written once (atomically: a half-written folder is never
    seen) and reused."""
    folder = cache_dir / f"orders-v{VERSION}-seed{seed}"
    if folder.is_dir():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".orders-"))
    try:
        write_domain(generate(seed), tmp)
        tmp.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
