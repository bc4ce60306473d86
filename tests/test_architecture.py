"""The package's shape: no import cycles, nats-py internals only behind buslib/_nats, small modules.

The layers themselves (no upward import) are checked by import-linter (`lint-imports`,
pyproject.toml's [tool.importlinter]); `make test` runs it.
"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

import buslib
from buslib._nats import fastpath

PACKAGE = Path(buslib.__file__).parent
# nats-py's private attributes, read on its objects (a class's own ``self._nc`` is fine)
PRIVATE_NATS = re.compile(
    r"(?<!self)\._(send_command|flush_queue|flush_pending|parse_header_lines|server_info|wait_for_msgs_task"
    r"|stop_processing|ackd)\b|\bjs\._(prefix|nc)\b|\bmsg\._client\b"
)
LONGEST = 440  # lines: "about 400", a module read in one sitting


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def test_no_module_imports_itself_back_through_others():
    graph = grimp.build_graph("buslib", include_external_packages=False)
    packages = {m for m in graph.modules if (_modules().get(m) or Path()).name == "__init__.py"}
    # A package's __init__ only re-exports its modules; what matters is between modules.
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d not in packages}
        for m in graph.modules
        if m not in packages
    }
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for dep in sorted(edges.get(module, ())):
            if seen.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in seen:
                visit(dep, [*path, dep])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nats_py_private_attributes_are_used_only_in_buslib_nats():
    leaks = [
        f"{name}:{number}: {line.strip()}"
        for name, path in _modules().items()
        if not name.startswith("buslib._nats")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_NATS.search(line) and not line.lstrip().startswith("#")
    ]
    assert leaks == []


def test_the_fast_paths_find_every_hook_in_this_nats_py():
    """If nats-py changes its internals, this fails first (the bus then runs on the public fallbacks)."""
    assert fastpath._probe()


def test_modules_stay_readable_in_one_sitting():
    too_long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > LONGEST}
    assert too_long == {}
