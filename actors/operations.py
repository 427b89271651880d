"""Tenant operations as data: what a shard's `call_many` runs and how refusals travel back.

Every sharded actor kind (ledger, learning, ...) exposes one Ray method, `call_many`, that runs a
batch of `(method, tenant, args)` operations concurrently. A refusal is an `ActorError` carrying
the HTTP status and error code the ingress answers with; it crosses the actor boundary as a dict so
that one refused operation never fails its batch-mates.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable

from actors.batching import SOLO, Refused

Call = tuple[str, str, tuple]


class ActorError(Exception):
    """A refused operation: the HTTP status and error code the ingress answers with."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message, "details": self.details}


async def run_many(core: Any, public: Iterable[str], calls: list[Call]) -> list[dict[str, Any]]:
    """Run operations on `core` concurrently; each answer is {"ok": result} or {"error": fields}."""
    allowed = frozenset(public)

    async def one(method: str, tenant: str, args: tuple) -> dict[str, Any]:
        if method not in allowed:
            return {"error": ActorError(400, "unknown_operation", method).to_dict()}
        operation = getattr(core, method)
        try:
            try:
                return {"ok": await operation(tenant, *args)}
            except Refused:
                # Another operation's write made the database refuse the shared commit; this one
                # was undone and runs again in a commit of its own (actors/batching.py).
                SOLO.set(True)
                return {"ok": await operation(tenant, *args)}
        except ActorError as error:
            return {"error": error.to_dict()}

    return list(await asyncio.gather(*(one(m, t, a) for m, t, a in calls)))
