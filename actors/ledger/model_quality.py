"""Relative quality of common models, for model selection and substitution advice.

Prices come from the maintained catalog; quality does not exist there, so this small table is an
editorial ranking (0-1) of widely used chat models, ordered by public leaderboard standing at the
time of writing. It only ranks: a model missing here is never proposed as a substitute or a
selection, but its usage is still priced and metered. Extend it with RAYTENANT_MODEL_QUALITY
(a JSON object of model -> score) without a code change.
"""
from __future__ import annotations

import json
import os

BUILTIN_QUALITY: dict[str, float] = {
    "gpt-5": 0.96,
    "claude-sonnet-4-5": 0.96,
    "gemini-2.5-pro": 0.95,
    "gpt-4.1": 0.92,
    "gpt-5-mini": 0.91,
    "o4-mini": 0.91,
    "gpt-4o": 0.90,
    "o3-mini": 0.89,
    "claude-haiku-4-5": 0.89,
    "gemini-2.5-flash": 0.88,
    "gpt-4-turbo": 0.86,
    "gpt-4.1-mini": 0.86,
    "gpt-4": 0.85,
    "gpt-5-nano": 0.82,
    "gpt-4o-mini": 0.80,
    "gemini-2.5-flash-lite": 0.79,
    "mistral/mistral-large-latest": 0.80,
    "gpt-4.1-nano": 0.74,
    "mistral/mistral-small-latest": 0.72,
    "gpt-3.5-turbo": 0.70,
}

# Minimum quality a task type needs when the caller gives none (the original's task tiers).
TASK_QUALITY: dict[str, float] = {"simple": 0.70, "medium": 0.80, "analysis": 0.85, "creative": 0.85, "complex": 0.90}


def model_quality() -> dict[str, float]:
    table = dict(BUILTIN_QUALITY)
    extra = os.environ.get("RAYTENANT_MODEL_QUALITY")
    if extra:
        table.update({str(k): float(v) for k, v in json.loads(extra).items()})
    return table
