"""``sluice agents``: one Faust worker process of the stream agents."""

from __future__ import annotations

import faust

from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from streams.app import create_app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    ensure_topics(settings)
    faust.Worker(create_app(settings), loglevel=loglevel).execute_from_commandline()
