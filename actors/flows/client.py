"""Caller side of the FlowRunner shards."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from actors.flows.actor import FlowRunner
from actors.flows.options import KIND, FlowOptions
from actors.substrate.operations import ActorError
from actors.substrate.shard_client import ShardClient


class FlowClient(ShardClient):
    error_class = ActorError
    unavailable_code = "flows_unavailable"

    def __init__(self, database_url: str, shards: int, options: FlowOptions, services: dict[str, dict[str, Any]], *,
                 kind: str = KIND) -> None:
        super().__init__(FlowRunner, kind, shards, database_url, replace(options, shards=shards, kind=kind), services)
