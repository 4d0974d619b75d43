"""``sluice up``: the whole pipeline on one machine, for a laptop or a demo.

Tansu (unless SLUICE_KAFKA_BOOTSTRAP names a cluster), the topics, ClickHouse (embedded
chDB under ./data unless SLUICE_CLICKHOUSE_URL names a server), user state and catalog
rebuilt from ClickHouse, the stream agents (a Faust worker process), the sink on a
thread, and the gateway (uvicorn) on a thread. chDB admits one process per path, so the
gateway's reads share the sink's Store. Shutdown order keeps every acknowledged event:
gateway (flushes its producer) -> sink (drains the topic into ClickHouse) -> agents ->
broker.

``sluice up`` is a supervisor: the main thread starts everything and then watches it.

- **It owns its children.** The broker and the agents worker are started from the main
  thread with ``PR_SET_PDEATHSIG=SIGKILL`` (``services.shared.processes``), so they die
  with ``sluice up`` even when it is SIGKILLed; each runs in a process group of its own,
  so a terminal's Ctrl-C reaches ``sluice up`` alone, which stops them in order. (Faust's
  worker starts no processes of its own.)
- **It adopts nothing.** Before starting anything it checks the broker port, the agents'
  web port and the HTTP port, and exits 1 naming the port and the process that holds it.
- **A dead agents worker is restarted** (one WARNING line, backing off if it keeps dying);
  it recovers its table from the changelog as Faust does, and each user record's source
  position makes the replay of uncommitted offsets count nothing twice.
- **A dead embedded broker** took all it held: topics, offsets, the user-state changelog,
  and every acknowledged event the sink had not yet stored in ClickHouse, which is lost
  (one ERROR line says so). The stack therefore runs in *generations*: a generation is
  the broker, its topics, the state rebuilt from ClickHouse, an agents worker, a sink and
  a gateway (a fresh ``create_app`` and uvicorn Server: the gateway's views followed the
  old broker's positions). On the broker's death the supervisor ends the generation
  (the agents are killed at once, so they write nothing stale into the new broker; the
  gateway stops; the sink writes what it had already fetched), then starts the next one
  on the same ports and the same Store. Meanwhile the HTTP server stays up (it serves
  each generation's gateway app in turn: services.embedded_gateway): requests wait on
  their connections and the next gateway answers them. The ClickHouse store outlives
  generations.
- **The embedded broker is rolled over** before its memory reaches the bound: the next
  broker starts beside the old one (with the next agents worker joined and held, a little
  before the roll: ``services.broker_roll.prepare``), the next generation's gateway app
  takes every request at once, and the old generation drains and hands over user state
  and dead letters (services.broker_roll). Each Tansu listens on a port of its own; the
  configured port is a front that forwards to the current one
  (services.shared.broker.BrokerFront), for the tools that connect from outside. ``sluice up``'s own roles always talk to their
  generation's broker directly.
- **SIGTERM and SIGINT stop it with exit 0 in any phase**: while a generation starts they
  unwind it; while it serves they stop it in the order above.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from types import FrameType

from rich.console import Console

from services import verify_commands
from services.broker_roll import (
    DRAIN_WAIT_S,
    NextGeneration,
    prepare,
    roll,
    roll_at,
    sink_caught_up,
)
from services.embedded_gateway import GatewayServer
from services.embedded_processes import (
    JOIN_WAIT_S,
    open_gate,
    ports_taken,
    start_agents,
    wait_for_agents,
)
from services.gateway.app import create_app
from services.shared import clickhouse_memory, kafka_security
from services.shared.broker import BrokerFront, EmbeddedBroker, free_port
from services.shared.clickhouse import Store
from services.shared.gc_tuning import limit_malloc_arenas, release_free_heap, tune_gc
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from services.sink.consume import Sink
from streams.rebuild import rebuild_state
from streams.slots import reset_local_state

log = logging.getLogger(__name__)

AGENTS_BACKOFF_MAX_S = 30.0
STOP_WAIT_S = 60.0  # for the gateway's and the sink's threads, each


def run_embedded(settings: Settings) -> None:
    limit_malloc_arenas(settings.malloc_arenas)  # before any thread starts: see gc_tuning
    # SLUICE_LOG_FORMAT=json: stderr carries JSON lines only; what the console says for
    # people (banner, progress bar) is logged instead
    console = Console(stderr=True, quiet=settings.log_format == "json")
    if taken := ports_taken(settings):
        for line in taken:
            console.print(f"[red]sluice up: {line}[/]")
        console.print("[red]sluice up starts nothing it would not own: stop that process or "
                      "choose another port[/]")
        raise SystemExit(1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.clickhouse_is_embedded:
        # Load chDB's engine before a signal can unwind the start: a SIGTERM that landed
        # inside its import (it takes a second) left chdb half-imported and the stop failed
        # with "chdb-core engine not found" instead of exiting 0.
        import chdb  # noqa: F401
    code = Supervisor(settings, console).run()
    if code:
        raise SystemExit(code)


class _Stop(Exception):
    """SIGTERM or SIGINT while a generation starts: unwind it."""


def _caused_by_stop(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a _Stop."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, _Stop):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Supervisor:
    """Starts a generation, watches it, restarts what died; see the module's docstring."""

    def __init__(self, settings: Settings, console: Console) -> None:
        # ``public``: as configured (what operators' tools use: the broker's front port);
        # ``settings``: this generation's, naming its own broker's port (a roll has two)
        self.public = self.settings = settings
        self.console = console
        self.broker: EmbeddedBroker | None = None
        self.front: BrokerFront | None = None
        if not settings.kafka_bootstrap:
            self.broker = self.next_broker()
            self.settings = self.settings_for(self.broker)
            self.front = BrokerFront(settings.embedded_broker_host, settings.embedded_broker_port)
        self.store: Store | None = None
        self.agents: subprocess.Popen[bytes] | None = None
        self.agents_started_at = 0.0
        self.agents_backoff_s = 0.0
        self.sink: Sink | None = None
        self.sink_thread: threading.Thread | None = None
        self.sink_failed = False
        # one server for the whole run, serving each generation's gateway app in turn:
        # between two, requests wait on their open connections (services.embedded_gateway)
        self.server = GatewayServer(settings, STOP_WAIT_S)
        self.roll_at = roll_at(settings) if self.broker else None
        self.next_generation: NextGeneration | None = None  # a roll's, prepared ahead of it
        self.rows_written = 0
        self.stopping = threading.Event()
        self._unwind_on_signal = True  # while starting: a signal raises _Stop
        self.exit_code = 0

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        if self._unwind_on_signal:
            self._unwind_on_signal = False  # once: never inside the unwinding itself
            raise _Stop

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._start(first=True)
            self._supervise()
        except _Stop:
            pass
        except Exception as exc:
            # _Stop raised inside a library call that wrapped it in its own error on the
            # way out (clickhouse-connect's chDB backend: "DatabaseError: The ClickHouse
            # server returned an error" when SIGTERM lands in a query of the start)
            if not _caused_by_stop(exc):
                raise
        finally:
            self._unwind_on_signal = False
            try:
                self._stop_generation(final=True)
                self.console.print(f"stopped; the sink wrote {self.rows_written} rows this run")
                if self.console.quiet:  # JSON logs: say it there
                    log.info("stopped; the sink wrote %d rows this run", self.rows_written)
                if self.store:
                    self.store.close()
            finally:
                self.discard_next_generation()
                if self.broker:
                    self.broker.stop()
                if self.front:
                    self.front.stop()
        return self.exit_code

    def next_broker(self) -> EmbeddedBroker:
        """Each Tansu on a port of its own: a roll starts the next beside the old one."""
        return EmbeddedBroker(self.public.embedded_broker_host, free_port(),
                              log_path=self.public.data_dir / "tansu.log")

    def settings_for(self, broker: EmbeddedBroker) -> Settings:
        return self.public.model_copy(update={"embedded_broker_port": broker.port})

    # -- a generation -------------------------------------------------------------------
    def _start(self, first: bool) -> None:
        settings, console = self.settings, self.console
        self._unwind_on_signal = True
        if self.stopping.is_set():
            raise _Stop
        if self.broker:
            self.broker.start()
            if self.front and self.front.target is None:
                self.front.start(self.broker.port)
        ensure_topics(settings)
        if self.store is None:
            self.store = Store(settings)
            if settings.clickhouse_is_embedded:  # its memory is this process': on /metrics
                clickhouse_memory.register(self.store)
            # verify on its own store (chDB admits no other process): sluice_verify_* on
            # /metrics; through the broker's front, which follows the rolls
            verify_commands.Periodic(self.public, self.store).start()
        # The broker starts empty: bring back what ClickHouse holds before going live.
        rebuilt = rebuild_state(settings, self.store, show_progress=not console.quiet)
        if (rebuilt.events or rebuilt.assets) and console.quiet:
            log.info("restored %d users (%d events) and %d assets from ClickHouse",
                     rebuilt.users, rebuilt.events, rebuilt.assets)
        elif rebuilt.events or rebuilt.assets:
            console.print(f"restored {rebuilt.users} users ({rebuilt.events} events) and "
                          f"{rebuilt.assets} assets from ClickHouse")
        if self.broker:
            # the agents' local stores hold offsets into the previous broker's changelog,
            # which is gone: the new worker recovers the rebuilt state from the new one
            reset_local_state(settings)
        self.launch_agents()
        self.start_sink()
        if first:
            self._banner()
        assert self.agents is not None
        wait_for_agents(settings, self.agents, console, JOIN_WAIT_S)
        tune_gc(settings.gc_young_threshold)  # the rebuild's garbage is gone; freeze the rest
        self.start_gateway()
        self._unwind_on_signal = False
        if self.stopping.is_set():  # a signal between the last check and the line above
            raise _Stop

    def _banner(self) -> None:
        settings, console = self.public, self.console
        base = f"http://{settings.http_host}:{settings.http_port}"
        console.print("[bold]Sluice is up[/]  (Ctrl-C stops it, flushing what was accepted)")
        console.print(f"  gateway     {base}   docs {base}/docs")
        broker_kind = "embedded Tansu, in memory" if self.broker else "external"
        console.print(f"  kafka       {settings.bootstrap}   ({broker_kind}; "
                      f"{kafka_security.describe(settings)})")
        console.print(f"  clickhouse  {settings.clickhouse_dsn}")
        console.print(f"  sink        group {settings.sink_group} -> tables events, assets")
        console.print(f"  agents      stats http://{settings.http_host}:"
                      f"{settings.agents_web_port}/stats, log "
                      f"{settings.data_dir / 'agents.log'}")
        agents_base = f"http://{settings.http_host}:{settings.agents_web_port}"
        console.print(f"  metrics     {base}/metrics (gateway and sink), "
                      f"{agents_base}/metrics (agents)")
        console.print(f"  live page   {base}/ui   (`sluice status` prints lag and rates)")
        if console.quiet:
            log.info("sluice up: gateway %s, metrics %s/metrics and %s/metrics, live page "
                     "%s/ui", base, base, agents_base, base)

    def launch_agents(self, gated: subprocess.Popen[bytes] | None = None,
                      ) -> subprocess.Popen[bytes]:
        """A new worker, or ``gated``: one started earlier that waits to begin."""
        if gated is not None:
            open_gate(gated)
        agents = self.agents = gated or start_agents(self.settings)
        self.agents_started_at = time.monotonic()
        log.info("agents worker started, pid %d", agents.pid)
        return agents

    def start_sink(self) -> None:
        assert self.store is not None
        sink = self.sink = Sink(self.settings, self.store)

        def sink_main() -> None:
            try:
                sink.run()
            except Exception:
                log.exception("the sink failed; stopping")
                self.sink_failed = True
                self.stopping.set()

        self.sink_thread = threading.Thread(target=sink_main, name="sink")
        self.sink_thread.start()

    def start_gateway(self, hold_waits_s: float = 0.0) -> None:
        """Serve the next app (from the one serving, if any: it answers what it took)."""
        broker = self.broker
        self.server.open(create_app(self.settings, self.store,
                                    broker_bytes=broker.memory_bytes if broker else None,
                                    hold_waits_s=hold_waits_s))

    def _stop_generation(self, broker_died: bool = False, final: bool = False) -> None:
        """Gateway (flushes) -> sink (drains into ClickHouse) -> agents. With a dead
        broker the agents go first, killed: nothing of theirs may reach the next broker.
        ``final``: `sluice up` stops, and so does its HTTP server; else requests wait for
        the next."""
        if broker_died:
            self.stop_agents(kill=True)
            if self.sink:  # nothing can reach the dead broker: no order to keep, stop both
                self.sink.abandon()
            # requests waiting for its acks get their 503 now, not at timeout, and those
            # waiting for a store or a state that may never come: retry them
            if (gateway := self.server.gateway) is not None:
                reason = "the embedded broker died"
                gateway.publisher.abandon(reason)
                gateway.progress.abandon(reason)
                gateway.user_states.abandon(reason)
        self.server.stop(final)
        if self.sink and self.sink_thread:
            if not broker_died and final:
                self.console.print("stopping: draining the sink into ClickHouse...")
            self.stop_sink(self.sink, self.sink_thread, self.settings, drain=not broker_died)
        self.sink = self.sink_thread = None
        self.stop_agents(kill=False)

    def stop_sink(self, sink: Sink, thread: threading.Thread, settings: Settings,
                  drain: bool) -> None:
        """``drain``: first let it consume what its broker holds (its group's lag to zero,
        within DRAIN_WAIT_S). Its stop writes only what it fetched, and the next start
        brings a fresh broker: a sink still rejoining its group after a broker stall would
        otherwise leave acked events behind."""
        began = time.monotonic()
        if drain and not sink_caught_up(settings, DRAIN_WAIT_S):
            log.error("the sink did not catch up within %.0f s; stopping it anyway", DRAIN_WAIT_S)
        sink.stop()
        thread.join(STOP_WAIT_S)
        if thread.is_alive():
            # Its consumer would rejoin the next broker's group with old offsets.
            raise RuntimeError(f"the sink did not stop in {STOP_WAIT_S:.0f} s")
        self.rows_written += sink.rows_written
        log.info("sink stopped in %.1f s", time.monotonic() - began)

    def stop_agents(self, kill: bool) -> None:
        if self.agents is None:
            return
        if self.agents.poll() is None:
            if kill:
                self.agents.kill()
            else:
                self.agents.terminate()
            try:
                self.agents.wait(15)
            except subprocess.TimeoutExpired:
                self.agents.kill()
                self.agents.wait()
        self.agents = None

    # -- watching -----------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self.stopping.wait(0.2):
            held = (self.broker.memory_bytes() or 0) if self.broker else 0
            if self.broker and self.broker.returncode is not None:
                self._restart_broker()
            elif self.roll_at and held >= self.roll_at:
                roll(self)
                # the old generation is garbage now, the carried records too (once the
                # roll's frame is gone): collect it, freeze what lives, give pages back
                tune_gc(self.settings.gc_young_threshold)
                release_free_heap()
            elif (self.roll_at and self.next_generation is None
                  and held >= self.settings.embedded_broker_prepare_share * self.roll_at):
                self.next_generation = prepare(self)
            elif self.agents is not None and self.agents.poll() is not None:
                self._restart_agents()
            elif self.server.died():
                log.error("the gateway stopped on its own; stopping")
                self.exit_code = 1
                return
        if self.sink_failed:
            self.exit_code = 1

    def discard_next_generation(self) -> None:
        if (prepared := self.next_generation) is not None:
            self.next_generation = None
            prepared.discard()

    def _restart_agents(self) -> None:
        assert self.agents is not None
        pid, code = self.agents.pid, self.agents.returncode
        lived = time.monotonic() - self.agents_started_at
        # at once, unless it keeps dying young: then 1, 2, 4... s
        delay = self.agents_backoff_s = (
            0.0 if lived >= 30 else min(max(1.0, 2 * self.agents_backoff_s), AGENTS_BACKOFF_MAX_S))
        log.warning("the agents worker (pid %d) exited with %s after %.0f s; restarting it in "
                    "%.0f s (it recovers user state from the changelog)", pid, code, lived, delay)
        self.agents = None
        if self.stopping.wait(delay):
            return
        self.launch_agents()

    def _restart_broker(self) -> None:
        assert self.broker is not None
        log.error("the embedded broker died (exit %s) and took what it held in memory: "
                  "EVENTS ACKNOWLEDGED BUT NOT YET STORED IN CLICKHOUSE MAY BE LOST. Restarting "
                  "it; user state and the catalog are rebuilt from ClickHouse",
                  self.broker.returncode)
        began = time.monotonic()
        self.discard_next_generation()  # prepared for a roll of the broker that died
        self._stop_generation(broker_died=True)
        self.broker.stop()
        stopped = time.monotonic()
        self._start(first=False)  # on the same port: the front still points at it
        self.roll_at = roll_at(self.settings, self.broker.memory_bytes() or 0)
        log.warning("serving again %.1f s after the broker's death (%.1f s to stop the old "
                    "generation, %.1f s to start the next)", time.monotonic() - began,
                    stopped - began, time.monotonic() - stopped)
