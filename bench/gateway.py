"""The gateway under HTTP load: a separate ``sluice gateway`` process driven by ``hey``.

A separate process (not TestClient, not in the bench's interpreter) so its throughput,
latency and peak memory are those of the real role, and the load generator's CPU is
not charged to it in-process. hey is used as is; its text summary is parsed here.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.procs import log_tail, stop_process

EVENTS_PER_REQUEST = 1000


@dataclass
class HeyResult:
    seconds: float
    requests_per_s: float
    status: dict[int, int]
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    p99_is_max: bool = False  # hey prints no 99% line under 100 requests: the slowest instead
    rate_limit_per_client: float | None = None
    sample_failure: str | None = None
    raw: str = field(default="", repr=False)

    @property
    def ok(self) -> int:
        return self.status.get(200, 0)

    @property
    def not_ok(self) -> int:
        return sum(n for code, n in self.status.items() if code != 200) + sum(self.errors.values())

    @property
    def events_per_s(self) -> float:
        return EVENTS_PER_REQUEST * self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("raw")
        return out | {"events_per_s": round(self.events_per_s), "non_200": self.not_ok}


def parse_hey(text: str) -> HeyResult:
    """hey's summary -> numbers (Total, Requests/sec, latency %, status and error counts)."""
    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else float("nan")

    status = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors: dict[str, int] = {}
    if "Error distribution:" in text:
        for n, msg in re.findall(r"\[(\d+)\]\s+(.+)", text.split("Error distribution:", 1)[1]):
            errors[msg.strip()[:200]] = int(n)
    p99, p99_is_max = num(r"99% in ([\d.]+) secs"), False
    if math.isnan(p99):  # too few requests for hey to print it
        p99, p99_is_max = num(r"Slowest:\s+([\d.]+) secs"), True
    return HeyResult(
        seconds=num(r"Total:\s+([\d.]+) secs"),
        requests_per_s=num(r"Requests/sec:\s+([\d.]+)"),
        status=status,
        errors=errors,
        p50_ms=num(r"50% in ([\d.]+) secs") * 1000,
        p99_ms=p99 * 1000,
        p99_is_max=p99_is_max,
        raw=text,
    )


class GatewayProcess:
    """``.venv/bin/sluice gateway`` on its own port, publishing to ``topic`` on ``bootstrap``."""

    def __init__(self, bootstrap: str, topic: str, port: int, workdir: Path,
                 env: dict[str, str] | None = None, workers: int = 1) -> None:
        """``env``: a full environment to start from (e.g. every setting of a Settings)."""
        self.url = f"http://127.0.0.1:{port}"
        env = dict(env) if env is not None else {
            k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env |= {
            "SLUICE_KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HTTP_PORT": str(port),
            "SLUICE_TOPIC_EVENTS": topic, "SLUICE_DATA_DIR": str(workdir / "data"),
        }
        self.log_path = workdir / "gateway.log"
        sluice = Path(sys.executable).parent / "sluice"
        with open(self.log_path, "wb") as out:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [str(sluice), "gateway", "--workers", str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway not ready in {timeout_s}s: {self.log_tail()}")

    def post(self, body: bytes) -> str:
        """One POST, to show what a failing request answers (status and body)."""
        req = urllib.request.Request(
            f"{self.url}/events?queue_updates=true", data=body, method="POST",
            headers={"content-type": "application/json", "program-id": "bench"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return f"{resp.status} {resp.read()[:500]!r}"
        except urllib.error.HTTPError as exc:
            return f"{exc.code} {exc.read()[:500]!r}"

    def log_tail(self, n: int = 2000) -> str:
        return log_tail(self.log_path, n)

    def stop(self) -> None:
        stop_process(self.process, 15)


def hey(url: str, body_file: Path, duration_s: int, clients: int,
        rate_per_client: float | None = None, path: str = "/events?queue_updates=true",
        ) -> HeyResult:
    """``hey -z Ns -c C [-q R] -m POST ... -D body.json URL/events?queue_updates=true``
    (or another ``path``: the dialects)."""
    cmd = ["hey", "-z", f"{duration_s}s", "-c", str(clients)]
    if rate_per_client is not None:
        cmd += ["-q", f"{rate_per_client:.2f}"]
    cmd += ["-m", "POST", "-T", "application/json", "-H", "program-id: bench",
            "-D", str(body_file), f"{url}{path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr[-1000:]}")
    result = parse_hey(done.stdout)
    result.rate_limit_per_client = rate_per_client
    return result
