"""Settings -> the model's tunables, per program."""

from __future__ import annotations

from functools import lru_cache

from services.shared.settings import Settings
from streams.model import ModelConfig


class ModelConfigs:
    """One ModelConfig per program: event-type amounts may differ by program."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._for = lru_cache(maxsize=4096)(self._build)

    def __call__(self, program_id: str) -> ModelConfig:
        return self._for(program_id)

    def _build(self, program_id: str) -> ModelConfig:
        amounts = self.settings.event_type_amounts
        chosen = amounts.get(program_id, amounts.get("*", {}))
        return ModelConfig(
            half_life_s=self.settings.half_life_s,
            event_type_amounts=dict(chosen),
            default_amount=self.settings.default_event_amount,
            top_k=self.settings.top_k,
            exclude_last_n=self.settings.exclude_last_n,
        )
