"""The revocation shard's Ray shell: the core's public operations and its sweep. It holds no
lease: a revocation only adds a refusal the operator asked for (docs/architecture.md, "Fencing")."""
from __future__ import annotations

import ray

from actors.revocations.core import KIND, RevocationCore, RevocationOptions
from actors.substrate.gc_policy import quiet_gc
from actors.substrate.shard_actor import ShardActor

PUBLIC_METHODS = frozenset({"revoke", "changes", "list", "suspend"})


@ray.remote(num_cpus=0, max_concurrency=1_000)
class Revocations(ShardActor):
    """Ray shell: one revocation shard. It learns its index from its name (`...revocations-<k>`),
    so that after a restart it reloads exactly the tenants it owns."""

    public = PUBLIC_METHODS

    def __init__(self, database_url: str, shards: int, options: RevocationOptions) -> None:
        from storage.credentials import CredentialsStore
        from storage.engine import create_engine
        from storage.tenants import TenantStore

        name = ray.get_runtime_context().get_actor_name() or f"{KIND}-0"
        shard = int(name.rsplit("-", 1)[1])
        engine = create_engine(database_url)
        self.core = RevocationCore(CredentialsStore(engine), shard, shards, options, tenants=TenantStore(engine))
        self.sweep = self.core.sweep
        quiet_gc()
