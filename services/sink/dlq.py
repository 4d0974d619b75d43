"""Messages the sink cannot store -> the ``events.dlq`` topic, with the reason.

The original bytes are kept untouched; headers say why (``reason``: free text; ``category``:
one of CATEGORIES) and where they came from, so an operator can list them (``sluice dlq``)
and replay them (``sluice replay``, services.sink.replay). A line that a replay put back on
the events topic carries REPLAY_HEADER; refused again, its letter keeps that as ``replay_of``,
so the next replay does not loop it. Delivery is confirmed before the sink commits past them:
letters the broker did not take (down, or a fenced producer, which is then replaced) are
sent again until it does, so a broker outage pauses the sink instead of stopping it.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Message
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from services.shared.kafka import HealingProducer, producer_config
from services.shared.settings import Settings

log = logging.getLogger(__name__)

Letter = tuple[bytes | None, bytes | None, dict[str, bytes]]  # value, key, headers

# Why the sink dead-letters (the bounded ``category`` header and the metric's label).
CATEGORIES = ("invalid_event", "invalid_asset", "empty", "clickhouse_refused")
# On a line a replay produced: which letter ("partition:offset" of the DLQ) it came from.
REPLAY_HEADER = "sluice-replay-of"
REPLAY_OF = "replay_of"  # the same, on a letter: a replay already tried this one


class DeadLetterError(Exception):
    """The DLQ did not take the messages: the batch must not be committed."""


class DeadLetters:
    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic_dlq
        self.producer = HealingProducer(producer_config(settings), name="sink DLQ")
        self.max_backoff_s = settings.sink_retry_max_backoff_s
        self.sent = 0
        self._failed: list[Letter] = []  # refused by the broker: to send again

    def send(self, message: Message, reason: str, category: str,
             value: bytes | None = None) -> None:
        """Dead-letter ``value`` (default: the whole message; else the one bad line of it)."""
        headers = {
            "reason": reason.encode()[:2000],
            "category": category.encode(),
            "source_topic": (message.topic() or "").encode(),
            "source_partition": str(message.partition()).encode(),
            "source_offset": str(message.offset()).encode(),
        }
        came_with: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
        for name, raw in came_with:
            if name == REPLAY_HEADER and raw:
                headers[REPLAY_OF] = raw
        letter = (message.value() if value is None else value, message.key(), headers)
        self._produce(letter)
        self.sent += 1

    def _produce(self, letter: Letter) -> None:
        value, key, headers = letter

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self.producer.check(err)
            if err is not None:
                self._failed.append(letter)

        self.producer.produce(self.topic, value, key, headers=headers, on_delivery=delivered)

    def confirm(self, timeout_s: float = 30.0) -> None:
        """Block until every dead letter is acked by the broker, resending what it refused
        (with backoff) until it takes them all."""
        if len(self.producer) == 0 and not self._failed:
            return  # nothing sent since the last confirm, or all of it acked already
        retrying = Retrying(
            retry=retry_if_exception_type(DeadLetterError),
            wait=wait_exponential(multiplier=0.1, max=self.max_backoff_s),
            before_sleep=lambda state: log.warning(
                "%s (attempt %d); sending them again",
                state.outcome.exception() if state.outcome else "", state.attempt_number),
            reraise=True,
        )
        retrying(self._confirm_once, timeout_s)

    def _confirm_once(self, timeout_s: float) -> None:
        left = self.producer.flush(timeout_s)
        if left == 0 and not self._failed:
            return
        if left:  # still queued after the timeout: give them up and send them again
            self.producer.mark_broken(f"{left} dead letters not acknowledged in {timeout_s}s")
            self.producer.flush(0)  # replaces it; the purged letters report as failed
        failed, self._failed = self._failed, []
        for letter in failed:
            self._produce(letter)
        raise DeadLetterError(f"the DLQ topic did not acknowledge {len(failed)} letters")

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout_s)
        self.producer.close()
