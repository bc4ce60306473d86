"""Generate the learner copies of the exercises from the solution notebooks.

    python scripts/make_exercises.py            # write exercises/exNN_topic.ipynb
    python scripts/make_exercises.py --check    # exit 1 if a learner copy is stale

The solution notebooks in ``exercises/solutions/exNN_topic.ipynb`` are the one source of truth
(named ``exNN_`` so that a lesson and its exercise, open side by side, have different tabs). A
learner copy ``exercises/exNN_topic.ipynb`` is the solution notebook with:

- cells tagged ``solution`` dropped (e.g. the ``strict_mode()`` cell);
- in code cells, everything after a ``# solution`` line replaced by blanks: ``name = ____``
  for each name the solution defines at top level (assignments, functions, classes), so the
  learner's check says "not attempted" until they write their own; ``# your code here`` if
  the solution defines no name;
- relative links in markdown cells re-based from ``exercises/solutions/`` to ``exercises/``, so
  they resolve in both; a link to another solution notebook becomes a link to its learner copy
  (the "next exercise" link of a solution leads to the next solution, of a learner copy to the
  next learner copy);
- outputs and execution counts cleared; cell ids kept (stable diffs), metadata sorted.
"""

from __future__ import annotations

import argparse
import ast
import posixpath
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "exercises" / "solutions"
LEARNER = ROOT / "exercises"
MARKER = "# solution"
SOLUTION_TAG = "solution"
SOLUTIONS_REL, LEARNER_REL = "exercises/solutions", "exercises"  # as links see them, from the repository root
_LINK = re.compile(r"(\]\()([^()\s]+)(\))")  # a markdown inline link's target: [text](target)
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|#|/)")  # http:, mailto:, #anchor, /absolute
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def defined_names(code: str) -> list[str]:
    """Top-level names the code binds (assignments, defs, classes), in order, without repeats.

    Raises:
        SyntaxError: the solution code does not parse (top-level ``await`` is allowed).
    """
    tree = compile(code, "<solution>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    names: list[str] = []

    def add(target: ast.expr) -> None:
        if isinstance(target, ast.Name) and target.id not in names:
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                add(element)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                add(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name not in names:
            names.append(node.name)
    return names


def blank_out(source: str) -> str:
    """Replace the code after the ``# solution`` line with placeholders (see the module docstring)."""
    lines = source.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == MARKER:
            kept, solution = lines[:index], "\n".join(lines[index + 1 :])
            names = defined_names(solution)
            blanks = [f"{name} = ____  # your code here" for name in names] or ["# your code here"]
            return "\n".join(kept + blanks)
    return source


def rebase_link(target: str) -> str:
    """A relative link of a solution notebook, as the learner copy must write it.

    >>> rebase_link("../../notebooks/01_persistence.ipynb")
    '../notebooks/01_persistence.ipynb'
    >>> rebase_link("ex02_event_bus.ipynb#setup")
    'ex02_event_bus.ipynb#setup'
    """
    if _EXTERNAL.match(target):
        return target
    path, hash_, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(SOLUTIONS_REL, path))
    if posixpath.dirname(resolved) == SOLUTIONS_REL and resolved.endswith(".ipynb"):
        resolved = posixpath.join(LEARNER_REL, posixpath.basename(resolved))  # another solution: its learner copy
    return posixpath.relpath(resolved, LEARNER_REL) + hash_ + anchor


def rebase_links(markdown: str) -> str:
    """Every relative link target of a markdown text re-based (see :func:`rebase_link`)."""
    return _LINK.sub(lambda m: m.group(1) + rebase_link(m.group(2)) + m.group(3), markdown)


def learner_copy(solution: nbformat.NotebookNode, *, source_name: str) -> nbformat.NotebookNode:
    """The learner's notebook generated from a solution notebook."""
    notebook = nbformat.v4.new_notebook()
    # Fixed metadata: executing a solution records the author's Python version; keep that out.
    notebook.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python", "pygments_lexer": "ipython3"}}
    notebook.metadata["buslib"] = {
        "generated_from": f"solutions/{source_name}",
        "generator": "scripts/make_exercises.py",
    }
    for cell in solution.cells:
        tags = list(cell.metadata.get("tags", []))
        if SOLUTION_TAG in tags:
            continue
        metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(blank_out(cell.source), metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(rebase_links(cell.source), metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata)
        new.id = cell.get("id") or new.id
        notebook.cells.append(new)
    return notebook


def render(path: Path) -> str:
    """The learner copy of the solution notebook at ``path``, as text."""
    solution = nbformat.read(path, as_version=4)
    text = nbformat.writes(learner_copy(solution, source_name=path.name))  # nbformat sorts keys
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate learner exercise notebooks from the solutions.")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a learner copy is stale or missing"
    )
    args = parser.parse_args(argv)
    sources = sorted(SOLUTIONS.glob("*.ipynb"))
    if not sources:
        print(f"No solution notebooks in {SOLUTIONS}.", file=sys.stderr)
        return 1
    stale = []
    for source in sources:
        target = LEARNER / source.name
        text = render(source)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target.relative_to(ROOT)}")
    orphans = sorted(p for p in LEARNER.glob("*.ipynb") if not (SOLUTIONS / p.name).exists())
    if args.check:
        for target in stale:
            print(f"stale: {target.relative_to(ROOT)} (run: python scripts/make_exercises.py)", file=sys.stderr)
        for orphan in orphans:
            print(
                f"no solution for {orphan.relative_to(ROOT)}: add exercises/solutions/{orphan.name} or delete it",
                file=sys.stderr,
            )
        return 1 if stale or orphans else 0
    if not stale:
        print("learner copies are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
