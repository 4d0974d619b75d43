"""Rolling the embedded broker: what lets ``sluice up`` run for days on Tansu.

Tansu keeps every message in memory and frees it only when its topic is deleted (retention
is not enforced, DeleteRecords is not implemented). So once the broker holds
SLUICE_EMBEDDED_BROKER_ROLL_SHARE of SLUICE_EMBEDDED_BROKER_MAX_MB, the supervisor
(services.embedded) rolls it over: a planned generation that carries over only what still
counts.

0. Ahead of the roll, once the broker holds SLUICE_EMBEDDED_BROKER_PREPARE_SHARE of the roll
   mark (0.9: at 60k events/s Tansu grows ~4 MB/s, 10% of 614 MiB is ~15 s), the next
   generation is prepared (:class:`NextGeneration`): the next broker starts beside the old
   one, on a port of its own (the configured port is a front that forwards to the current
   one: services.shared.broker.BrokerFront), with its topics, a producer connected to it,
   and the next agents worker, held: it joins its group and gets its partitions, but
   recovers nothing and applies nothing until told (streams.recovery.recover_when_told),
   on a fresh local store. Its start, Faust's nap and Tansu's hold of a first JoinGroup
   (half the session timeout), ~4 s, are then behind it when the roll needs it.
1. The next broker gets the asset catalog and the dead letters with their markers
   (:func:`copy_assets`, :func:`copy_letters`), before anything else is written to it.
2. The next generation's gateway app takes every new request from then on, publishing to
   the next broker; the old app answers what it took, then ends (services.embedded_gateway).
   Requests never wait for a roll. Waits for user state (``queue_updates=false``,
   ``wait=user``) hold until the next agents own their partitions; reads are answered by
   the old agents meanwhile (services.gateway.user_states: held, not failed). The catalog
   records the old app wrote meanwhile follow (an asset's newest ``updated_at`` wins, in
   whatever order its records come).
3. The next sink starts at once.
4. On the old broker, which nobody writes to any more, the agents apply what is left: the
   roll waits until their group's committed offsets reach every events partition's end
   (read with a Fetch: Tansu's ListOffsets trails its last batch, streams.recovery),
   asking the old worker every 50 ms to commit what it applied (streams.reads'
   /internal/commit) rather than waiting for its next commit
   (SLUICE_AGENTS_COMMIT_INTERVAL_S). The agents commit an offset only once its events'
   state is in the changelog and their store.
5. The old agents stop and each user's newest record is read from their store (1M users:
   ~1 s; from the old changelog with the memory store: its whole history), and the
   records go into the next changelog with their source position reset to "nothing applied
   yet" (everything of the old events topic is in them, and the next one holds only later
   events). Reads are answered from those records until the next agents own every
   partition. The next worker is told: it loads the carried records in bulk
   (streams.recovery.load_changelog) and applies the events taken since step 2 from
   offset 0.
6. Once it serves every partition, waits for user state go on (nothing after this step
   touches user state). The old sink drains into ClickHouse and stops; the dead letters it
   wrote meanwhile follow the first copy (every record of the dead-letter topic and its two
   marker topics, verbatim, in order, so letters keep their partition:offset names). Then
   the old broker stops, and its memory is free.

Nothing acked is lost or counted twice: every event acked before the switch is in
ClickHouse (step 6) and in the carried state (steps 4, 5), and the events topic the next
agents read holds only later ones. Agents that do not catch up within the wait (or die
meanwhile) make the roll rebuild user state from ClickHouse instead, once the old sink
drained (the next one paused meanwhile), as a start does: slower, equally right.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from faust.types import TP

from services.embedded_processes import JOIN_WAIT_S, start_agents, wait_for_agents
from services.roll_copies import (
    Records,
    copy_assets,
    copy_letters,
    read_users,
    write_users,
)
from services.shared.broker import EmbeddedBroker
from services.shared.kafka import client_config, ensure_topics, producer_config
from services.shared.lag import group_lag, offsets_reader
from services.shared.metrics import BROKER_ROLL_HELD_SECONDS, BROKER_ROLL_SECONDS, BROKER_ROLLS
from services.shared.settings import Settings
from services.shared.topic_read import TopicUnread
from streams.rebuild import rebuild_state
from streams.recovery import fetched_ends
from streams.slots import reset_local_state, stored_users

if TYPE_CHECKING:
    from services.embedded import Supervisor

log = logging.getLogger(__name__)

MIB = 2**20
DRAIN_WAIT_S = 30.0  # for the sink to consume what the broker holds before it stops
# after a roll, the next waits until the broker holds this share of the bound more than
# right after it: a carried state near the roll share must not roll the broker again at once
REGROW_SHARE = 0.2


def roll_at(settings: Settings, held_after_roll: int = 0) -> int | None:
    """The broker memory (bytes) at which ``sluice up`` rolls it; None: it never does."""
    share, mb = settings.embedded_broker_roll_share, settings.embedded_broker_max_mb
    if not share or not mb:
        return None
    return max(int(share * mb * MIB), held_after_roll + int(REGROW_SHARE * mb * MIB))


def agents_caught_up(settings: Settings, timeout_s: float,
                     gone: Callable[[], bool] = lambda: False) -> bool:
    """Whether the agents' group committed every events partition to its end within
    ``timeout_s`` (nothing must be publishing meanwhile); False at once when ``gone()``
    says the worker that would get there died."""
    topic, group = settings.topic_events, settings.agents_app_id
    consumer = Consumer(client_config(settings) | {"group.id": group, "enable.auto.commit": False})
    commit_now = f"{settings.agents_advertised_url}/internal/commit"
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.events_partitions)]
        listed = {TP(topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
                  for tp in partitions}
        ends = listed | fetched_ends(settings, listed)
        deadline = time.monotonic() + timeout_s
        while True:
            # a partition the group never committed: -1001 (OFFSET_INVALID)
            committed = {tp.partition: max(tp.offset, 0)
                         for tp in consumer.committed(partitions, 10)}
            behind = {tp.partition: end - committed.get(tp.partition, 0)
                      for tp, end in ends.items() if committed.get(tp.partition, 0) < end}
            if not behind:
                return True
            if time.monotonic() > deadline or gone():
                log.warning("roll: the agents are still behind by %s messages (per partition) "
                            "after %.1f s%s", behind, timeout_s - (deadline - time.monotonic()),
                            "; the worker died or sluice up is stopping" if gone() else "")
                return False
            try:  # rather than wait for its next commit (SLUICE_AGENTS_COMMIT_INTERVAL_S)
                urllib.request.urlopen(urllib.request.Request(commit_now, method="POST"),
                                       timeout=1).close()
            except OSError:
                time.sleep(0.1)  # not reachable (its web page is off): the commits come anyway
            time.sleep(0.05)
    finally:
        consumer.close()


def sink_caught_up(settings: Settings, timeout_s: float) -> bool:
    """Whether the sink's group consumed what the broker holds (lag zero) within
    ``timeout_s``; True at once when the broker does not answer (nothing more can be
    fetched)."""
    topics = [settings.topic_events, settings.topic_assets]
    reader = offsets_reader(settings, settings.sink_group)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                behind = sum(p.lag for p in group_lag(reader, settings.sink_group, topics))
            except KafkaException:
                return True
            if behind == 0:
                # Tansu's end offsets may trail a batch: one more batch window
                time.sleep(settings.sink_batch_seconds + 0.1)
                return True
            time.sleep(0.1)
        return False
    finally:
        reader.close()


@dataclass
class NextGeneration:
    """What a roll switches to, prepared ahead of it (step 0)."""

    broker: EmbeddedBroker
    settings: Settings
    agents: subprocess.Popen[bytes]  # joined, held until told (services.embedded_processes)
    producer: Producer  # for the copies: its producer id is already there

    def usable(self) -> bool:
        return self.broker.returncode is None and self.agents.poll() is None

    def discard(self) -> None:
        """Unused (sluice up stops, the old broker died, or a part of this did). Killed:
        the held worker applied nothing, and with its broker gone it would not stop soon."""
        self.agents.kill()
        self.agents.wait()
        self.broker.stop(kill=True)


def prepare(sup: Supervisor) -> NextGeneration:
    """Start the next generation's broker, topics, producer and held agents worker."""
    broker = sup.next_broker().start()
    try:
        new = sup.settings_for(broker)
        ensure_topics(new)
        # the next worker's store must be fresh (the others not in use followed an older
        # changelog)
        reset_local_state(new)
        agents = start_agents(new, gated=True)
    except BaseException:
        broker.stop(kill=True)
        raise
    log.info("prepared the next generation: a broker on port %d, agents worker pid %d held",
             broker.port, agents.pid)
    return NextGeneration(broker, new, agents, Producer(producer_config(new)))


