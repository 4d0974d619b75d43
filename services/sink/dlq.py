"""Messages the sink cannot store -> the ``events.dlq`` topic, with the reason.

The original bytes are kept untouched; headers say why and where they came from, so an
operator can fix and replay them. Delivery is confirmed before the sink commits past them.
"""

from __future__ import annotations

from confluent_kafka import Message, Producer

from services.shared.kafka import producer_config
from services.shared.settings import Settings


class DeadLetterError(Exception):
    """The DLQ did not take the messages: the batch must not be committed."""


class DeadLetters:
    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic_dlq
        self.producer = Producer(producer_config(settings))
        self.sent = 0

    def send(self, message: Message, reason: str, value: bytes | None = None) -> None:
        """Dead-letter ``value`` (default: the whole message; else the one bad line of it)."""
        self.producer.produce(
            self.topic,
            value=message.value() if value is None else value,
            key=message.key(),
            headers={
                "reason": reason.encode()[:2000],
                "source_topic": (message.topic() or "").encode(),
                "source_partition": str(message.partition()).encode(),
                "source_offset": str(message.offset()).encode(),
            },
        )
        self.sent += 1

    def confirm(self, timeout_s: float = 30.0) -> None:
        """Block until every dead letter is acked by the broker."""
        if self.producer.flush(timeout_s) > 0:
            raise DeadLetterError("the DLQ topic did not acknowledge in time")

    def close(self) -> None:
        self.producer.flush(10)
