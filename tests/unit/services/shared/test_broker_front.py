"""The embedded broker's front (services.shared.broker.BrokerFront): the configured port
forwards each new connection to the broker of the current generation, and a connection
already open stays with the broker it reached."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.shared.broker import BrokerFront, free_port


@contextmanager
def tagged_echo(tag: bytes) -> Iterator[int]:
    """A server that answers each line with ``tag`` + the line: which broker answered."""
    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                self.wfile.write(tag + line)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def ask(conn: socket.socket, line: bytes) -> bytes:
    conn.sendall(line)
    return conn.makefile("rb").readline()


def test_new_connections_reach_the_current_broker_and_open_ones_stay() -> None:
    with tagged_echo(b"old:") as old, tagged_echo(b"new:") as new:
        front = BrokerFront("127.0.0.1", free_port()).start(old)
        try:
            first = socket.create_connection(("127.0.0.1", front.port), timeout=5)
            assert ask(first, b"a\n") == b"old:a\n"
            front.point_at(new)  # a roll's next broker runs
            second = socket.create_connection(("127.0.0.1", front.port), timeout=5)
            assert ask(second, b"b\n") == b"new:b\n"
            assert ask(first, b"c\n") == b"old:c\n"
            first.close()
            second.close()
        finally:
            front.stop()
        # stopped: the port is free again
        with socket.socket() as again:
            again.bind(("127.0.0.1", front.port))
