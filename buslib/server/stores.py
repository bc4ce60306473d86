"""Where servers keep their messages: temporary stores under one cleaned root, claimed stores.

>>> from buslib.server.stores import temp_store_root
>>> temp_store_root().name.startswith("buslib-")
True

Temporary stores live under one root per user, named ``<owner pid>-<random>``, so a start
can remove the stores of owners that are gone (a kernel killed by nbval never runs
``atexit``). A persistent store is *claimed*: two nats-servers writing one JetStream store
corrupt it, and nats-server itself does not refuse, so the owner's pid (and, once it is
ready, the server's URL) goes into a file in the store.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buslib.errors import ServerError

__all__ = [
    "StoreOwner",
    "claim_store",
    "pid_alive",
    "record_url",
    "release_store",
    "remove_dead_owners_stores",
    "store_in_use",
    "store_owner",
    "temp_store_root",
]

_OWNER_FILE = ".buslib-owner"
_CLAIMED: dict[Path, int] = {}  # store -> id() of the EmbeddedServer of this process holding it


def temp_store_root() -> Path:
    """The one folder under which every temporary store lives (cleaned of dead owners)."""
    try:
        user = getpass.getuser()  # env vars, then the password database; one root per user
    except Exception:  # no user name at all (some containers): still one stable root
        user = "user"
    return Path(tempfile.gettempdir()) / f"buslib-{user}"


def remove_dead_owners_stores(root: Path) -> list[Path]:
    """Remove temp stores whose owning process is gone; return what was removed."""
    removed = []
    for entry in root.iterdir():
        owner = entry.name.split("-", 1)[0]
        if entry.is_dir() and owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class StoreOwner:
    """The live process that holds a persistent store, and the URL its server serves (if known)."""

    pid: int
    url: str | None


def store_owner(store: Path) -> StoreOwner | None:
    """Who holds ``store``: another live process, or None (free, ours, or a stale claim)."""
    try:
        pid_text, _, url = (store / _OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text or 0)
    except (OSError, ValueError):
        return None
    if pid and pid != os.getpid() and pid_alive(pid):
        return StoreOwner(pid, url or None)
    return None


def store_in_use(store: Path) -> int | None:
    """The pid of the live process (this one included) whose server holds ``store``, or None."""
    try:
        pid = int((store / _OWNER_FILE).read_text().strip().partition(" ")[0] or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid_alive(pid) else None


def claim_store(store: Path, holder: object) -> None:
    """Claim ``store`` for ``holder`` (an EmbeddedServer), or say who holds it.

    Raises:
        ServerError: another server of this program, or another live program, holds it.
    """
    held_by = _CLAIMED.get(store)
    if held_by is not None and held_by != id(holder):
        raise ServerError(
            f"The store folder {store} is already used by another EmbeddedServer in this program. "
            "Two servers on one store would corrupt it: stop() the other one first, or restart() it."
        )
    owner = store_owner(store)
    if owner is not None:
        serving = f", serving {owner.url}" if owner.url else ""
        use = f"NATS_URL={owner.url} make lab" if owner.url else "its URL as NATS_URL"
        raise ServerError(
            f"A nats-server is already running on the store folder {store} (process {owner.pid}{serving}; "
            "maybe `buslib server` in another terminal). Two servers on one store would corrupt it.\n"
            f"Use the running one ({use}), or stop it first (Ctrl-C in its terminal), or start a second "
            "server with its own store and ports: buslib server --port 0 --store-dir .buslib/store2"
        )
    (store / _OWNER_FILE).write_text(str(os.getpid()))
    _CLAIMED[store] = id(holder)


def record_url(store: Path, holder: object, url: str) -> None:
    """Note in a claimed store which URL its server serves (for the next one who asks)."""
    if _CLAIMED.get(store) == id(holder):
        (store / _OWNER_FILE).write_text(f"{os.getpid()} {url}")


def release_store(store: Path, holder: object) -> None:
    """Give up a claim made by ``holder``."""
    if _CLAIMED.get(store) == id(holder):
        del _CLAIMED[store]
        (store / _OWNER_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (POSIX and Windows)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped by its parent) still answers kill(pid, 0). Linux
    # shows its state in /proc; elsewhere (macOS) there is no cheap way, so it counts as alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
