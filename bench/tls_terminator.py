"""A TLS terminator in front of the embedded broker, for the TLS tests and bench rows.

Tansu 0.6 cannot speak TLS itself (see FACTS.md), so the broker listens in plaintext on
a loopback port and advertises this terminator's port: every client of every role then
reaches it through TLS only, as it would a managed Kafka. SIGHUP reloads the certificate
and key from their files and closes every open connection (a broker restarted with a new
certificate): clients reconnect and verify the new one.

    python -m bench.tls_terminator --listen 19093 --to 127.0.0.1:19092 --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from services.shared.broker import EmbeddedBroker, free_port
from services.shared.processes import listens, tied_to_this_process

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Terminator:
    def __init__(self, upstream: tuple[str, int], cert: str, key: str) -> None:
        self.upstream, self.cert, self.key = upstream, cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.open: set[asyncio.StreamWriter] = set()

    async def serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self.open.update((client_w, broker_w))
        try:
            await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))
        finally:
            self.open.difference_update((client_w, broker_w))

    def reload(self) -> None:
        """New handshakes present the files' certificate; open connections are dropped."""
        self.context.load_cert_chain(self.cert, self.key)
        for writer in list(self.open):
            writer.transport.abort()


async def run(listen: int, upstream: tuple[str, int], cert: str, key: str) -> None:
    terminator = Terminator(upstream, cert, key)
    server = await asyncio.start_server(terminator.serve, "127.0.0.1", listen,
                                        ssl=terminator.context)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, terminator.reload)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


class TlsBroker:
    """Tansu behind this terminator, with a CA of its own (trustme): ``bootstrap`` is the
    TLS port, ``ca`` the file clients trust. ``rotate()`` gives the broker a certificate of
    another CA (clients that trust ``ca`` are refused from then on)."""

    def __init__(self, workdir: Path) -> None:
        import trustme

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = workdir / "ca.pem"
        self._cert, self._key = workdir / "broker.pem", workdir / "broker.key"
        authority = trustme.CA()
        authority.cert_pem.write_to_path(str(self.ca))
        self._issue(authority)
        self.port = free_port()  # TLS, advertised
        self.broker = EmbeddedBroker(port=free_port(), advertised_port=self.port,
                                     log_path=workdir / "tansu.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _issue(self, authority: object) -> None:
        issued = authority.issue_cert("localhost", "127.0.0.1")  # type: ignore[attr-defined]
        issued.cert_chain_pems[0].write_to_path(str(self._cert))
        issued.private_key_pem.write_to_path(str(self._key))

    def start(self) -> TlsBroker:
        self.broker.start()
        with open(self.workdir / "tls_terminator.log", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.tls_terminator", "--listen", str(self.port),
                 "--to", self.broker.bootstrap, "--cert", str(self._cert), "--key",
                 str(self._key)], stdout=out, stderr=out, **tied_to_this_process())
        deadline = time.monotonic() + 15
        while not listens(self.process.pid, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TLS terminator did not listen on {self.port}")
            time.sleep(0.05)
        return self

    def rotate(self) -> None:
        import trustme

        self._issue(trustme.CA())
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self.broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", required=True, help="host:port of the plaintext broker")
    parser.add_argument("--cert", required=True, help="PEM: certificate chain")
    parser.add_argument("--key", required=True, help="PEM: private key")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    try:
        import uvloop  # ships with uvicorn[standard]: less of the box's CPU per byte

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.listen, (host, int(port)), args.cert, args.key))


if __name__ == "__main__":
    main()