def carried_users(settings: Settings) -> Records | None:
    """Each user's newest record: from the stopped old worker's store where there is one
    (streams.slots.stored_users), else from the old changelog (the memory store); None
    where the old broker did not give it (the roll then rebuilds user state from ClickHouse
    instead of failing `sluice up`)."""
    began = time.monotonic()
    try:
        if (stored := stored_users(settings)) is not None:
            log.info("roll: %d users read from the old worker's store in %.1f s", len(stored),
                     time.monotonic() - began)
            return stored
    except Exception:  # any trouble with the files: the changelog has it all
        log.exception("roll: the old worker's store was not read; reading the changelog")
    try:
        return read_users(settings)
    except TopicUnread as exc:
        log.warning("roll: the old changelog was not read (%s); user state is rebuilt from "
                    "ClickHouse instead", exc)
        return None


def roll(sup: Supervisor) -> None:
    """Roll ``sup``'s embedded broker over to the next one, in the steps above. A SIGTERM
    meanwhile stops `sluice up` once the roll is done: the next sink must run to drain what
    requests gave the next broker."""
    old_broker, old = sup.broker, sup.settings
    assert old_broker is not None and sup.front is not None
    began = time.monotonic()
    log.warning("rolling the embedded broker over to a new one: it holds %.0f MiB (roll at "
                "%.0f MiB, SLUICE_EMBEDDED_BROKER_ROLL_SHARE); requests go to the next one "
                "as soon as it runs", (old_broker.memory_bytes() or 0) / 2**20,
                (sup.roll_at or 0) / 2**20)
    prepared, sup.next_generation = sup.next_generation, None
    if prepared is None or not prepared.usable():
        if prepared is not None:
            log.warning("roll: the prepared next generation did not last (broker exit %s, "
                        "agents exit %s); starting another", prepared.broker.returncode,
                        prepared.agents.poll())
            prepared.discard()
        prepared = prepare(sup)
    broker, new, next_agents, producer = (
        prepared.broker, prepared.settings, prepared.agents, prepared.producer)
    assets_at = copy_assets(old, new, producer=producer)
    letters_at = copy_letters(old, new, producer=producer)
    # requests go to the next broker from here on; waits for user state hold until its
    # agents join, reads go to the old agents meanwhile
    sup.broker, sup.settings = broker, new
    sup.start_gateway(hold_waits_s=DRAIN_WAIT_S + JOIN_WAIT_S + 65)
    switched = time.monotonic()
    sup.front.point_at(broker.port)
    copied_bytes = broker.memory_bytes() or 0
    old_sink, old_sink_thread = sup.sink, sup.sink_thread
    sup.start_sink()  # the next broker's events reach ClickHouse as at any time
    copy_assets(old, new, after=assets_at, producer=producer)  # what the old app wrote
    old_agents = sup.agents
    caught_up = agents_caught_up(
        old, DRAIN_WAIT_S,
        gone=lambda: old_agents is None or old_agents.poll() is not None)
    caught_up_at = time.monotonic()
    # reads wait (not fail) from the old agents' stop until the carried records answer them
    sup.server.hold_user_states(JOIN_WAIT_S + 65, reads=True)
    sup.stop_agents(kill=True)
    # all the old agents' state is in their store and the changelog: reads are answered
    # from it while no worker can (or, with agents that did not catch up, wait for the next)
    users = carried_users(old) if caught_up else None
    if users is not None:
        sup.server.answer_user_states_from(users)

    def serve_once_joined(agents: subprocess.Popen[bytes]) -> float:
        """When waits for user state were let go."""
        if not sup.stopping.is_set():  # else the stop needs no joined agents
            # reads leave the carried records only once every partition has its owner
            wait_for_agents(new, agents, sup.console, 2 * JOIN_WAIT_S,
                            partitions=new.events_partitions)
        sup.server.release_user_states()
        return time.monotonic()

    if users is not None:  # the next agents begin at once: they need nothing more
        rebuilt = write_users(new, users, producer)
        log.info("roll: carried %d users (%d events)", rebuilt.users, rebuilt.events)
        reset_local_state(new)  # the old worker's: a restarted worker must not claim it
        served = serve_once_joined(sup.launch_agents(next_agents))  # before the old sink's drain
    if old_sink and old_sink_thread:
        sup.stop_sink(old_sink, old_sink_thread, old, drain=True)
    copy_letters(old, new, after=letters_at, producer=producer)
    old_broker.stop(kill=True)  # what it held that counts is in ClickHouse and carried
    if users is None:  # from ClickHouse, with what both sinks stored (and committed)
        assert sup.store is not None and sup.sink is not None
        with sup.sink.paused():
            rebuild_state(new, sup.store, show_progress=False, resume_group=new.sink_group)
        reset_local_state(new)
        served = serve_once_joined(sup.launch_agents(next_agents))
    done = time.monotonic()
    # from what the copies alone filled (requests flowed meanwhile: they count against
    # the next roll, not for where it begins)
    sup.roll_at = roll_at(new, copied_bytes)
    BROKER_ROLLS.labels("changelog" if users is not None else "rebuild").inc()
    BROKER_ROLL_SECONDS.observe(done - began)
    BROKER_ROLL_HELD_SECONDS.observe(served - switched)
    log.warning("rolled the embedded broker in %.1f s: requests went to the next one %.1f s "
                "in, waiting for none of it; waits for user state held %.1f s (the old agents "
                "caught up in %.1f s, the next joined %.1f s after); reads answered %s; the "
                "next roll at %.0f MiB", done - began, switched - began,
                served - switched, caught_up_at - switched,
                served - caught_up_at, "throughout (from the carried records meanwhile)"
                if users is not None else f"after {served - caught_up_at:.1f} s held (user "
                "state rebuilt from ClickHouse)", (sup.roll_at or 0) / 2**20)
