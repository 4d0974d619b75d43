"""Waking a request's future from a follower thread (views, group progress).

Called through ``loop.call_soon_threadsafe``: a future may be done (timed out, cancelled)
by the time the call runs, so both helpers check first.
"""

from __future__ import annotations

import asyncio

from services.shared.publish import BrokerUnavailable


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def fail_unavailable(future: asyncio.Future[None], reason: str) -> None:
    """What was waited for may never come (the broker died with it): 503, retry."""
    if not future.done():
        future.set_exception(BrokerUnavailable(reason))
