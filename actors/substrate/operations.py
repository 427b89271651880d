"""Tenant operations as data: what a shard's `call_many` runs and how refusals travel back.

Every sharded actor kind (ledger, learning, ...) exposes one Ray method, `call_many`, that runs a
batch of `(method, tenant, args)` operations concurrently. A refusal is an `ActorError` carrying
the HTTP status and error code the ingress answers with; it crosses the actor boundary as a dict so
that one refused operation never fails its batch-mates.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable

from actors.substrate.batching import SOLO, Refused, is_outage

Call = tuple[str, str, tuple]


class ActorError(Exception):
    """A refused operation: the HTTP status and error code the ingress answers with."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message, "details": self.details}

    def __reduce__(self) -> tuple:
        """Pickled with its fields (an exception's default keeps only the message), so a refusal
        raised in a Ray actor method reaches the caller as itself."""
        return _rebuild, (type(self), self.status, self.code, self.message, self.details)


def _rebuild(cls: type[ActorError], status: int, code: str, message: str, details: dict[str, Any]) -> ActorError:
    return cls(status, code, message, **details)


def storage_error(error: BaseException, error_class: type[ActorError] = ActorError) -> ActorError | None:
    """The answer for an operation the database did not take, or None for an error that is not
    about storage. The codes are the same for every kind, so a client reads one outage one way:

    - the database unreachable or not answering: 503 `storage_unavailable` (retry later);
    - this copy of the shard was replaced by a newer one (storage/leases.py): 503 `shard_fenced`
      (retry: the client finds the newer copy);
    - the database refused a value of this operation: 422 `value_not_storable`.

    Nothing of the operation was stored in any of the three cases."""
    from storage.leases import Fenced

    if isinstance(error, Fenced):
        return error_class(503, "shard_fenced", "this copy of the shard was replaced by a newer one; nothing was "
                           "changed, retry", retry_after=0.1)
    if is_outage(error):
        return error_class(503, "storage_unavailable", "the database is unavailable; nothing was changed, retry later",
                           retry_after=1)
    if isinstance(error, Refused):
        return error_class(422, "value_not_storable", "the database refused a value of this request; nothing was stored")
    return None


def refused_commit(error: BaseException, error_class: type[ActorError]) -> ActorError:
    """What a core answers for its failed commit (actors/substrate/batching.py `commit_failure`): 503 for an
    outage or a fenced shard, else 422: the database refused this operation's own write."""
    answer = storage_error(error, error_class)
    if answer is None:
        return error_class(422, "value_not_storable", "the database refused a value of this request; nothing was stored")
    return answer


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
                # was undone and runs again in a commit of its own (actors/substrate/batching.py).
                SOLO.set(True)
                return {"ok": await operation(tenant, *args)}
        except ActorError as error:
            return {"error": error.to_dict()}
        except Exception as error:
            answer = storage_error(error)  # a load or a read that met an outage or a fence
            if answer is None:
                raise
            return {"error": answer.to_dict()}

    return list(await asyncio.gather(*(one(m, t, a) for m, t, a in calls)))
