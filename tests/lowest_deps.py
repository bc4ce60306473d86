"""Print pip requirements pinning each of the kit's core dependencies to the lowest version pyproject.toml allows.

    python tests/lowest_deps.py            # nats-py==2.16 ... (one per line)

``make test`` installs these into ``.venv-lowest`` and runs the bus tests there once, so a
floor in pyproject.toml is a version that was tested, not a guess. Only the dependencies the
bus itself imports are pinned (nats-py, pydantic); the rest comes as pip resolves it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PINNED = ("nats-py", "pydantic")


def lowest(spec: str) -> str | None:
    """``"nats-py>=2.16,<3"`` -> ``"nats-py==2.16"``; None without a lower bound."""
    match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*)$", spec)
    if not match:
        return None
    name, constraints = match.groups()
    floor = re.search(r">=\s*([0-9][0-9.]*)", constraints.split(";")[0])
    return f"{name}=={floor.group(1)}" if floor else None


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        pin = lowest(spec)
        if pin and pin.split("==")[0].lower() in PINNED:
            print(pin)


if __name__ == "__main__":
    main()
