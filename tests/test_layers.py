"""The house: layers import only downwards, and no module imports itself in a cycle.

Counts every import in the package, including those inside functions (a deferred import is
still a dependency). Layers, bottom to top: errors, progress and kernels; storage and traces; serve;
tune; and the faces that only parse and call (cli, server, torch, demo).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bandstore"

#: What each part of the package may import from bandstore (besides itself).
ALLOWED = {
    "errors": set(),
    "progress": set(),
    "options": {"errors", "kernels"},  # kernels.cache.NEVER only
    "kernels": {"errors"},
    "storage": {"errors", "options", "kernels", "progress"},
    "traces": {"errors", "options", "kernels", "progress"},
    "serve": {"errors", "options", "kernels", "storage", "traces", "progress"},
    "tune": {"errors", "options", "kernels", "storage", "traces", "serve", "progress"},
}
FACES = {"cli", "server", "torch", "demo", "importers", "__init__", "__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                if not path.name == "__init__.py":
                    parts = parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in modules and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {m: _imports(m, p, _modules()) for m, p in _modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    part = _part(module)
    if part in FACES:
        return  # the public face and the commands may use every layer
    allowed = ALLOWED.get(part)
    assert allowed is not None, f"{module}: not in a known layer; add it to ALLOWED or FACES"
    bad = sorted(t for t in GRAPH[module] if _part(t) != part and _part(t) not in allowed)
    assert not bad, f"{module} ({part}) imports {bad}, which are not below it"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_public_face_is_explicit():
    import bandstore
    import bandstore.errors

    errors = {
        n
        for n, v in vars(bandstore.errors).items()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == "bandstore.errors"
    }
    assert errors <= set(bandstore.__all__), sorted(errors - set(bandstore.__all__))
    for name in bandstore.__all__:
        assert hasattr(bandstore, name), name
    public = {n for n in vars(bandstore) if not n.startswith("_")}
    # Subpackages appear as attributes once imported; nothing else may leak.
    subpackages = {n for n in public if (PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").is_file()}
    assert public - subpackages <= set(bandstore.__all__), sorted(
        public - subpackages - set(bandstore.__all__)
    )
