"""Nothing left behind: a watchdog process kills an owner's nats-servers when the owner dies.

>>> watchdog().guard(server_pid, temp_store)     # doctest: +SKIP
>>> watchdog().release(server_pid)              # after a clean stop

One small Python process per owner reads ``guard PID [DIR]`` / ``release PID`` lines on a
pipe. When the pipe closes without a goodbye (the owner was killed, even by SIGKILL, when
``atexit`` never runs), it kills every guarded server and removes its temporary folder.

This file is both the owner's side (:class:`Watchdog`) and the watchdog itself (run as a
script, ``python watchdog.py OWNER_PID``), so it imports nothing but the standard library.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Watchdog", "new_process_group", "watchdog"]


def new_process_group() -> dict[str, object]:
    """``Popen`` options that keep a child out of the owner's process group.

    Ctrl-C in a terminal or a notebook interrupt must not reach a server directly: the
    owner decides when it stops.
    """
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined,unused-ignore]
    return {"start_new_session": True}


class Watchdog:
    """The owner's end of the pipe to its watchdog process (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__)), str(os.getpid())],
                    stdin=subprocess.PIPE,
                    text=True,
                    **new_process_group(),  # type: ignore[call-overload]
                )
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def guard(self, pid: int, tempdir: Path | None) -> None:
        """Kill process ``pid`` (and remove ``tempdir``) if this process dies first."""
        self._send(f"guard {pid} {tempdir or ''}".rstrip())

    def release(self, pid: int) -> None:
        """Process ``pid`` has ended cleanly: stop guarding it."""
        try:
            self._send(f"release {pid}")
        except (BrokenPipeError, OSError):
            pass


_WATCHDOG: Watchdog | None = None


def watchdog() -> Watchdog:
    """This process's watchdog."""
    global _WATCHDOG
    if _WATCHDOG is None:
        _WATCHDOG = Watchdog()
    return _WATCHDOG


# -- the watchdog process itself ---------------------------------------------------------
def main() -> None:
    guarded: dict[int, str] = {}
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        pid_text, _, folder = rest.partition(" ")
        if command == "guard" and pid_text.isdigit():
            guarded[int(pid_text)] = folder
        elif command == "release" and pid_text.isdigit():
            guarded.pop(int(pid_text), None)
    for pid, folder in guarded.items():  # end of input without a release: the owner is gone
        try:
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except OSError:
            pass
        if folder:
            _wait_gone(pid)
            shutil.rmtree(folder, ignore_errors=True)


def _wait_gone(pid: int) -> None:
    # The server is not our child, so we cannot wait() for it; give it a moment to
    # release its files before removing them (matters on Windows).
    if os.name == "nt":
        time.sleep(0.2)
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        if _zombie(pid):  # dead; only its parent's wait() is missing
            return
        time.sleep(0.01)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # Linux; elsewhere wait the full second
            return stat.read().rpartition(")")[2].split()[:1] == ["Z"]
    except OSError:
        return False


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt aimed at the owner is not for us
    main()
