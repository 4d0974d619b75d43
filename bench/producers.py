"""Raw producer ceilings: how fast each Kafka client library can publish the gateway's events.

These two figures are the evidence behind the gateway's choice of producer library
(confluent-kafka): same wire events, same broker, same acks=all, the only difference
is the client. The gateway sends one message per partition per request (its events as JSON
lines), so the ceiling is given in messages/s and in events/s. aiokafka runs with ``enable_idempotence=False`` because its idempotent
producer fails on Tansu (InitProducerId); that only makes it cheaper, not slower.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from bench.payload import Messages, api_body, event_count, wire_batch, wire_headers
from services.shared.kafka import producer_config
from services.shared.settings import Settings

Batch = Messages


@dataclass
class ProducerResult:
    library: str
    messages: int
    errors: int
    seconds: float
    events_per_message: float
    note: str

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.per_s * self.events_per_message

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"messages_per_s": round(self.per_s),
                               "events_per_s": round(self.events_per_s)}


def sample_batches(count: int = 20) -> list[Batch]:
    """A few distinct 1000-event batches to cycle through (made up front: not timed)."""
    return [wire_batch(api_body(seed)) for seed in range(count)]


def _events_per_message(batches: list[Batch]) -> float:
    return sum(map(event_count, batches)) / sum(map(len, batches))


def confluent_ceiling(bootstrap: str, topic: str, batches: list[Batch],
                      duration_s: float) -> ProducerResult:
    """produce() + delivery callback per message for ``duration_s``, then flush."""
    # A bounded local queue, as the gateway's bounded requests in flight give it: with the
    # gateway's 1 GB queue this loop queues faster than the broker takes ~90 KB messages,
    # and what waits longer than message.timeout.ms fails instead of being measured.
    config = producer_config(Settings(kafka_bootstrap=bootstrap)) | {
        "queue.buffering.max.kbytes": 64 * 1024,
    }
    producer = Producer(config)
    counts = {"ok": 0, "err": 0}

    def delivered(err: object, _msg: object) -> None:
        counts["err" if err is not None else "ok"] += 1

    produce, poll = producer.produce, producer.poll
    headers = wire_headers()
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < duration_s:
        for key, value, partition in batches[i % len(batches)]:
            while True:
                try:
                    produce(topic, value, key, partition=partition, on_delivery=delivered,
                            headers=headers)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    poll(0.005)
        poll(0)
        i += 1
    producer.flush(60)
    seconds = time.perf_counter() - start
    return ProducerResult("confluent-kafka", counts["ok"], counts["err"], seconds,
                          _events_per_message(batches), "acks=all, idempotent, gateway's producer_config")


async def _aiokafka(bootstrap: str, topic: str, batches: list[Batch],
                    duration_s: float) -> ProducerResult:
    settings = Settings(kafka_bootstrap=bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
        linger_ms=settings.producer_linger_ms, max_batch_size=1_000_000,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
    )
    await producer.start()
    headers = wire_headers()
    ok = err = 0
    try:
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < duration_s:
            futures = [await producer.send(topic, value, key, partition=partition, headers=headers)
                       for key, value, partition in batches[i % len(batches)]]
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    err += 1
                else:
                    ok += 1
            i += 1
        seconds = time.perf_counter() - start
    finally:
        await producer.stop()
    return ProducerResult("aiokafka", ok, err, seconds, _events_per_message(batches),
                          "acks=all, the same compression, enable_idempotence=False (idempotence fails on Tansu), "
                          "send() per message, gathered per 1000")


def aiokafka_ceiling(bootstrap: str, topic: str, batches: list[Batch],
                     duration_s: float) -> ProducerResult:
    return asyncio.run(_aiokafka(bootstrap, topic, batches, duration_s))
