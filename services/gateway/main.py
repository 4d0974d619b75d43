"""Entry point for uvicorn workers: each builds its settings from the environment."""

from fastapi import FastAPI

from services.gateway.app import create_app
from services.shared.gc_tuning import tune_gc
from services.shared.settings import Settings


def app_from_env() -> FastAPI:
    settings = Settings()
    app = create_app(settings)
    tune_gc(settings.gc_young_threshold)  # a role's process: tests' in-process apps keep Python's
    return app
