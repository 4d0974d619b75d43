"""Entry point for uvicorn workers: each builds its settings from the environment."""

from fastapi import FastAPI

from services.gateway.app import create_app
from services.shared.settings import Settings


def app_from_env() -> FastAPI:
    return create_app(Settings())
