"""Event lines of concurrent requests -> one Kafka message per partition per window.

Small requests are what SDKs send, many at once; one message per request paid every
per-message cost (a produce call, a delivery report, the agents' stream machinery) per
request. Here the lines every request publishes within a short window
(``SLUICE_GROUP_COMMIT_MS``) share one message per partition, at most
``SLUICE_MESSAGE_MAX_BYTES`` big, and each request is answered when every message that
holds its lines is acked (acks=all), or 503 when one is not: a message the broker did not
take fails every request with lines in it, so nothing acked is ever lost.

What stays exact: a partition's lines go into its messages in the order requests added
them, windows are produced one after the other (one lock, FIFO), and librdkafka keeps a
partition's messages in order (idempotence on): one user's events keep their order. Each
request learns where each of its lines landed, so ``queue_updates=false`` waits for the
message holding each user's last line, and receipts name the batch's highest offsets. The
wire form of the ``events`` topic is the one every message had: JSON lines, no key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException

from services.gateway.backpressure import Backpressure, Backpressured
from services.shared.events import WIRE_HEADER
from services.shared.publish import BrokerUnavailable, Publisher

# Where a message landed, or why it did not (set on the event loop, never raised into a
# future: many requests await one message, and a request may have given up already).
Landed = tuple[int, int] | str


class _Message:
    """One partition's message being filled in the open window."""

    __slots__ = ("future", "lines", "partition", "size")

    def __init__(self, partition: int, lines: list[bytes], size: int,
                 future: asyncio.Future[Landed]) -> None:
        self.partition, self.lines, self.size, self.future = partition, lines, size, future


class _Window:
    """The messages of one window, and when its requests stop waiting for the broker."""

    __slots__ = ("deadline", "messages", "open")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # loop time
        self.open: dict[int, _Message] = {}  # partition -> its message still taking lines
        self.messages: list[_Message] = []  # every message, in the order they are produced

    def expire(self, timeout_s: float) -> None:
        """The deadline passed: every request still waiting gets its 503."""
        for message in self.messages:
            if not message.future.done():
                message.future.set_result(f"the broker did not acknowledge within {timeout_s}s")


class GroupCommit:
    """The gateway's one window of lines waiting to be produced (one per process)."""

    def __init__(self, publisher: Publisher, backpressure: Backpressure | None = None) -> None:
        self.publisher = publisher
        self.backpressure = backpressure  # refuses windows while consumers are too far behind
        self.settings = publisher.settings  # read per window: window, size and timeout
        self._window: _Window | None = None  # the open one
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one window produced at a time, in order

    async def commit(self, chunks: Sequence[tuple[int, list[bytes], int]]) -> list[tuple[int, int]]:
        """Publish a request's chunks -- (partition, lines, bytes joined), each at most
        SLUICE_MESSAGE_MAX_BYTES unless it is one line -- with the other requests of the window; return
        where each chunk landed, (partition, offset), in order. BrokerUnavailable unless the
        broker acked every one within SLUICE_PUBLISH_TIMEOUT_S of the window's start (one
        timer per window, not per request)."""
        if self.publisher.abandoned is not None:
            raise BrokerUnavailable(self.publisher.abandoned)
        if self.backpressure is not None and (refused := self.backpressure.reason) is not None:
            raise Backpressured(refused)
        futures = [self._add(partition, lines, size) for partition, lines, size in chunks]
        positions = []
        for future in futures:
            landed = await future
            if isinstance(landed, str):
                raise BrokerUnavailable(landed)
            positions.append(landed)
        return positions

    def _add(self, partition: int, lines: list[bytes], size: int) -> asyncio.Future[Landed]:
        window = self._window
        if window is None:
            loop = asyncio.get_running_loop()
            wait_s, timeout_s = self.settings.group_commit_ms / 1000, self.settings.publish_timeout_s
            window = self._window = _Window(loop.time() + wait_s + timeout_s)
            loop.call_at(window.deadline, window.expire, timeout_s)
            self._flusher = loop.create_task(self._flush_after_window(wait_s))
        message = window.open.get(partition)
        if message is not None and message.size + 1 + size > self.settings.message_max_bytes:
            message = None  # full: it keeps its place in the window's order
        if message is None:
            message = _Message(partition, list(lines), size,
                               asyncio.get_running_loop().create_future())
            window.open[partition] = message
            window.messages.append(message)
        else:
            message.lines.extend(lines)
            message.size += 1 + size
        return message.future

    async def _flush_after_window(self, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        async with self._lock:  # FIFO: a window waits for the one before it
            window, self._window, self._flusher = self._window, None, None
            if window is None:
                return
            for message in window.messages:
                await self._produce(message, window.deadline)

    async def _produce(self, message: _Message, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        producer, future = self.publisher.producer, message.future

        def settle(landed: Landed) -> None:
            if not future.done():
                future.set_result(landed)

        def delivered(err: KafkaError | None, msg: object) -> None:  # on the poll thread
            if err is not None:
                producer.check(err)
                landed: Landed = f"the broker refused the events: {err.str()}"
            else:
                landed = (msg.partition(), msg.offset())  # type: ignore[attr-defined]
            loop.call_soon_threadsafe(settle, landed)

        value = b"\n".join(message.lines)
        if self.backpressure is not None:
            self.backpressure.published(len(message.lines))
        message.lines = []  # the window lives until its deadline: keep only the future
        while not future.done():
            try:
                producer.produce(self.publisher.topic, value, None, partition=message.partition,
                                 on_delivery=delivered, headers=[WIRE_HEADER])
                return
            except BufferError:
                # librdkafka's local queue is full: the broker is slow or gone.
                if loop.time() > deadline:
                    settle("the broker is not keeping up")
                    return
                await asyncio.sleep(0.005)
            except KafkaException as exc:
                producer.check(exc.args[0] if exc.args else None)
                settle(str(exc))
                return

    async def drain(self) -> None:
        """Produce what the open window holds now (at shutdown, before the producer's flush)."""
        if (flusher := self._flusher) is not None:
            await flusher
