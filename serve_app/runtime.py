"""What one ingress replica holds: settings, token service, hub client and stream router."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from actors.event_hub.client import EventHubClient
from actors.event_hub.core import KIND, HubOptions
from actors.flows.client import FlowClient
from actors.flows.options import FlowOptions
from actors.flows.options import KIND as FLOW_KIND
from actors.learning.client import LearningClient
from actors.learning.core import KIND as LEARNING_KIND
from actors.learning.core import LearningOptions
from actors.ledger.client import CostLedgerClient
from actors.ledger.core import KIND as LEDGER_KIND
from actors.ledger.core import LedgerOptions
from actors.mailbox.client import MailboxClient
from actors.mailbox.core import KIND as MAILBOX_KIND
from actors.mailbox.core import MailboxOptions
from actors.quotas.client import QuotaClient
from actors.quotas.core import KIND as QUOTA_KIND
from actors.quotas.core import QuotaOptions
from actors.revocations.client import RevocationClient
from actors.revocations.core import KIND as REVOCATION_KIND
from actors.revocations.core import RevocationOptions
from actors.substrate.metrics import RayMetrics
from crews.providers import Provider, Providers
from serve_app.audit import Audit
from serve_app.auth import KeyRing, Tokens
from serve_app.settings import Settings
from serve_app.signing_keys import SigningKeys
from serve_app.streams import StreamRouter
from serve_app.tenants import TenantLifecycle
from storage.credentials import CredentialsStore
from storage.engine import create_engine
from storage.limits import LimitsStore
from storage.tenants import TenantStore

log = logging.getLogger("raytenant.runtime")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        hub: object | None = None,
        ledger: object | None = None,
        learning: object | None = None,
        mailbox: object | None = None,
        flows: object | None = None,
        quotas: object | None = None,
        replica_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        limits = settings.default_limits()
        self.credentials = CredentialsStore(create_engine(settings.database_url))
        self.audit = Audit(self.credentials)
        self.keyring = KeyRing()
        self.signing_keys = SigningKeys(self.credentials, self.keyring)
        self.tokens = Tokens(settings.operator_token, settings.jwt_secret, default_ttl=settings.token_ttl_seconds,
                             max_ttl=settings.max_token_ttl, ring=self.keyring,
                             accept_legacy=settings.accept_legacy_tokens)
        self.revocations = RevocationClient(settings.database_url, settings.revocation_shards,
                                            RevocationOptions(max_ttl=settings.max_token_ttl),
                                            kind=settings.actor_prefix + REVOCATION_KIND)
        self.tokens.revoked = lambda claims: self.revocations.revoked(claims.tenant, claims.iat, claims.jti)
        self.tokens.suspended = self.revocations.suspended
        self.tokens.unknown_key = self.signing_keys.wanted
        self.hub = hub or EventHubClient(
            settings.database_url,
            settings.hub_shards,
            HubOptions(window=settings.hub_window, limits=limits),
            kind=settings.actor_prefix + KIND,
            use_channel=settings.hub_channel,
        )
        hub_address = {
            "database_url": settings.database_url,
            "shards": settings.hub_shards,
            "kind": settings.actor_prefix + KIND,
            "use_channel": settings.hub_channel,
        }
        # How every client is built, kept so the flow runners can build the same ones.
        self.addresses = {
            "hub": hub_address,
            "ledger": {"database_url": settings.database_url, "shards": settings.ledger_shards,
                       "options": LedgerOptions(reservation_ttl=settings.reservation_ttl),
                       "kind": settings.actor_prefix + LEDGER_KIND, "hub": hub_address},
            "learning": {"database_url": settings.database_url, "shards": settings.learning_shards,
                         "options": LearningOptions(threshold=settings.learning_threshold, limits=limits),
                         "kind": settings.actor_prefix + LEARNING_KIND},
            "mailbox": {"database_url": settings.database_url, "shards": settings.mailbox_shards,
                        "options": MailboxOptions(limits=limits),
                        "kind": settings.actor_prefix + MAILBOX_KIND, "hub": hub_address},
        }
        self.ledger = ledger or CostLedgerClient(**self.addresses["ledger"])
        self.learning = learning or LearningClient(**self.addresses["learning"])
        self.mailbox = mailbox or MailboxClient(**self.addresses["mailbox"])
        self.flows = flows or FlowClient(
            settings.database_url, settings.flow_shards,
            FlowOptions(limits=limits, threads=settings.flow_capacity, llm=settings.llm,
                        llm_latency=settings.llm_latency, llm_providers=settings.llm_providers,
                        niceness=settings.flow_niceness),
            self.addresses, kind=settings.actor_prefix + FLOW_KIND,
        )
        self.metrics = RayMetrics(replica=self.replica_id)
        self.quotas = quotas or QuotaClient(settings.database_url, settings.quota_shards, QuotaOptions(limits=limits),
                                            kind=settings.actor_prefix + QUOTA_KIND, replica=self.replica_id,
                                            metrics=self.metrics)
        self.limits_store = LimitsStore(create_engine(settings.database_url))
        self.tenant_lifecycle = TenantLifecycle(self, TenantStore(self.credentials.engine))
        self.providers = Providers.from_json(settings.llm_providers, settings.llm_tenant_models)
        self._llm_clients: dict[str, object] = {}
        self.router = StreamRouter(self.hub, self.replica_id, poll_timeout=settings.poll_timeout,
                                   metrics=self.metrics)
        self.revocations.on_change = lambda tenants: self.router.close_revoked(
            tenants, self.revocations.revoked, self.revocations.suspended)
        self.signing_keys.on_refresh = lambda: self.router.close_lapsed(self._lapsed)

    def _lapsed(self, conn) -> str | None:
        """Why an open socket's token no longer holds, checked every second: it expired, or the
        key that signed it retired (after a leak, `keys rotate --retire-after 0`)."""
        now = time.time()
        if conn.exp <= now:
            return "the token expired"
        if not self.tokens.key_verifies(conn.kid, now):
            return "the token's signing key was retired"
        return None

    def llm_client(self, provider: Provider):
        """One async openai client per provider and replica: its connection pool is reused."""
        client = self._llm_clients.get(provider.name)
        if client is None:
            import httpx
            import openai

            client = self._llm_clients[provider.name] = openai.AsyncOpenAI(
                base_url=provider.base_url, api_key=provider.api_key or "unset", timeout=provider.timeout,
                max_retries=0, http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=1000,
                                                                                 max_keepalive_connections=200)))
        return client

    async def start(self) -> None:
        await self.signing_keys.start()
        await self.revocations.start()
        await self.hub.start()
        await self.quotas.start()
        await self.ledger.start()
        await self.learning.start()
        await self.mailbox.start()
        await self.flows.start(timeout=120.0)  # a runner imports crewai first: seconds

    async def set_limits(self, tenant: str, overrides: dict) -> None:
        """Push the operator's (already stored) change to every shard that enforces a limit of the
        tenant. A shard that cannot be reached rereads the stored value within its cache's ttl,
        so a failed push is logged, not answered as a failure."""
        pushes = {"quotas": self.quotas.call("set_limits", tenant, overrides),
                  "mailbox": self.mailbox.call("set_limits", tenant, overrides),
                  "learning": self.learning.call("set_limits", tenant, overrides),
                  "flows": self.flows.call("set_limits", tenant, overrides),
                  "hub": self.hub.set_limits(tenant, overrides)}
        results = await asyncio.gather(*pushes.values(), return_exceptions=True)
        for kind, result in zip(pushes, results):
            if isinstance(result, Exception):
                log.warning(
                    "limits of tenant %s not pushed to %s (%s); it rereads them within 5 s", tenant, kind, result)

    async def stop(self) -> None:
        await self.signing_keys.close()
        await self.revocations.close()
        await self.router.stop()
        await self.quotas.close()
        close = getattr(self.hub, "close", None)
        if close is not None:
            await close()
