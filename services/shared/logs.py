"""Logging of every role: text for people, or SLUICE_LOG_FORMAT=json for machines.

JSON is one object per line (python-json-logger): ``time``, ``level``, ``logger``,
``message``, plus ``exc_info`` with a traceback. The same dictConfig serves every role:
the CLI applies it, uvicorn applies it in each gateway worker (``log_config``), and
Faust's worker applies it in the agents (``logging_config``), so no role keeps a handler
of its own that would print a line in another format.
"""

from __future__ import annotations

import logging.config
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(fmt: LogFormat, level: str | int = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``fmt``: one handler on stderr, at the root."""
    formatter: dict[str, Any] = {"format": TEXT}
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"sluice": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "sluice",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {  # uvicorn's own, through the root handler
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        } | {"httpx": {"level": "WARNING"}},
    }


def configure(fmt: LogFormat, level: str | int = "INFO") -> None:
    logging.config.dictConfig(log_config(fmt, level))
