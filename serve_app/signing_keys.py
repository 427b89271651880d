"""The replica's signing keys: loaded from storage at start (the first key is generated then),
refreshed every second and as soon as a token names a key this replica does not know.

A rotation adds a key that signs only `PROPAGATION` seconds later, once every replica has loaded
it, and retires the earlier keys after the longest a token they signed may still live: no token is
refused because of a rotation, on any replica.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy.exc import IntegrityError

from serve_app.auth import KeyRing, SigningKey
from storage.credentials import CredentialsStore

log = logging.getLogger("raytenant.keys")

PROPAGATION = 3.0  # seconds between a key's creation and its first signature (> REFRESH_INTERVAL)
REFRESH_INTERVAL = 1.0
SKEW = 300.0  # the first key counts as signing this long before it was made
FIRST_KID = "k0"
KID_PATTERN = re.compile(r"^k(0|[0-9a-f]{12})$")


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def public_view(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A key as the operator sees it: never its secret."""
    retire = row["retire_at"]
    return {"kid": row["kid"], "created_at": row["created_at"].isoformat(), "signs_from": row["signs_from"].isoformat(),
            "retire_at": retire.isoformat() if retire else None,
            "state": "retired" if retire and retire.timestamp() <= now else
                     "retiring" if retire else "pending" if row["signs_from"].timestamp() > now else "active"}


async def ensure_first_key(store: CredentialsStore) -> None:
    """The first key, generated at first start. Replicas starting together race to insert the same
    kid: one wins, the others' inserts fail, and all load the winner's."""
    if await store.keys():
        return
    now = time.time()
    try:  # usable at once, on nodes whose clocks are somewhat behind too
        await store.add_key(FIRST_KID, secrets.token_hex(32), _at(now), _at(now - SKEW), None)
    except IntegrityError:
        pass


async def rotate(store: CredentialsStore, retire_after: float, now: float | None = None) -> dict[str, Any]:
    """A new key that signs from PROPAGATION seconds on; every earlier key retires `retire_after`
    seconds after that (give it the longest token TTL, and no token is refused)."""
    now = time.time() if now is None else now
    kid = "k" + secrets.token_hex(6)
    signs_from = now + PROPAGATION
    await store.add_key(kid, secrets.token_hex(32), _at(now), _at(signs_from), _at(signs_from + retire_after))
    [row] = [r for r in await store.keys() if r["kid"] == kid]
    return public_view(row, now)


class SigningKeys:
    def __init__(self, store: CredentialsStore, ring: KeyRing) -> None:
        self.store, self.ring = store, ring
        self._task: asyncio.Task | None = None
        self._wanted: asyncio.Task | None = None
        self._wanted_at = -math.inf
        self.refreshes = 0
        self.on_refresh: Callable[[], None] | None = None  # the replica closes sockets whose token lapsed

    async def start(self) -> None:
        await ensure_first_key(self.store)
        await self.refresh()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def refresh(self) -> None:
        rows = await self.store.keys()
        self.ring.replace(SigningKey(r["kid"], r["secret"], r["signs_from"].timestamp(),
                                     r["retire_at"].timestamp() if r["retire_at"] else None) for r in rows)
        self.refreshes += 1

    def wanted(self, kid: str) -> None:
        """A token named a key this replica does not know: load the ring again, at most once a
        second whatever unauthenticated clients send (kids this service never makes are ignored)."""
        if not KID_PATTERN.fullmatch(kid) or time.monotonic() - self._wanted_at < REFRESH_INTERVAL:
            return
        if self._wanted is None or self._wanted.done():
            self._wanted_at = time.monotonic()
            log.info("token signed by unknown key %r: refreshing the key ring", kid)
            self._wanted = asyncio.get_running_loop().create_task(self.refresh())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - keep the ring it has; retried in a second
                log.warning("signing key refresh failed: %r", error)
            if self.on_refresh is not None:
                self.on_refresh()

    async def close(self) -> None:
        for task in (self._task, self._wanted):
            if task is not None:
                task.cancel()
