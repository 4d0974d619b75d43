"""The processes ``sluice up`` starts besides its own threads, and the ports it must own.

The agents worker runs in a process of its own (Faust owns its event loop and signals),
tied to ``sluice up`` so it dies with it; ``sluice up`` opens the gateway only once the
worker owns its partitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from rich.console import Console

from services.shared.processes import port_taken, tied_to_this_process, who_listens
from services.shared.settings import Settings


def ports_taken(settings: Settings) -> list[str]:
    """One line per port that ``sluice up`` needs and finds held, naming the holder."""
    wanted = [("SLUICE_HTTP_PORT", "the gateway", settings.http_host, settings.http_port)]
    if settings.agents_web_port:
        wanted.append(("SLUICE_AGENTS_WEB_PORT", "the agents' web page", settings.http_host,
                       settings.agents_web_port))
    if not settings.kafka_bootstrap:
        wanted.append(("SLUICE_EMBEDDED_BROKER_PORT", "the embedded broker",
                       settings.embedded_broker_host, settings.embedded_broker_port))
    lines: list[str] = []
    seen: dict[int, str] = {}
    for var, what, host, port in wanted:
        if port in seen:
            lines.append(f"{var} and {seen[port]} are both {port}")
        elif port_taken(host, port):
            lines.append(f"port {port} ({what}, {var}) is taken by {who_listens(port)}")
        seen[port] = var
    return lines



def wait_for_agents(settings: Settings, agents: subprocess.Popen[bytes], console: Console,
                    timeout_s: float = 60.0, partitions: int = 1) -> None:
    """Open the gateway once the worker serves ``partitions`` of its partitions (its group
    join and table recovery take a few seconds), so the first ``queue_updates=false`` POST
    does not wait for them."""
    if settings.agents_web_port == 0:
        return
    deadline = time.monotonic() + timeout_s
    with console.status("agents: joining their consumer group..."):
        while time.monotonic() < deadline and agents.poll() is None:
            if (serving_partitions(settings) or 0) >= partitions:
                return
            time.sleep(0.1)
    console.print("[yellow]the agents do not own their partitions yet: queue_updates=false "
                  f"requests wait for them (see {settings.data_dir / 'agents.log'})[/]")


def serving_partitions(settings: Settings) -> int | None:
    """Source partitions the worker on ``settings.agents_web_port`` owns and has recovered
    (so applies and answers for); None while its stats page is not up."""
    url = f"http://{settings.http_host}:{settings.agents_web_port}/stats"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(json.load(response)["serving"])
    except (OSError, ValueError, KeyError):
        return None


EMBEDDED_SESSION_TIMEOUT_S = 3.0
JOIN_WAIT_S = 60.0  # for a new agents worker to own its partitions


def start_agents(settings: Settings, gated: bool = False) -> subprocess.Popen[bytes]:
    """The Faust worker in its own process (Faust owns its event loop and signals); it
    dies with this process. Call from the main thread (see services.shared.processes).
    ``gated``: it joins its group, then waits for :func:`open_gate` to recover its tables
    and apply events."""
    env = os.environ | {"SLUICE_KAFKA_BOOTSTRAP": settings.bootstrap}
    # a killed worker's restart waits out its old session first: Tansu takes sessions
    # shorter than Apache Kafka's minimum (group.min.session.timeout.ms, 6 s); measured on
    # Tansu, SIGKILL -> serving again: 13 s with 6 s sessions, 4 s with 3 s
    env.setdefault("SLUICE_AGENTS_SESSION_TIMEOUT_S", str(EMBEDDED_SESSION_TIMEOUT_S))
    with open(settings.data_dir / "agents.log", "ab") as log_file:  # the child keeps its copy
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "agents",
             *(["--recover-on-stdin"] if gated else [])], env=env,
            stdout=log_file, stderr=subprocess.STDOUT,
            **tied_to_this_process() | ({"stdin": subprocess.PIPE} if gated else {}),
        )


def open_gate(agents: subprocess.Popen[bytes]) -> None:
    """Let a worker started ``gated`` recover and apply (if it is still there to)."""
    if agents.stdin is None:
        return
    try:
        agents.stdin.write(b"go\n")
        agents.stdin.close()
    except OSError:  # it died: the supervisor restarts it as any dead worker
        pass
