"""Receipts for ``POST /events?wait=...`` that outlived SLUICE_WAIT_TIMEOUT_S.

A receipt is the batch's own coordinates, not a server-side record: the program, the
level asked for and, per partition of the events topic, the highest offset the batch
holds there. Any gateway replica can answer ``GET /receipts/{receipt}`` from the consumer
groups' committed offsets (see :mod:`services.gateway.progress`), and nothing is kept per
request. It reveals nothing but offsets, and is answered only for its own program.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

import msgspec

Level = Literal["broker", "user", "stored"]


class _Wire(msgspec.Struct, array_like=True):
    version: int
    program: str
    wait: str
    positions: dict[int, int]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Wire)


@dataclass(frozen=True)
class Receipt:
    program: str
    wait: Level
    positions: dict[int, int]  # partition -> the batch's highest offset there

    def encode(self) -> str:
        raw = _ENCODER.encode(_Wire(1, self.program, self.wait, self.positions))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Receipt | None:
        """The receipt, or None if ``text`` is not one this gateway could have issued."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            wire = _DECODER.decode(raw)
        except (binascii.Error, msgspec.DecodeError, ValueError):
            return None
        if wire.version != 1 or wire.wait not in ("user", "stored"):
            return None
        return cls(wire.program, wire.wait, wire.positions)  # type: ignore[arg-type]


def highest_offsets(positions: list[tuple[int, int]]) -> dict[int, int]:
    """(partition, offset) of each message -> partition -> its highest offset."""
    out: dict[int, int] = {}
    for partition, offset in positions:
        if offset > out.get(partition, -1):
            out[partition] = offset
    return out
