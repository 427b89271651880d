"""Shard naming, tenant-to-shard placement and race-safe get-or-create of shard actors.

Each actor kind runs as S named, detached shards in the "raytenant" namespace. A tenant maps to a
shard by rendezvous (highest-random-weight) hashing: stable, uniform, and when S grows only the
tenants that land on the new shards move.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

import ray

NAMESPACE = "raytenant"


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index}"


def _weight(tenant: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{tenant}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_for(tenant: str, shards: int) -> int:
    """The shard index that owns `tenant` among `shards` shards."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    return max(range(shards), key=lambda s: _weight(tenant, s))


def get_or_create(actor_cls: Any, kind: str, index: int, *args: Any, options: dict | None = None) -> Any:
    """The handle of shard `index` of `kind`, creating it if no replica has yet.

    Many ingress replicas race to create the same shard at start; `get_if_exists` makes creation
    idempotent in the GCS, and the loop covers the window where a name is registered but the lookup
    of the winner's actor briefly fails.
    """
    name = shard_name(kind, index)
    opts = {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "max_restarts": -1,
        "get_if_exists": True,
        **(options or {}),
    }
    last_error: Exception | None = None
    for attempt in range(20):
        try:
            return actor_cls.options(**opts).remote(*args)
        except ValueError as error:  # name taken between the check and the create
            last_error = error
            try:
                return ray.get_actor(name, namespace=NAMESPACE)
            except ValueError as lookup_error:
                last_error = lookup_error
                time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"could not get or create actor {name}") from last_error


def kill_all(kind: str, shards: int) -> int:
    """Kill every shard of a kind (used by `raytenant run` on exit and by tests). Returns how many."""
    killed = 0
    for index in range(shards):
        try:
            handle = ray.get_actor(shard_name(kind, index), namespace=NAMESPACE)
        except ValueError:
            continue
        ray.kill(handle, no_restart=True)
        killed += 1
    return killed


async def wait_ready(handles: list[Any], timeout: float = 60.0) -> None:
    """Wait until every shard answers `ready`; a shard Ray is restarting, or one that cannot take
    its lease while the database is away, is waited for, not an error."""
    import asyncio

    from ray.exceptions import RayActorError

    from actors.substrate.operations import ActorError

    deadline = asyncio.get_running_loop().time() + timeout
    for handle in handles:
        while True:
            try:
                await handle.ready.remote()
                break
            except (RayActorError, ActorError) as error:  # ActorError: the database away at start
                if isinstance(error, ActorError) and error.status != 503:
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
