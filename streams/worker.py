"""``sluice agents``: one Faust worker process of the stream agents."""

from __future__ import annotations

import logging

import faust
from mode.utils.logging import level_number

from services.shared.gc_tuning import tune_gc
from services.shared.kafka import ensure_topics
from services.shared.logs import log_config
from services.shared.settings import Settings
from streams.app import create_app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    ensure_topics(settings)
    app = create_app(settings)
    tune_gc(settings.gc_young_threshold)  # user records churn per batch, as requests do
    level = logging.getLevelName(level_number(loglevel))
    # Faust would install its own (coloured) handler: it gets Sluice's config instead, and
    # in json mode no banner on stdout
    faust.Worker(app, loglevel=loglevel, logging_config=log_config(settings.log_format, level),
                 quiet=settings.log_format == "json").execute_from_commandline()
