"""What every shard actor's Ray shell shares: its lease, the periodic sweep, `call_many` and the
direct channel. A kind's actor class subclasses `ShardActor` and is decorated with `@ray.remote`."""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Awaitable, Callable, Iterable

from actors.substrate.channel import ChannelServer, channel_host
from actors.substrate.operations import ActorError, run_many, storage_error
from storage.leases import ShardLease

log = logging.getLogger("raytenant.shards")


def shard_lease(engine: Any) -> ShardLease:
    """This actor's lease on its shard, named by the actor's name (which carries the deployment's
    prefix and the shard index), so every copy of one shard competes for one row."""
    import ray

    name = ray.get_runtime_context().get_actor_name() or f"unnamed-{secrets.token_hex(4)}"
    return ShardLease(engine, name)


async def serving(lease: ShardLease | None) -> ActorError | None:
    """None while this copy may serve, else the answer to give: 503 `shard_fenced` once a newer
    copy took the lease (for good), 503 `storage_unavailable` while the lease cannot be taken."""
    if lease is None:
        return None
    try:
        await lease.acquire()
    except Exception as error:  # noqa: BLE001 - Fenced, or the database away at start
        answer = storage_error(error)
        if answer is None:
            raise
        return answer
    return None


def stored(error: Exception) -> Exception:
    """A read or write that met an outage or a fence, as the ActorError clients understand."""
    return storage_error(error) or error


class ShardActor:
    """`self.core` answers the operations named in `public`; `sweep` (if any) runs every
    `self.core.options.sweep_interval` seconds once the shard has been called.

    `self.lease` (storage/leases.py) is taken before the first operation runs, so before any tenant
    is loaded; once a newer copy of the shard takes it, this copy refuses every operation."""

    core: Any
    public: Iterable[str] = ()
    sweep: Callable[[], Awaitable[Any]] | None = None
    lease: ShardLease | None = None

    def _ensure_sweeper(self) -> None:
        if self.sweep is None:
            return
        task = getattr(self, "_sweeper", None)
        if task is None or task.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while not (self.lease is not None and self.lease.fenced):
            await asyncio.sleep(self.core.options.sweep_interval)
            if await serving(self.lease) is not None:
                continue
            try:
                await self.sweep()
            except Exception:
                log.exception("%s sweep failed", type(self).__name__)

    async def call_many(self, calls: list[tuple[str, str, tuple]]) -> list[dict[str, Any]]:
        """Many tenant operations in one actor call, run concurrently (their writes share commits)."""
        self._ensure_sweeper()
        refusal = await serving(self.lease)
        if refusal is not None:
            return [{"error": refusal.to_dict()} for _ in calls]
        return await run_many(self.core, self.public, calls)

    async def channel_address(self) -> tuple[str, int, str]:
        """This shard's direct channel (actors/substrate/channel.py): `call_many` over a loopback socket,
        ~0.02 ms a call instead of a Ray actor call's ~3 ms, for operations whose arguments and
        answers are plain JSON (the client decides which)."""
        channel = getattr(self, "_channel", None)
        if channel is None:
            channel = self._channel = ChannelServer({"call_many": self.call_many}, secrets.token_hex(16))
        host, port = await channel.start(channel_host())
        return host, port, channel.secret.decode()

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def ready(self) -> bool:
        """Answers once the shard may serve: its lease is taken (a database outage at start is
        waited out by the caller's retries)."""
        self._ensure_sweeper()
        refusal = await serving(self.lease)
        if refusal is not None:
            raise refusal
        return True
