"""Kill an owner's nats-servers when the owner dies (run as a script, imports nothing of buslib).

The owner writes ``guard PID [DIR]`` / ``release PID`` lines to our stdin. End of input
means the owner is gone (even SIGKILL closes its end of the pipe): kill what is still
guarded and remove its temporary folder.
"""

import os
import shutil
import signal
import sys


def main() -> None:
    guarded: dict[int, str] = {}
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        pid_text, _, folder = rest.partition(" ")
        if command == "guard" and pid_text.isdigit():
            guarded[int(pid_text)] = folder
        elif command == "release" and pid_text.isdigit():
            guarded.pop(int(pid_text), None)
    for pid, folder in guarded.items():
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
    import time

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
