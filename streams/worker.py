"""``sluice agents``: one Faust worker process of the stream agents."""

from __future__ import annotations

import logging
from typing import TextIO

import faust
from mode.utils.logging import level_number

from services.shared.gc_tuning import tune_gc
from services.shared.kafka import ensure_topics
from services.shared.logs import log_config
from services.shared.settings import Settings
from streams.app import create_app
from streams.slots import Slot

log = logging.getLogger(__name__)


def run_worker(settings: Settings, loglevel: str = "warn", told: TextIO | None = None) -> None:
    """``told``: recover tables (and so apply events) only after a line on it
    (streams.recovery.recover_when_told)."""
    ensure_topics(settings)
    # this worker's own store directory, held until the process exits: two workers on one
    # data dir each get theirs, and a restarted one finds its store again
    slot = Slot.claim(settings, fresh=told is not None) if settings.agents_store == "rocksdb" else None
    app = create_app(settings, slot.path if slot else None, told)
    tune_gc(settings.gc_young_threshold)  # user records churn per batch, as requests do
    level = logging.getLevelName(level_number(loglevel))
    # Faust would install its own (coloured) handler: it gets Sluice's config instead, and
    # in json mode no banner on stdout
    worker = faust.Worker(app, loglevel=loglevel,
                          logging_config=log_config(settings.log_format, level),
                          quiet=settings.log_format == "json")
    # Faust's start-up spinner sets the root logger to DEBUG (its handler counts every
    # record) and leaves it so: every debug call of Faust, aiokafka and mode then built a
    # record, 16% of a worker's time recovering a changelog (py-spy)
    worker.spinner = None
    if slot:
        log.info("agents: user state in %s", slot.path)
    worker.execute_from_commandline()
