"""The shape the architecture promises (docs/architecture.md): role folders import each other without cycles, and
no module grows past what a reader takes in at once."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orchestra_rl"
MAX_MODULE_LINES = 400


def role_imports() -> dict[str, set[str]]:
    """Role folder -> the other role folders it imports from (lazy imports inside functions included)."""
    roles = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    graph: dict[str, set[str]] = {r: set() for r in roles}
    for role in roles:
        for path in (PACKAGE / role).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestra_rl."):
                    target = node.module.split(".")[1]
                    if target in roles and target != role:
                        graph[role].add(target)
    return graph


def test_role_folders_import_each_other_without_cycles():
    graph = role_imports()
    assert graph["rollout"] and graph["sft"]  # the walk sees imports at all

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if found := cycle_from(nxt, path + [nxt]):
                return found
        return None

    for role in sorted(graph):
        assert cycle_from(role, [role]) is None, f"import cycle: {' -> '.join(cycle_from(role, [role]))}"


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
