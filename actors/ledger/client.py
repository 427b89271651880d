"""Caller side of the CostLedger shards."""
from __future__ import annotations

from typing import Any

from actors.ledger.actor import CostLedger
from actors.ledger.core import KIND, LedgerError, LedgerOptions
from actors.substrate.shard_client import ShardClient


class CostLedgerClient(ShardClient):
    error_class = LedgerError
    unavailable_code = "ledger_unavailable"
    channel_methods = frozenset({
        "record_usage", "reserve", "settle", "release", "gateway_begin", "gateway_finish", "gateway_abort",
        "estimate", "get_budget", "set_budget", "month", "set_cap", "recommendations", "select_model", "prices",
    })

    def __init__(
        self,
        database_url: str,
        shards: int,
        options: LedgerOptions = LedgerOptions(),
        *,
        kind: str = KIND,
        hub: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(CostLedger, kind, shards, database_url, options, hub)
