"""``sluice agents``: one Faust worker process of the stream agents."""

from __future__ import annotations

import faust

from services.shared.gc_tuning import tune_gc
from services.shared.kafka import ensure_topics
from services.shared.settings import Settings
from streams.app import create_app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    ensure_topics(settings)
    app = create_app(settings)
    tune_gc(settings.gc_young_threshold)  # user records churn per batch, as requests do
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
