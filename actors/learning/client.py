"""Caller side of the LearningModel shards."""
from __future__ import annotations

from actors.learning.actor import LearningModel
from actors.learning.core import KIND, LearningError, LearningOptions
from actors.substrate.shard_client import ShardClient


class LearningClient(ShardClient):
    error_class = LearningError
    unavailable_code = "learning_unavailable"

    def __init__(self, database_url: str, shards: int, options: LearningOptions = LearningOptions(), *,
                 kind: str = KIND) -> None:
        super().__init__(LearningModel, kind, shards, database_url, options)
