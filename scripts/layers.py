"""Counts the package's imports that run up a layer and its import circles (docs/architecture.md).

    python scripts/layers.py        # prints both lists; exit status 1 when either is not empty

Every import counts, a function's own included (import-linter sees those too). The layers are read from
the layers contract in pyproject.toml (`[tool.importlinter]`), the one `lint-imports` checks.
"""
from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llm_magics"


def contract_layers(pyproject: Path = ROOT / "pyproject.toml") -> list[list[str]]:
    """The rooms of each layer, top to bottom, as the import-linter layers contract declares them (`|` and
    `:` siblings share a layer; `(room)` is a room that may be absent)."""
    try:
        import tomllib
    except ImportError:   # Python 3.10
        import tomli as tomllib
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == "layers")
    return [[name.strip().strip("()") for name in line.replace("|", ":").split(":")] for line in contract["layers"]]


# Top to bottom: a module imports only from its own layer or lower ones. The package's own __init__ is the face.
LAYERS = contract_layers()


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str | None:
    if not node.level:
        return node.module
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module → the package's modules it imports (anywhere in its text)."""
    root = next(iter(mods)).split(".")[0]
    out: dict[str, set[str]] = collections.defaultdict(set)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                name = _imported(mod, node, is_pkg)
                if not name or name.split(".")[0] != root:
                    continue
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == root]
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != mod:
                    out[mod].add(target)
    return out


def room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(mod: str) -> int | None:
    if room(mod) == "__init__":
        return 0
    return next((i for i, rooms in enumerate(LAYERS) if room(mod) in rooms), None)


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module lies in a higher layer (or in none)."""
    out = []
    for a, targets in graph.items():
        for b in targets:
            la, lb = layer(a), layer(b)
            if la is None or lb is None or lb < la:
                out.append((a, b))
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(10000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    graph = edges(modules())
    up, circles = upward(graph), cycles(graph)
    print("imports that run up a layer (or into no layer):", len(up))
    for a, b in up:
        print("  ", a, "->", b, "" if layer(b) is not None and layer(a) is not None else "(unlayered)")
    print("module cycles:", len(circles))
    for comp in circles:
        print("  ", comp)
    return 1 if up or circles else 0


if __name__ == "__main__":
    sys.exit(main())
